#!/usr/bin/env bash
# latency.sh — added latency at a fixed rate: the upstream directly, bare Pingora, nginx and moat.
#
# usage: loadtest/latency.sh [--rate R=5000] [--duration D=10s] [--rounds N=1]
#                            [--scenario NAME=full]... [other compare.sh options]
# compare.sh --latency: oha -q R --latency-correction against each target in turn
# (alternating when --rounds > 1), then p50/p99/p99.9 per target and what each adds over
# the upstream loaded directly (issue 7's target: +p99 ≤ 1 ms at 5,000 req/s).
# By hand against a deployment: loadtest/http.sh URL 10s 50 -q 5000 --latency-correction
set -euo pipefail
case " $* " in
    *" -h "* | *" --help "*) sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    *" --scenario "*) exec "$(dirname "$0")/compare.sh" --latency "$@" ;;
    *) exec "$(dirname "$0")/compare.sh" --latency --scenario full "$@" ;;
esac
