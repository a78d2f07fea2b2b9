#!/usr/bin/env bash
# compare.sh — load bare Pingora, nginx and moat (one per scenario) side by side; print one table.
#
# usage: loadtest/compare.sh [--scenario NAME]... [--rounds N=3] [--duration D=10s]
#          [--connections C=50] [--latency [--rate R=5000]] [--no-keepalive] [--ws [N=10000]]
#          [--no-nginx] [--pingap] [--no-build] [--out FILE.tsv] [--keep]
#   --scenario NAME  moat config template scenarios/NAME.yaml (repeatable; default: all)
#   --latency        fixed-rate mode: oha -q R (with latency correction) against the upstream
#                    directly, the bare/nginx variants needed and each scenario; prints
#                    p50/p99/p99.9 and what each adds over the upstream direct
#                    (loadtest/latency.sh: this mode, scenario "full", 5 rounds of 10 s)
#   --no-keepalive   a new connection for every request (oha --disable-keepalive; h2 rows
#                    keep theirs, oha has no such mode for HTTP/2): what accepting and
#                    closing a connection costs each proxy
#   --ws [N]         afterwards, N idle WebSockets through moat and through bare (ws_idle.py)
#   --no-nginx       ignore an installed nginx (upstream becomes examples/upstream, no nginx rows)
#   --pingap         add a `pingap` row: Pingap (another Pingora-based gateway) as a plain
#                    proxy, one location to the same upstream, threads 1, no access log;
#                    binary from $PINGAP, else `pingap` on PATH (see loadtest/README.md, "Peers")
#   --no-build       use the binaries already built (in CARGO_TARGET_DIR or target/, release)
#   --out FILE       also write the raw per-round results (TSV) to FILE
#   --keep           keep the temp dir (configs, logs, oha JSON, access logs)
# Proxies run pinned to CPU 0; the upstream, Redis and oha share CPU 1. See loadtest/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '4,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SCENARIOS=() ROUNDS= DURATION= CONNS=50 USE_NGINX=1 BUILD=1 OUT= MODE=throughput RATE=5000 WS=0 KEEPALIVE=1 PINGAP=${PINGAP:-} USE_PINGAP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --scenario) [[ $# -ge 2 ]] || usage; SCENARIOS+=("$2"); shift 2 ;;
        --rounds) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; ROUNDS=$2; shift 2 ;;
        --duration) [[ $# -ge 2 && $2 =~ ^[0-9]+(ms|s|m)$ ]] || usage; DURATION=$2; shift 2 ;;
        --connections) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; CONNS=$2; shift 2 ;;
        --latency) MODE=latency; shift ;;
        --rate) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; RATE=$2; shift 2 ;;
        --no-keepalive) KEEPALIVE=0; shift ;;
        --ws) WS=10000; shift; if [[ $# -gt 0 && $1 =~ ^[1-9][0-9]*$ ]]; then WS=$1; shift; fi ;;
        --no-nginx) USE_NGINX=0; shift ;;
        --pingap) USE_PINGAP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) [[ $# -ge 2 ]] || usage; OUT=$2; shift 2 ;;
        --keep) LT_KEEP=1; shift ;;
        *) usage ;;
    esac
done
if [[ $MODE == latency ]]; then ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-10s}; fi
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s}
if [[ ${#SCENARIOS[@]} -eq 0 ]]; then  # all: the bundled ones in this order, then any others
    SCENARIOS=(plain limit-local limit-fast limit-exact jwt apikey hmac full cluster-fast cluster-exact tls h2)
    for f in "$LT_DIR"/scenarios/*.yaml; do
        s=$(basename "$f" .yaml)
        [[ -e $f && " ${SCENARIOS[*]} " != *" $s "* ]] && SCENARIOS+=("$s")
    done
fi

# What each scenario needs: its client variant (`# compare: http|tls|h2` in the template),
# Redis ({{REDIS_URL}}) and a certificate ({{TLS_CERT}}).
declare -A VARIANT=() NEED=()
for s in "${SCENARIOS[@]}"; do
    f="$LT_DIR/scenarios/$s.yaml"
    [[ -f $f ]] || lt_die "no scenario $f"
    v=$(sed -n 's/^# compare: *\([a-z0-9]*\).*/\1/p' "$f" | head -1)
    VARIANT[$s]=${v:-http}
    [[ ${VARIANT[$s]} =~ ^(http|tls|h2)$ ]] || lt_die "$f: '# compare: $v' is not http, tls or h2"
    NEED[${VARIANT[$s]}]=1
    grep -q '{{REDIS_URL}}' "$f" && NEED[redis]=1
    grep -q '{{TLS_CERT}}' "$f" && NEED[cert]=1
done
[[ -n ${NEED[tls]:-} || -n ${NEED[h2]:-} ]] && NEED[cert]=1
command -v nginx >/dev/null 2>&1 || USE_NGINX=0
if [[ -n ${NEED[redis]:-} ]] && ! command -v redis-server >/dev/null 2>&1; then
    lt_die "scenario(s) need redis-server, which is not installed (apt-get install redis-server)"
fi

lt_init
lt_cpus
LT_OHA=$(lt_oha)
LT_OHA_CPU=$LT_LOAD_CPU
REL=$(lt_release_dir) LT_REL=$REL
NOTES=()

# ---- build ------------------------------------------------------------------------------
MOAT_BUILT=0
if (( BUILD )); then
    lt_log "building bare_proxy and upstream (release)"
    if ! (cd "$LT_ROOT" && cargo build --release --example bare_proxy --example upstream) >"$LT_TMP/build-examples.log" 2>&1; then
        tail -20 "$LT_TMP/build-examples.log" >&2
        [[ -x "$REL/examples/bare_proxy" ]] || lt_die "examples do not build and no earlier build exists"
        NOTES+=("examples did not build (library mid-edit?): used the previous binaries")
    fi
    lt_log "building moat (release)"
    if (cd "$LT_ROOT" && cargo build --release --bin moat) >"$LT_TMP/build-moat.log" 2>&1; then
        MOAT_BUILT=1
    else
        tail -5 "$LT_TMP/build-moat.log" >&2
        NOTES+=("moat skipped: it does not build")
    fi
else
    [[ -x "$REL/moat" ]] && MOAT_BUILT=1 || NOTES+=("moat skipped: no $REL/moat")
fi
[[ -x "$REL/examples/bare_proxy" ]] || lt_die "no $REL/examples/bare_proxy (run without --no-build)"

# ---- certificate (only when a TLS scenario is selected) -----------------------------------
CERT= KEY=
if [[ -n ${NEED[cert]:-} ]]; then
    CERT="$LT_TMP/cert.pem" KEY="$LT_TMP/key.pem"
    if ! openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
        -keyout "$KEY" -out "$CERT" >"$LT_TMP/openssl.log" 2>&1; then
        CERT="$LT_ROOT/conf/examples/certs/example-only.crt" KEY="$LT_ROOT/conf/examples/certs/example-only.key"
        NOTES+=("openssl could not make a certificate: used conf/examples/certs/example-only.*")
    fi
fi

# ---- upstream and Redis (CPU LT_LOAD_CPU) --------------------------------------------------
lt_start_upstream "$LT_LOAD_CPU" "$USE_NGINX" 1
UP_PORT=$LT_UP_PORT UP_PID=$LT_UP_PID UPSTREAM_KIND=$LT_UP_KIND

REDIS_PORT= REDIS_URL=
# redis_cmds: "TOTAL SCRIPTS" — commands Redis has processed so far (those run inside Lua
# scripts included) and EVAL/EVALSHA calls among them ("0 0" without redis-cli).
redis_cmds() {
    command -v redis-cli >/dev/null 2>&1 || { echo 0 0; return; }
    redis-cli -p "$REDIS_PORT" info all 2>/dev/null | tr -d '\r' | awk -F'[:,=]' '
        /^total_commands_processed:/ { t = $2 }
        /^cmdstat_(eval|evalsha):/   { s += $3 }
        END { print t + 0, s + 0 }'
}
if [[ -n ${NEED[redis]:-} ]]; then
    REDIS_PORT=$(lt_free_port) REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    mkdir -p "$LT_TMP/redis"
    lt_start redis "$LT_LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save '' --appendonly no --dir "$LT_TMP/redis" --daemonize no
    ok=0
    for ((i = 0; i < 50; i++)); do
        lt_alive "$LT_LAST_PID" || break
        if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then ok=1; break; fi
        sleep 0.1
    done
    (( ok )) || { tail -5 "$LT_TMP/redis.log" >&2; lt_die "redis-server did not start"; }
fi

# ---- targets ------------------------------------------------------------------------------
# Per target: URL, PID, KIND (upstream|bare|nginx|moat), VAR (http|tls|h2), SCEN (a moat
# target's scenario, for its headers), RUN (moat's run dir, for its access log). Counted
# over the rounds: RESP (responses), LOGLINES (access-log lines), RCMDS/RSCRIPTS (Redis
# commands / script calls while it ran).
TARGETS=()
declare -A URL=() PID=() KIND=() VAR=() SCEN=() RUN=()
declare -A RESP=() LOGLINES=() RCMDS=() RSCRIPTS=() USES_REDIS=()

scheme() { [[ $1 == http ]] && echo http || echo https; }
# client_args VARIANT: oha's options for this variant (curl's differ only in spelling).
client_args() {
    case $1 in
        http) CLIENT_ARGS=() ;;
        tls) CLIENT_ARGS=(--insecure) ;;
        h2) CLIENT_ARGS=(--insecure --http2) ;;
    esac
    [[ $KEEPALIVE == 0 && $1 != h2 ]] && CLIENT_ARGS+=(--disable-keepalive)
    return 0
}
# header_args NAME: HDR_ARGS=(-H "line" ...) for target NAME (its scenario's headers).
header_args() {
    local name=$1 lines=() l
    HDR_ARGS=()
    if [[ -n ${SCEN[$name]:-} ]]; then
        mapfile -t lines < <(lt_scenario_headers "${SCEN[$name]}" "$REL/moat" || lt_log "$name gets no headers")
    fi
    for l in "${lines[@]}"; do [[ -n $l ]] && HDR_ARGS+=(-H "$l"); done
    return 0
}
# add_target NAME KIND VARIANT PORT PID [TENTHS=100]: wait (bounded) for a 200, else drop it.
add_target() {
    local name=$1 port=$4 pid=$5 curl_args=()
    KIND[$name]=$2 VAR[$name]=$3 URL[$name]="$(scheme "$3")://127.0.0.1:$port/" PID[$name]=$pid
    header_args "$name"
    case $3 in tls) curl_args=(-k) ;; h2) curl_args=(-k --http2) ;; esac
    if lt_wait_http "${URL[$name]}" 200 "${6:-100}" "$pid" "${curl_args[@]}" "${HDR_ARGS[@]}"; then
        TARGETS+=("$name")
    else
        tail -5 "$LT_TMP/$name.log" >&2 || true
        NOTES+=("$name skipped: exited or did not answer 200 on :$port in time (log tail above)")
        lt_stop "$pid"
    fi
}

if [[ $MODE == latency ]]; then
    add_target upstream upstream http "$UP_PORT" "$UP_PID"
fi

# bare and nginx, in each variant some selected scenario compares with
for v in http tls h2; do
    [[ -n ${NEED[$v]:-} ]] || continue
    sfx=; [[ $v == http ]] || sfx="-$v"
    port=$(lt_free_port) extra=()
    [[ $v == http ]] || extra=(--tls-cert "$CERT" --tls-key "$KEY")
    [[ $v == h2 ]] && extra+=(--h2)
    LT_STOP_SIGNAL=INT lt_start "bare$sfx" "$LT_PROXY_CPU" "$REL/examples/bare_proxy" \
        --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP_PORT" --threads 1 "${extra[@]}"
    add_target "bare$sfx" bare "$v" "$port" "$LT_LAST_PID"

    (( USE_NGINX )) || continue
    port=$(lt_free_port) listen=
    case $v in
        http) listen=$port ;;
        tls) listen="$port ssl" ;;
        h2) listen="$port ssl http2" ;;
    esac
    ssl=; [[ $v == http ]] || ssl="ssl_certificate $CERT; ssl_certificate_key $KEY;"
    lt_nginx_conf "$LT_TMP/nginx$sfx" "$listen" \
        "$ssl location / { proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection \"\"; }" \
        "upstream bench { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }"
    lt_start "nginx$sfx" "$LT_PROXY_CPU" nginx -e "$LT_TMP/nginx$sfx/error.log" \
        -p "$LT_TMP/nginx$sfx" -c "$LT_TMP/nginx$sfx/nginx.conf"
    add_target "nginx$sfx" nginx "$v" "$port" "$LT_LAST_PID"
done
(( USE_NGINX )) || NOTES+=("nginx not installed (or --no-nginx): no nginx rows")

# Pingap as a plain proxy (http only): the peer the plain scenario is compared with.
if (( USE_PINGAP )); then
    PINGAP=${PINGAP:-$(command -v pingap || true)}
    [[ -n $PINGAP && -x $PINGAP ]] \
        || lt_die "--pingap: no pingap binary (set PINGAP=/path/to/pingap or put it on PATH; loadtest/README.md, \"Peers\")"
    port=$(lt_free_port) dir="$LT_TMP/pingap"
    mkdir -p "$dir"
    printf '%s\n' '[basic]' 'threads = 1' 'log_level = "ERROR"' \
        "pid_file = \"$dir/pingap.pid\"" "upgrade_sock = \"$dir/pingap_upgrade.sock\"" '' \
        '[upstreams.bench]' "addrs = [\"127.0.0.1:$UP_PORT\"]" '' \
        '[locations.bench]' 'upstream = "bench"' '' \
        '[servers.bench]' "addr = \"127.0.0.1:$port\"" 'locations = ["bench"]' 'threads = 1' \
        >"$dir/pingap.toml"
    LT_STOP_SIGNAL=INT lt_start pingap "$LT_PROXY_CPU" "$PINGAP" -c "$dir/pingap.toml"
    add_target pingap peer http "$port" "$LT_LAST_PID" 200
    NOTES+=("pingap: $("$PINGAP" --version 2>/dev/null | head -1) as a plain proxy (one location, threads 1, no access log)")
fi

if (( MOAT_BUILT )); then
    for s in "${SCENARIOS[@]}"; do
        name="moat-$s" port=$(lt_free_port) admin=$(lt_free_port) run="$LT_TMP/moat-$s"
        mkdir -p "$run"
        lt_render_scenario "$s" "$run/moat.yaml" "$port" "$admin" "$UP_PORT" "$run" "$REDIS_URL" "$CERT" "$KEY"
        RUN[$name]=$run SCEN[$name]=$s
        grep -q '{{REDIS_URL}}' "$LT_DIR/scenarios/$s.yaml" && USES_REDIS[$name]=1
        mapfile -t ENV_ARGS < <(lt_scenario_env "$s")
        LT_STOP_SIGNAL=INT lt_start "$name" "$LT_PROXY_CPU" env "${ENV_ARGS[@]}" "$REL/moat" run -c "$run/moat.yaml"
        # 20 s: moat may check upstream health first
        add_target "$name" moat "${VARIANT[$s]}" "$port" "$LT_LAST_PID" 200
    done
fi
[[ ${#TARGETS[@]} -gt 0 ]] || lt_die "nothing to load"

# ---- rounds -------------------------------------------------------------------------------
RESULTS="$LT_TMP/results.tsv"
printf 'name\tround\trps\tp50_ms\tp99_ms\tp999_ms\tresponses\terrors\tcpu_ticks\n' >"$RESULTS"
LOAD_ARGS=()
[[ $MODE == latency ]] && LOAD_ARGS=(-q "$RATE" --latency-correction)
run_one() {  # NAME ROUND DURATION -> appends a line to RESULTS (round 0 = warm-up, not kept)
    local name=$1 round=$2 dur=$3 pid=${PID[$1]} json="$LT_TMP/oha-$1-$2.json" t0 t1 r log=
    local c0= c1= a0 b0 a1 b1
    header_args "$name"
    client_args "${VAR[$name]}"
    [[ -n ${RUN[$name]:-} && -f ${RUN[$name]}/access.log ]] && log=${RUN[$name]}/access.log
    [[ -n $log ]] && : >"$log"     # appended to by moat: emptied so that a run stays small
    [[ -n $REDIS_PORT ]] && c0=$(redis_cmds)
    t0=$(lt_cpu_ticks "$pid")
    if ! lt_run_oha "$json" "${URL[$name]}" "$dur" "$CONNS" "${LOAD_ARGS[@]}" "${CLIENT_ARGS[@]}" "${HDR_ARGS[@]}"; then
        lt_log "oha failed against $name"; return 0
    fi
    t1=$(lt_cpu_ticks "$pid")
    [[ -n $REDIS_PORT ]] && c1=$(redis_cmds)
    lt_alive "$pid" || { lt_log "$name died during the run"; NOTES+=("$name died during round $round"); }
    (( round > 0 )) || return 0
    r=$(lt_parse_oha "$json")
    printf '%s\t%s\t%s\t%s\n' "$name" "$round" "${r// /$'\t'}" "$((t1 - t0))" >>"$RESULTS"
    lt_log "round $round $name: rps p50 p99 p99.9 n err = $r"
    read -r _ _ _ _ n _ <<<"$r"
    RESP[$name]=$(( ${RESP[$name]:-0} + n ))
    if [[ -n $log ]]; then sleep 0.2; LOGLINES[$name]=$(( ${LOGLINES[$name]:-0} + $(wc -l <"$log") )); fi
    if [[ -n $REDIS_PORT ]]; then
        read -r a0 b0 <<<"$c0"; read -r a1 b1 <<<"$c1"
        RCMDS[$name]=$(( ${RCMDS[$name]:-0} + a1 - a0 )) RSCRIPTS[$name]=$(( ${RSCRIPTS[$name]:-0} + b1 - b0 ))
    fi
    return 0
}

lt_log "warm-up (2s each): ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do run_one "$t" 0 2s; done
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do run_one "$t" "$r" "$DURATION"; done
done

TARGETS_TSV="$LT_TMP/targets.tsv"
: >"$TARGETS_TSV"
for t in "${TARGETS[@]}"; do
    printf '%s\t%s\t%s\t%s\n' "$t" "${KIND[$t]}" "${VAR[$t]}" "$(lt_peak_rss_kib "${PID[$t]}")" >>"$TARGETS_TSV"
done
[[ -n "$OUT" ]] && cp "$RESULTS" "$OUT"

# ---- table --------------------------------------------------------------------------------
echo
echo "upstream: $UPSTREAM_KIND on CPU $LT_LOAD_CPU; proxies on CPU $LT_PROXY_CPU; oha on CPU $LT_LOAD_CPU, $CONNS connections${REDIS_PORT:+; redis-server on CPU $LT_LOAD_CPU}"
[[ $KEEPALIVE == 0 ]] && echo "a new connection for every request (oha --disable-keepalive; h2 rows excepted)"
if [[ $MODE == latency ]]; then
    echo "fixed rate: oha -q $RATE --latency-correction; $ROUNDS round(s) x $DURATION, alternating; percentiles = median of rounds"
    echo "+p50/+p99/+p99.9: per round, this row minus the upstream loaded directly in the same round (TLS rows include the TLS cost); median [lowest..highest round]"
    python3 "$LT_DIR/report.py" latency "$RESULTS" "$TARGETS_TSV" "$(getconf CLK_TCK)"
else
    echo "$ROUNDS round(s) x $DURATION each, alternating; rps/p50/p99 = median of rounds; CPU = total proxy CPU / total responses"
    echo "ratios against the bare/nginx row of the same client variant (http: bare, nginx; tls: bare-tls, nginx-tls; h2: bare-h2, nginx-h2)"
    python3 "$LT_DIR/report.py" throughput "$RESULTS" "$TARGETS_TSV" "$(getconf CLK_TCK)"
fi
for t in "${TARGETS[@]}"; do
    if [[ -n ${LOGLINES[$t]:-} ]]; then
        NOTES+=("$t: ${LOGLINES[$t]} access-log lines for ${RESP[$t]:-0} responses")
    fi
    if [[ -n ${USES_REDIS[$t]:-} ]]; then
        NOTES+=("$t: ${RSCRIPTS[$t]:-0} Redis script calls (${RCMDS[$t]:-0} commands, those inside the scripts included) for ${RESP[$t]:-0} responses")
    fi
done
for n in "${NOTES[@]}"; do echo "note: $n"; done

# ---- idle WebSockets (only with --ws) -------------------------------------------------------
if (( WS )) && (( MOAT_BUILT )); then
    echo
    echo "idle WebSockets (loadtest/ws_idle.py $WS; each run bounded at 120 s):"
    for who in moat bare; do
        bin="$REL/moat"; [[ $who == bare ]] && bin="$REL/examples/bare_proxy"
        LT_STOP_SIGNAL=INT lt_start "ws-$who" - python3 "$LT_DIR/ws_idle.py" "$WS" "--$who" "$bin"
        wait "$LT_LAST_PID" || echo "ws_idle.py --$who failed (log: $LT_TMP/ws-$who.log)"
        grep -v '^$' "$LT_TMP/ws-$who.log" | sed 's/^/  /'
    done
fi
