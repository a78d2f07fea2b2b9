#!/usr/bin/env bash
# Graceful binary upgrade of a running moat, in the right order:
#   1. check the config with the NEW binary (refuse to go on if it is invalid);
#   2. start the new binary with --upgrade: it compiles routes and probes pools, then waits
#      on the upgrade socket for the listening sockets;
#   3. only once it is waiting, SIGQUIT the old process: it hands the sockets over, keeps
#      finishing what is in flight (grace_period, shutdown_timeout) and exits;
#   4. wait until the admin API answers from the new pid; fail loudly otherwise.
# If the new process dies before step 3, the old one is never touched.
#
# Usage: moat-upgrade.sh -c /etc/moat/moat.yaml -p /run/moat/moat.pid -a 127.0.0.1:9901 \
#          [-u /run/moat/upgrade.sock] [-b /usr/local/bin/moat] [-t ADMIN_TOKEN_ENV_VAR | -T ADMIN_TOKEN_FILE]
# With -u (server.upgrade_sock), the script also waits for the new process to listen on the
# upgrade socket before it signals the old one.
set -euo pipefail

config="" pidfile="" admin="" bin="$(command -v moat || echo /usr/local/bin/moat)" token_env="" token_file="" sock=""
while getopts "c:p:a:b:t:T:u:" o; do
  case "$o" in
    c) config=$OPTARG ;; p) pidfile=$OPTARG ;; a) admin=$OPTARG ;; b) bin=$OPTARG ;; t) token_env=$OPTARG ;; T) token_file=$OPTARG ;; u) sock=$OPTARG ;;
    *) echo "usage: $0 -c CONFIG -p PIDFILE -a ADMIN_ADDR [-b BINARY] [-t TOKEN_ENV]" >&2; exit 2 ;;
  esac
done
[[ -n "$config" && -n "$pidfile" && -n "$admin" ]] || { echo "usage: $0 -c CONFIG -p PIDFILE -a ADMIN_ADDR [-b BINARY]" >&2; exit 2; }

auth=()
if [[ -n "$token_env" && -n "${!token_env:-}" ]]; then auth=(-H "Authorization: Bearer ${!token_env}"); fi
if [[ -n "$token_file" ]]; then auth=(-H "Authorization: Bearer $(tr -d '[:space:]' <"$token_file")"); fi
status_pid() { curl -fsS --max-time 2 "${auth[@]}" "http://$admin/status" 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p'; }

old=$(cat "$pidfile" 2>/dev/null || true)
[[ -n "$old" ]] && kill -0 "$old" 2>/dev/null || { echo "moat-upgrade: no running moat in $pidfile" >&2; exit 1; }

echo "moat-upgrade: checking $config with $bin"
"$bin" check -c "$config"

log=$(mktemp /tmp/moat-upgrade.XXXXXX.log)
marker=$(mktemp /tmp/moat-upgrade.XXXXXX.start)
echo "moat-upgrade: starting the new process (log: $log)"
"$bin" run -c "$config" --upgrade -d >"$log" 2>&1 &
launcher=$!

# Wait until the new process is waiting for the sockets (up to 30 s: it compiles the config
# and probes the pools first).
waiting() {
  grep -q "Bootstrap starting" "$log" 2>/dev/null || return 1
  [[ -z "$sock" ]] || [[ -S "$sock" && "$sock" -nt "$marker" ]]
}
for _ in $(seq 1 300); do
  waiting && break
  if ! kill -0 "$launcher" 2>/dev/null && ! grep -q "Bootstrap starting" "$log"; then
    echo "moat-upgrade: the new process exited before taking over; the old one ($old) keeps serving" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
rm -f "$marker"
waiting || { echo "moat-upgrade: the new process never got ready; old one untouched" >&2; exit 1; }
sleep 0.2

echo "moat-upgrade: handing the sockets over (SIGQUIT $old)"
kill -QUIT "$old"

for _ in $(seq 1 300); do
  now=$(status_pid || true)
  if [[ -n "$now" && "$now" != "$old" ]]; then
    echo "moat-upgrade: pid $now is serving; $old drains and exits by itself"
    exit 0
  fi
  sleep 0.1
done
echo "moat-upgrade: the new process did not take over; check $log and the old process ($old)" >&2
exit 1
