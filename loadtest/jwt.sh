#!/usr/bin/env bash
# jwt.sh — load a route that takes a JWT (Authorization: Bearer TOKEN), e.g. before going live.
#
#   loadtest/jwt.sh URL TOKEN [DURATION=10s] [CONNECTIONS=50] [extra oha args...]
#   e.g. loadtest/jwt.sh https://api.example.com/api/users "$(cat token.txt)" 30s 100 --insecure
# The same token on every request: with moat's verified-token cache this measures the cached
# path. Prints requests/s, p50, p99, p99.9, errors (non-2xx count: 401 = bad token).
set -euo pipefail
if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; fi
url=$1 token=$2 dur=${3:-10s} conns=${4:-50}
shift $(( $# < 4 ? $# : 4 ))
exec "$(dirname "$0")/http.sh" "$url" "$dur" "$conns" -H "Authorization: Bearer $token" "$@"
