#!/usr/bin/env bash
# The quick start: builds moat and the demo target (examples/upstream), starts two targets
# on 127.0.0.1:9001 and 127.0.0.1:9002, then moat on conf/quickstart.yaml (public listener
# 127.0.0.1:8080, admin 127.0.0.1:9901). Nothing else is needed. Ctrl-C stops all three
# (so does moat exiting). What to try: README.md, "Quick start".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"

# The demo API key (public: for this demo only). conf/quickstart.yaml holds its SHA-256.
DEMO_KEY=mk_demo_public_quickstart_key

cargo build --release --locked --bin moat --example upstream
bin="${CARGO_TARGET_DIR:-target}/release"

pids=()
stop() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# up PORT: true once something accepts connections on 127.0.0.1:PORT (at most 5 s).
up() {
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

for t in one:9001 two:9002; do
    "$bin/examples/upstream" --listen "127.0.0.1:${t#*:}" --name "${t%%:*}" &
    pids+=($!)
    up "${t#*:}" || { echo "quickstart: demo target ${t%%:*} did not start on 127.0.0.1:${t#*:} (port in use?)" >&2; exit 1; }
done

cat <<EOF

  moat quick start
    public   http://127.0.0.1:8080   (/api balanced, /private needs the key, /limited 4/s, /hello)
    admin    http://127.0.0.1:9901   (/metrics, /status)
    targets  one = 127.0.0.1:9001, two = 127.0.0.1:9002
    demo API key: $DEMO_KEY
      curl -i http://127.0.0.1:8080/private/orders -H 'X-Api-Key: $DEMO_KEY'
    reload after editing conf/quickstart.yaml: kill -HUP \$(cat /tmp/moat-quickstart.pid)
    more: README.md, "Quick start". Ctrl-C stops moat and the targets.

EOF

"$bin/moat" run -c conf/quickstart.yaml &
moat=$!
pids+=("$moat")
wait "$moat"
