#!/usr/bin/env bash
# instructions.sh — instructions per request (valgrind callgrind) of bare Pingora and moat
# scenarios: a load-independent figure to set beside compare.sh's throughput, which a shared
# machine makes noisy.
#
# usage: loadtest/instructions.sh [--scenario NAME]... [--requests N=3000] [--no-bare]
#          [--no-build] [--pingap]
#   --scenario NAME  moat config template scenarios/NAME.yaml (repeatable; default: plain, full)
#   --requests N     requests measured per target (after 200 warm-up requests)
#   --no-bare        skip examples/bare_proxy
#   --no-build       use the release binaries already built
#   --pingap         add a `pingap` row: Pingap as a plain proxy, configured as compare.sh's
#                    --pingap row (binary from $PINGAP, else `pingap` on PATH)
# Per target: the proxy runs under `valgrind --tool=callgrind` (threads: 1, as in the
# scenarios), examples/upstream is the origin; 200 warm-up requests with the scenario's
# headers, `callgrind_control -z`, N keep-alive requests on 4 connections (oha -n N -c 4;
# HTTP/2 and TLS as the scenario's `# compare:` variant says), `callgrind_control -d`;
# instructions per request = the dump's total / N. Every thread of the proxy counts (the
# access-log writer too). Needs valgrind (installed with apt-get when missing, as
# scripts/setup.sh installs its packages).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '6,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SCENARIOS=() REQUESTS=3000 BARE=1 BUILD=1 USE_PINGAP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --scenario) [[ $# -ge 2 ]] || usage; SCENARIOS+=("$2"); shift 2 ;;
        --requests) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; REQUESTS=$2; shift 2 ;;
        --no-bare) BARE=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --pingap) USE_PINGAP=1; shift ;;
        *) usage ;;
    esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(plain full)

if ! command -v callgrind_control >/dev/null 2>&1; then
    lt_log "valgrind not found; installing it (apt-get)"
    SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get install -y valgrind >&2 || lt_die "could not install valgrind"
fi
lt_init
LT_OHA=$(lt_oha)
REL=$(lt_release_dir)
LT_REL=$REL
if (( BUILD )); then
    lt_log "building moat, bare_proxy and upstream (release)"
    (cd "$LT_ROOT" && cargo build --release --bin moat --example bare_proxy --example upstream) \
        >"$LT_TMP/build.log" 2>&1 || { tail -20 "$LT_TMP/build.log" >&2; lt_die "build failed"; }
fi

# What the scenarios need: a certificate, Redis.
CERT= KEY= REDIS_URL= need_cert=0 need_redis=0
for s in "${SCENARIOS[@]}"; do
    f="$LT_DIR/scenarios/$s.yaml"
    [[ -f $f ]] || lt_die "no scenario $f"
    grep -q '{{TLS_CERT}}' "$f" && need_cert=1
    grep -q '{{REDIS_URL}}' "$f" && need_redis=1
done
variant() { sed -n 's/^# compare: *\([a-z0-9]*\).*/\1/p' "$LT_DIR/scenarios/$1.yaml" | head -1; }
if (( need_cert )); then
    CERT="$LT_TMP/cert.pem" KEY="$LT_TMP/key.pem"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
        -keyout "$KEY" -out "$CERT" >"$LT_TMP/openssl.log" 2>&1 || lt_die "openssl failed"
fi
lt_start_upstream - 0 1
if (( need_redis )); then
    port=$(lt_free_port) REDIS_URL="redis://127.0.0.1:$port/0"
    mkdir -p "$LT_TMP/redis"
    lt_start redis - redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$LT_TMP/redis" --daemonize no
    sleep 0.5
fi

# measure NAME VARIANT PORT PID HEADER-LINES: print "NAME instructions/request".
measure() {
    local name=$1 v=$2 port=$3 pid=$4 headers=$5 url hdrs=() args=() line total dump
    url="http://127.0.0.1:$port/"
    while IFS= read -r line; do [[ -n $line ]] && hdrs+=(-H "$line"); done <<<"$headers"
    # oha and curl (the readiness check) take the same options: --insecure, --http2, -H
    [[ $v == http ]] || { url="https://127.0.0.1:$port/"; args+=(--insecure); }
    [[ $v == h2 ]] && args+=(--http2)
    args+=("${hdrs[@]}")
    lt_wait_http "$url" 200 600 "$pid" "${args[@]}" || { lt_log "$name: not ready"; return 1; }
    "$LT_OHA" --no-tui -n 200 -c 4 "${args[@]}" "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    "$LT_OHA" --no-tui --output-format json -n "$REQUESTS" -c 4 "${args[@]}" "$url" >"$LT_TMP/$name.json"
    callgrind_control -d "$pid" >/dev/null
    read -r _ _ _ _ ok errors <<<"$(lt_parse_oha "$LT_TMP/$name.json")"
    sleep 0.5
    dump=$(ls -t "$LT_TMP/cg.$name".* | head -1)
    total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump" | head -1)
    [[ -n $total ]] || total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump" | head -1)
    printf '%-22s %8.1f k instructions/request  (%s responses, %s errors)\n' \
        "$name" "$(echo "$total / $REQUESTS / 1000" | bc -l)" "$ok" "$errors"
}

# cg NAME ENV-ASSIGNMENTS... -- CMD...: start CMD under callgrind (its environment set first:
# valgrind does not follow an exec).
cg() {
    local name=$1 env=(); shift
    while [[ $1 != -- ]]; do env+=("$1"); shift; done; shift
    LT_STOP_SIGNAL=INT lt_start "$name" - env "${env[@]}" valgrind --tool=callgrind \
        --callgrind-out-file="$LT_TMP/cg.$name.%p" "$@"
}

declare -A DONE_BARE=()
for s in "${SCENARIOS[@]}"; do
    v=$(variant "$s"); v=${v:-http}
    if (( BARE )) && [[ -z ${DONE_BARE[$v]:-} ]]; then
        DONE_BARE[$v]=1
        sfx=; [[ $v == http ]] || sfx="-$v"
        port=$(lt_free_port) extra=()
        [[ $v == http ]] || extra=(--tls-cert "$CERT" --tls-key "$KEY")
        [[ $v == h2 ]] && extra+=(--h2)
        cg "bare$sfx" -- "$REL/examples/bare_proxy" --listen "127.0.0.1:$port" \
            --upstream "127.0.0.1:$LT_UP_PORT" --threads 1 "${extra[@]}"
        measure "bare$sfx" "$v" "$port" "$LT_LAST_PID" "" || true
        lt_stop "$LT_LAST_PID"
    fi
    name="moat-$s" port=$(lt_free_port) admin=$(lt_free_port) run="$LT_TMP/moat-$s"
    mkdir -p "$run"
    lt_render_scenario "$s" "$run/moat.yaml" "$port" "$admin" "$LT_UP_PORT" "$run" "$REDIS_URL" "$CERT" "$KEY"
    mapfile -t ENV_ARGS < <(lt_scenario_env "$s")
    headers=$(lt_scenario_headers "$s" "$REL/moat")
    cg "$name" "${ENV_ARGS[@]}" -- "$REL/moat" run -c "$run/moat.yaml"
    measure "$name" "$v" "$port" "$LT_LAST_PID" "$headers" || true
    lt_stop "$LT_LAST_PID"
done

if (( USE_PINGAP )); then
    PINGAP=${PINGAP:-$(command -v pingap || true)}
    [[ -n $PINGAP && -x $PINGAP ]] || lt_die "--pingap: no pingap binary (set PINGAP=/path/to/pingap)"
    port=$(lt_free_port) dir="$LT_TMP/pingap"
    mkdir -p "$dir"
    printf '%s\n' '[basic]' 'threads = 1' 'log_level = "ERROR"' \
        "pid_file = \"$dir/pingap.pid\"" "upgrade_sock = \"$dir/pingap_upgrade.sock\"" '' \
        '[upstreams.bench]' "addrs = [\"127.0.0.1:$LT_UP_PORT\"]" '' \
        '[locations.bench]' 'upstream = "bench"' '' \
        '[servers.bench]' "addr = \"127.0.0.1:$port\"" 'locations = ["bench"]' 'threads = 1' \
        >"$dir/pingap.toml"
    cg pingap -- "$PINGAP" -c "$dir/pingap.toml"
    measure pingap http "$port" "$LT_LAST_PID" "" || true
    lt_stop "$LT_LAST_PID"
fi
