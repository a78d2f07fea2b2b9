#!/usr/bin/env bash
# hmac.sh — load a route that takes HMAC-signed requests (GET), signed once by `moat sign`.
#
#   loadtest/hmac.sh URL KEY_ID SECRET_ENV [DURATION=10s] [CONNECTIONS=50] [extra oha args...]
#   e.g. ACME_HMAC_SECRET=... loadtest/hmac.sh http://127.0.0.1:8080/hooks acme-svc ACME_HMAC_SECRET
# SECRET_ENV names the environment variable holding the secret (never on the command line).
# One signature (Date = now; host = the URL's) is repeated for the whole run, so the route
# must set `replay_window: 0s` (replay protection is on by default and would refuse every
# repeat) and the run must end within its clock_skew (default 300 s); GET, no body.
# moat: $MOAT, else the release build (in CARGO_TARGET_DIR or target/), else `moat` on
# PATH. Prints requests/s, p50, p99, p99.9, errors.
set -euo pipefail
if [[ $# -lt 3 || "$1" == -h || "$1" == --help ]]; then sed -n '4,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; fi
url=$1 key_id=$2 secret_env=$3 dur=${4:-10s} conns=${5:-50}
shift $(( $# < 5 ? $# : 5 ))
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target="$root/$target"
moat=${MOAT:-$target/release/moat}
[[ -x $moat ]] || moat=$(command -v moat) || { echo "hmac.sh: no moat binary (set MOAT)" >&2; exit 1; }
hdrs=()
while IFS= read -r line; do [[ -n $line ]] && hdrs+=(-H "$line"); done \
    < <("$moat" sign --key-id "$key_id" --secret-env "$secret_env" GET "$url")
[[ ${#hdrs[@]} -gt 0 ]] || { echo "hmac.sh: moat sign printed no headers" >&2; exit 1; }
exec "$(dirname "$0")/http.sh" "$url" "$dur" "$conns" "${hdrs[@]}" "$@"
