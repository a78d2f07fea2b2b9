#!/usr/bin/env bash
# The quick start: builds moat and the demo target (examples/upstream), starts two targets
# on 127.0.0.1:9001 and 127.0.0.1:9002, then moat on conf/quickstart.yaml (public listener
# 127.0.0.1:8080, admin 127.0.0.1:9901). Nothing else is needed. Ctrl-C (or closing the
# terminal) stops all three, and so does any of them exiting. It refuses to start, saying
# which, when one of the four ports is taken. What to try: README.md, "Quick start".
#
# Overrides (tests/it/quickstart.rs runs the script with them):
#   MOAT_BIN, UPSTREAM_BIN    prebuilt moat and examples/upstream binaries: nothing is built
#                             (and scripts/setup.sh is not run)
#   QUICKSTART_PORTS          "PUBLIC ADMIN ONE TWO" instead of "8080 9901 9001 9002": moat then
#                             serves a copy of conf/quickstart.yaml with those ports, its pid
#                             file and upgrade socket in a temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."

# The demo API key (public: for this demo only). conf/quickstart.yaml holds its SHA-256.
DEMO_KEY=mk_demo_public_quickstart_key

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

read -r PUBLIC ADMIN ONE TWO EXTRA <<<"${QUICKSTART_PORTS:-8080 9901 9001 9002}" || true
for p in "$PUBLIC" "$ADMIN" "$ONE" "$TWO"; do
    [[ $p =~ ^[1-9][0-9]{0,4}$ ]] || die "QUICKSTART_PORTS must be four ports: PUBLIC ADMIN ONE TWO"
done
[[ -z ${EXTRA:-} ]] || die "QUICKSTART_PORTS must be four ports: PUBLIC ADMIN ONE TWO"

# taken PORT: true when something accepts connections on 127.0.0.1:PORT.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Every port must be free before anything starts: a demo target or moat finding its port
# taken would fail, and the check below could see the other program instead.
ports_free() {
    local p what busy=()
    for p in "public:$PUBLIC" "admin:$ADMIN" "target one:$ONE" "target two:$TWO"; do
        what=${p%:*}
        taken "${p##*:}" && busy+=("127.0.0.1:${p##*:} ($what)")
    done
    ((${#busy[@]} == 0)) && return 0
    say "already in use: ${busy[*]}"
    die "stop what listens there (another quick start?), or pick other ports: QUICKSTART_PORTS=\"PUBLIC ADMIN ONE TWO\" $0"
}
ports_free

if [[ -n ${MOAT_BIN:-} || -n ${UPSTREAM_BIN:-} ]]; then
    [[ -x ${MOAT_BIN:-} && -x ${UPSTREAM_BIN:-} ]] || die "set both MOAT_BIN and UPSTREAM_BIN to executables"
else
    source scripts/setup.sh
    [[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --release --locked --bin moat --example upstream
    bin="${CARGO_TARGET_DIR:-target}/release"
    MOAT_BIN="$bin/moat" UPSTREAM_BIN="$bin/examples/upstream"
    ports_free   # again: the build took a while
fi
command -v curl >/dev/null 2>&1 || die "curl is needed (scripts/setup.sh installs it)"

config=conf/quickstart.yaml pid_file=/tmp/moat-quickstart.pid tmp=
if [[ "$PUBLIC $ADMIN $ONE $TWO" != "8080 9901 9001 9002" ]]; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/moat-quickstart.XXXXXX")
    config="$tmp/quickstart.yaml" pid_file="$tmp/moat-quickstart.pid"
    sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$PUBLIC/g" -e "s/127\.0\.0\.1:9901/127.0.0.1:$ADMIN/g" \
        -e "s/127\.0\.0\.1:9001/127.0.0.1:$ONE/g" -e "s/127\.0\.0\.1:9002/127.0.0.1:$TWO/g" \
        -e "s|/tmp/moat-quickstart|$tmp/moat-quickstart|g" conf/quickstart.yaml >"$config"
fi

pids=()
stop() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -z $tmp ]] || rm -rf "$tmp"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Closing the terminal: moat takes SIGHUP as "reload", so it would stay up; stop everything.
trap 'exit 129' HUP

# wait_for WHAT PID CHECK...: run CHECK every 0.1 s until it succeeds, for at most 20 s,
# failing as soon as PID has exited.
wait_for() {
    local what=$1 pid=$2 i
    shift 2
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || die "$what exited (see its error above)"
        "$@" && kill -0 "$pid" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$what did not come up within 20 s"
}

# is_target NAME PORT: the demo target NAME (not another program) answers on PORT.
is_target() {
    curl -s -m 1 -o /dev/null -D - "http://127.0.0.1:$2/healthz" 2>/dev/null \
        | tr -d '\r' | grep -qix "x-upstream-target: $1"
}

# is_moat PID: the admin listener of moat PID answers (its /status names that pid), and its
# public listener accepts connections.
is_moat() {
    curl -s -m 1 "http://127.0.0.1:$ADMIN/status" 2>/dev/null | grep -q "\"pid\":$1[,}]" \
        && taken "$PUBLIC"
}

for t in one:"$ONE" two:"$TWO"; do
    "$UPSTREAM_BIN" --listen "127.0.0.1:${t#*:}" --name "${t%%:*}" &
    pids+=($!)
    wait_for "demo target ${t%%:*} (127.0.0.1:${t#*:})" "$!" is_target "${t%%:*}" "${t#*:}"
done

"$MOAT_BIN" run -c "$config" &
moat=$!
pids+=("$moat")
wait_for "moat" "$moat" is_moat "$moat"

cat <<EOF

  moat quick start
    public   http://127.0.0.1:$PUBLIC   (/api balanced, /private needs the key, /limited 4/s, /hello)
    admin    http://127.0.0.1:$ADMIN   (/metrics, /status)
    targets  one = 127.0.0.1:$ONE, two = 127.0.0.1:$TWO
    demo API key: $DEMO_KEY
      curl -i http://127.0.0.1:$PUBLIC/private/orders -H 'X-Api-Key: $DEMO_KEY'
    reload after editing $config: kill -HUP \$(cat $pid_file)
    more: README.md, "Quick start". Ctrl-C stops moat and the targets.

EOF

# Until moat or a target exits (or a signal arrives): then everything is stopped.
status=0
wait -n "${pids[@]}" || status=$?
say "moat or a demo target exited (status $status): stopping the others"
exit "$status"
