#!/usr/bin/env bash
# latency.sh — added latency at a fixed rate: the upstream directly, bare Pingora, nginx and moat.
#
# usage: loadtest/latency.sh [--rate R=5000] [--duration D=10s] [--rounds N=5]
#                            [--scenario NAME=full]... [other compare.sh options]
# compare.sh --latency: oha -q R --latency-correction against each target in turn
# alternating between the targets round by round, then p50/p99/p99.9 per target and what
# each adds over the upstream loaded directly, taken per round and given as the median and
# spread over the rounds (issue 7's target: +p99 ≤ 1 ms at 5,000 req/s). A single round is
# noise-dominated on a shared machine (bare alone moved from +0.46 to +1.22 ms): keep 5+.
# By hand against a deployment: loadtest/http.sh URL 10s 50 -q 5000 --latency-correction
set -euo pipefail
case " $* " in
    *" -h "* | *" --help "*) sed -n '4,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    *" --scenario "*) exec "$(dirname "$0")/compare.sh" --latency "$@" ;;
    *) exec "$(dirname "$0")/compare.sh" --latency --scenario full "$@" ;;
esac
