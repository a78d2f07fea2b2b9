#!/usr/bin/env bash
# apikey.sh — load a route that takes an API key (X-Api-Key header), e.g. before going live.
#
#   loadtest/apikey.sh URL KEY [DURATION=10s] [CONNECTIONS=50] [extra oha args...]
#   e.g. loadtest/apikey.sh http://127.0.0.1:8080/api/orders "$MY_KEY" 30s
# For a route whose api_key.header is not x-api-key, use http.sh with -H 'Name: KEY' (or
# -H 'Authorization: ApiKey KEY'). Prints requests/s, p50, p99, p99.9, errors.
set -euo pipefail
if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; fi
url=$1 key=$2 dur=${3:-10s} conns=${4:-50}
shift $(( $# < 4 ? $# : 4 ))
exec "$(dirname "$0")/http.sh" "$url" "$dur" "$conns" -H "X-Api-Key: $key" "$@"
