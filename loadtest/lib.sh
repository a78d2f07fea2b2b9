# lib.sh — shared helpers for the loadtest/ scripts (source it; do not run it).
#
# Provides: lt_init (temp dir + cleanup traps), lt_oha (find or install oha),
# lt_release_dir (where cargo puts release binaries), lt_allowed_cpus and lt_cores (the CPUs
# this process may use, grouped by physical core), lt_cpus (one CPU for the proxy, one core
# for the load), lt_free_port, lt_start/lt_stop (tracked background processes, optional CPU pinning),
# lt_wait_http, lt_cpu_ticks/lt_peak_rss_kib (from /proc), lt_run_oha/lt_parse_oha,
# lt_lines (the meaningful lines of a small config file), lt_nginx_conf and
# lt_start_upstream (the origin every proxy sends to), lt_render_scenario,
# lt_scenario_env and lt_scenario_headers (a scenario's config and what its requests carry).

LT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LT_ROOT=$(dirname "$LT_DIR")
LT_PIDS=()        # every process lt_start started; killed by lt_cleanup
LT_LAST_PID=      # pid of the process the last lt_start started
LT_TMP=
declare -A LT_STOPSIG=()

lt_log() { printf '[loadtest] %s\n' "$*" >&2; }
lt_die() { printf '[loadtest] error: %s\n' "$*" >&2; exit 1; }

# Create LT_TMP and install traps so that everything started is killed on exit.
lt_init() {
    LT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/moat-loadtest.XXXXXX")
    trap lt_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

lt_cleanup() {
    local pid
    for pid in "${LT_PIDS[@]}"; do lt_stop "$pid"; done
    LT_PIDS=()
    if [[ -n "$LT_TMP" && -d "$LT_TMP" ]]; then
        if [[ -n "${LT_KEEP:-}" ]]; then lt_log "kept $LT_TMP"; else rm -rf "$LT_TMP"; fi
    fi
}

# Path of oha: on PATH, else loadtest/.tools/bin/oha, else install it there.
lt_oha() {
    if command -v oha >/dev/null 2>&1; then command -v oha; return; fi
    local local_oha="$LT_DIR/.tools/bin/oha"
    if [[ ! -x "$local_oha" ]]; then
        lt_log "oha not found; installing into $LT_DIR/.tools (takes a few minutes)"
        cargo install oha --locked --root "$LT_DIR/.tools" >&2 || lt_die "cargo install oha failed"
    fi
    echo "$local_oha"
}

# lt_lines FILE: print FILE's lines that are neither empty nor `#` comments (none if FILE is "").
lt_lines() {
    local line
    [[ -n "$1" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ -n "${line//[[:space:]]/}" && "$line" != \#* ]]; then printf '%s\n' "$line"; fi
    done <"$1"
}

# A free TCP port on 127.0.0.1 (racy in theory, fine in practice).
lt_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# lt_release_dir: the directory cargo puts release binaries in, as `cargo build --release`
# run in the repository would: CARGO_TARGET_DIR or cargo's own config (build.target-dir), by
# `cargo metadata`; without cargo, CARGO_TARGET_DIR (relative to the repository) or target/.
lt_release_dir() {
    local dir=
    if command -v cargo >/dev/null 2>&1; then
        dir=$(cd "$LT_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) || dir=
    fi
    if [[ -z $dir ]]; then
        dir=${CARGO_TARGET_DIR:-target}
        [[ $dir == /* ]] || dir="$LT_ROOT/$dir"
    fi
    echo "$dir/release"
}

# lt_allowed_cpus: the CPUs this process may run on, ascending, one per line: its affinity
# (`taskset -pc`), which a cpuset (`docker run --cpuset-cpus=4-7`) or an outer taskset
# narrows, not 0..nproc-1.
lt_allowed_cpus() {
    local list part range step a b
    list=$(taskset -pc $$ 2>/dev/null) && list=${list##*: } || list=
    [[ -n $list ]] || list=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status 2>/dev/null || true)
    [[ -n $list ]] || list="0-$(( $(nproc) - 1 ))"
    for part in ${list//,/ }; do
        range=${part%%:*} step=1
        [[ $part == *:* ]] && step=${part#*:}
        a=${range%-*} b=${range#*-}
        seq "$a" "$step" "$b"
    done | sort -n
}

# lt_cores: LT_CORES, one entry per physical core this process may use (in CPU order), each
# the space-separated CPUs of that core it may use: pin one thread per core on the first
# CPU of each, so that two threads never share a core's hyperthreads. Cores come from
# `lscpu -p=CPU,CORE,SOCKET`; without lscpu each CPU counts as a core, and LT_CORES_NOTE
# says so.
lt_cores() {
    local cpu core sock key order=() allowed=()
    local -A on=() members=()
    mapfile -t allowed < <(lt_allowed_cpus)
    for cpu in "${allowed[@]}"; do on[$cpu]=1; done
    LT_CORES=() LT_CORES_NOTE=
    if command -v lscpu >/dev/null 2>&1; then
        while IFS=, read -r cpu core sock; do
            [[ $cpu != \#* && -n ${on[$cpu]:-} ]] || continue
            key="$sock:$core"
            [[ -n ${members[$key]:-} ]] || order+=("$key")
            members[$key]+="${members[$key]:+ }$cpu"
        done < <(lscpu -p=CPU,CORE,SOCKET 2>/dev/null || true)
    fi
    if ((${#order[@]} == 0)); then
        LT_CORES_NOTE="no lscpu: each CPU counted as a core (hyperthread siblings would count twice)"
        LT_CORES=("${allowed[@]}")
        return 0
    fi
    for key in "${order[@]}"; do LT_CORES+=("${members[$key]}"); done
}

# lt_cpu_list WORDS...: the CPUs given, comma-separated (a taskset list).
lt_cpu_list() { local IFS=,; echo "$*"; }

# lt_cpus: LT_PROXY_CPU, the CPU to pin the proxies on (the first core's first CPU), and
# LT_LOAD_CPU, the CPUs of the second core for the load generator, the upstream and Redis
# (both from lt_cores).
lt_cpus() {
    lt_cores
    [[ -z $LT_CORES_NOTE ]] || lt_log "$LT_CORES_NOTE"
    local first=(${LT_CORES[0]})
    LT_PROXY_CPU=${first[0]}
    if (( ${#LT_CORES[@]} >= 2 )); then
        LT_LOAD_CPU=$(lt_cpu_list ${LT_CORES[1]})
    elif (( ${#first[@]} >= 2 )); then
        LT_LOAD_CPU=$(lt_cpu_list "${first[@]:1}")
        lt_log "one core: proxy and load on its hyperthreads, numbers mean little"
    else
        LT_LOAD_CPU=$LT_PROXY_CPU
        lt_log "only one CPU: proxy and load share it, numbers mean little"
    fi
}

# lt_start NAME CPU|- CMD...   start CMD in the background (pinned with taskset unless
# CPU is "-"), output to $LT_TMP/NAME.log; sets LT_LAST_PID. Stop signal: $LT_STOP_SIGNAL
# (default TERM; Pingora wants INT, as its TERM waits out a long grace period).
lt_start() {
    local name=$1 cpu=$2; shift 2
    if [[ "$cpu" == "-" ]]; then
        "$@" >"$LT_TMP/$name.log" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$LT_TMP/$name.log" 2>&1 &   # taskset execs: $! is CMD itself
    fi
    LT_LAST_PID=$!
    LT_PIDS+=("$LT_LAST_PID")
    LT_STOPSIG[$LT_LAST_PID]=${LT_STOP_SIGNAL:-TERM}
}

# True while PID exists and is not a zombie.
lt_alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ "${s:0:1}" != Z ]]
}

# PID and all its descendants, one per line.
lt_tree() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" 2>/dev/null); do lt_tree "$c"; done
}

# Stop PID and its descendants: its stop signal, then TERM, then KILL; reap it.
lt_stop() {
    local pid=$1 sig=${LT_STOPSIG[$1]:-TERM} tree i p
    tree=$(lt_tree "$pid")
    for sig in "$sig" TERM KILL; do
        lt_alive "$pid" || break
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do lt_alive "$pid" || break; sleep 0.1; done
    done
    for p in $tree; do lt_alive "$p" && kill -s KILL "$p" 2>/dev/null; done
    wait "$pid" 2>/dev/null || true
    return 0
}

# lt_wait_http URL [WANT=200] [TRIES=100] [PID] [curl args...]: wait until URL answers
# with status WANT, at most TRIES tenths of a second; give up early if PID has exited.
lt_wait_http() {
    local url=$1 want=${2:-200} tries=${3:-100} pid=${4:-} code i
    shift $(( $# < 4 ? $# : 4 ))
    for ((i = 0; i < tries; i++)); do
        if [[ -n "$pid" ]] && ! lt_alive "$pid"; then lt_log "process $pid exited"; return 1; fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null || true)
        [[ "$code" == "$want" ]] && return 0
        sleep 0.1
    done
    lt_log "$url did not answer $want (last: ${code:-none})"
    return 1
}

# Sum of utime+stime clock ticks of PID and its descendants (see `getconf CLK_TCK`).
lt_cpu_ticks() {
    local p s f total=0
    for p in $(lt_tree "$1"); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -ra f <<<"${s##*) }"          # f[0] is field 3 (state); utime is 14, stime 15
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Sum of VmHWM (peak resident set, KiB) of PID and its descendants.
lt_peak_rss_kib() {
    local p kb total=0
    for p in $(lt_tree "$1"); do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# lt_run_oha OUT.json URL DURATION CONNECTIONS [extra oha args...]
# Runs $LT_OHA (pinned to CPU $LT_OHA_CPU when set) without its TUI, waiting for in-flight
# requests at the deadline (else they count as errors); JSON summary to OUT.json.
lt_run_oha() {
    local out=$1 url=$2 dur=$3 conns=$4 pin=(); shift 4
    [[ -n "${LT_OHA_CPU:-}" ]] && pin=(taskset -c "$LT_OHA_CPU")
    "${pin[@]}" "${LT_OHA:?call LT_OHA=\$(lt_oha) first}" --no-tui --output-format json -w \
        -z "$dur" -c "$conns" "$@" "$url" >"$out"
}

# lt_parse_oha FILE -> "rps p50_ms p99_ms p999_ms responses errors"
# (errors: transport errors + non-2xx responses, less oha's own "aborted due to deadline";
# p999 = the 99.9th percentile).
lt_parse_oha() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
s = d.get("summary", {})
lat = d.get("latencyPercentiles", {})
codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
# "aborted due to deadline": requests oha itself still had queued or in flight when the
# duration ended (oha --http2 at a fixed rate reports them even with -w); not the target's doing.
transport = sum(v for k, v in (d.get("errorDistribution") or {}).items() if k != "aborted due to deadline")
responses = sum(codes.values())
bad = sum(v for k, v in codes.items() if not 200 <= k < 300)
ms = lambda v: (v or 0.0) * 1000.0
print(f'{s.get("requestsPerSec") or 0.0:.1f} {ms(lat.get("p50")):.3f} {ms(lat.get("p99")):.3f} '
      f'{ms(lat.get("p99.9")):.3f} {responses} {transport + bad}')
EOF
}

# lt_nginx_conf DIR LISTEN BODY-OF-server{}-BLOCK [extra http-level lines] [WORKERS=1]
#   LISTEN: what follows `listen 127.0.0.1:`, e.g. "8080" or "8443 ssl http2"
lt_nginx_conf() {
    local dir=$1 listen=$2 server=$3 extra=${4:-} workers=${5:-1}
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
# generated by loadtest/lib.sh
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    $extra
    server { listen 127.0.0.1:$listen; $server }
}
EOF
}

# lt_start_upstream CPUS USE_NGINX [THREADS=1]: start the origin the proxies send to, pinned
# to CPUS (taskset list): nginx `return 200 "ok"` with THREADS workers when USE_NGINX is 1,
# else $LT_REL/examples/upstream --threads THREADS (LT_REL: lt_release_dir, set by the
# caller); wait until it answers. Sets
# LT_UP_PORT, LT_UP_PID and LT_UP_KIND (a description for the report).
lt_start_upstream() {
    local cpus=$1 use_nginx=$2 threads=${3:-1}
    LT_UP_PORT=$(lt_free_port)
    if (( use_nginx )); then
        LT_UP_KIND="nginx (return 200, $threads worker(s))"
        lt_nginx_conf "$LT_TMP/nginx-upstream" "$LT_UP_PORT" 'location / { return 200 "ok"; }' "" "$threads"
        lt_start upstream "$cpus" nginx -e "$LT_TMP/nginx-upstream/error.log" \
            -p "$LT_TMP/nginx-upstream" -c "$LT_TMP/nginx-upstream/nginx.conf"
    else
        LT_UP_KIND="examples/upstream ($threads thread(s))"
        lt_start upstream "$cpus" "${LT_REL:?set LT_REL=\$(lt_release_dir) first}/examples/upstream" \
            --listen "127.0.0.1:$LT_UP_PORT" --threads "$threads"
    fi
    LT_UP_PID=$LT_LAST_PID
    lt_wait_http "http://127.0.0.1:$LT_UP_PORT/" 200 50 "$LT_UP_PID" \
        || { cat "$LT_TMP/upstream.log" >&2; lt_die "upstream did not start"; }
}

# lt_render_scenario NAME OUT LISTEN_PORT ADMIN_PORT UPSTREAM_PORT RUN_DIR [REDIS_URL] [CERT] [KEY]
# Write scenarios/NAME.yaml to OUT with its placeholders filled in (loadtest/README.md,
# "Adding a scenario").
lt_render_scenario() {
    local name=$1 out=$2 port=$3 admin=$4 up=$5 run=$6 redis=${7:-} cert=${8:-} key=${9:-}
    sed -e "s|{{LISTEN_PORT}}|$port|g" -e "s|{{ADMIN_PORT}}|$admin|g" \
        -e "s|{{UPSTREAM_PORT}}|$up|g" -e "s|{{RUN_DIR}}|$run|g" \
        -e "s|{{SCENARIO_DIR}}|$LT_DIR/scenarios|g" -e "s|{{REDIS_URL}}|$redis|g" \
        -e "s|{{TLS_CERT}}|$cert|g" -e "s|{{TLS_KEY}}|$key|g" \
        "$LT_DIR/scenarios/$name.yaml" >"$out"
}

# lt_scenario_env NAME: the NAME=value lines of scenarios/NAME.env (none without the file),
# for moat's environment and the headers script's.
lt_scenario_env() {
    local f="$LT_DIR/scenarios/$1.env"
    [[ -f $f ]] && lt_lines "$f"
    return 0
}

# lt_scenario_headers NAME MOAT: the request headers scenario NAME's requests carry, one
# `Name: value` per line: scenarios/NAME.headers.sh's output (run with MOAT set to the moat
# binary and NAME.env's variables), else scenarios/NAME.headers, else none.
lt_scenario_headers() {
    local name=$1 moat=$2 f="$LT_DIR/scenarios/$1" env=()
    if [[ -f $f.headers.sh ]]; then
        mapfile -t env < <(lt_scenario_env "$name")
        env MOAT="$moat" "${env[@]}" bash "$f.headers.sh" || { lt_log "$f.headers.sh failed"; return 1; }
    elif [[ -f $f.headers ]]; then
        lt_lines "$f.headers"
    fi
}
