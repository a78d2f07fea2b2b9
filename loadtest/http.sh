#!/usr/bin/env bash
# http.sh — load any HTTP URL with oha and print requests/s, p50, p99 and the error count.
#
#   loadtest/http.sh URL [DURATION=10s] [CONNECTIONS=50] [extra oha args...]
#   e.g. loadtest/http.sh http://127.0.0.1:8080/ 30s 100 -H 'Authorization: Bearer ...'
# Errors = transport errors + non-2xx responses. LT_KEEP=1 keeps oha's JSON.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
url=$1 dur=${2:-10s} conns=${3:-50}
shift $(( $# < 3 ? $# : 3 ))

lt_init
LT_OHA=$(lt_oha)
lt_run_oha "$LT_TMP/oha.json" "$url" "$dur" "$conns" "$@"
read -r rps p50 p99 p999 n errors < <(lt_parse_oha "$LT_TMP/oha.json")
printf 'url:        %s (%s, %s connections)\n' "$url" "$dur" "$conns"
printf 'requests/s: %s\np50:        %s ms\np99:        %s ms\np99.9:      %s ms\nresponses:  %s\nerrors:     %s\n' \
    "$rps" "$p50" "$p99" "$p999" "$n" "$errors"
