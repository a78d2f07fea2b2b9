#!/usr/bin/env bash
# Prints the request headers of scenario "hmac": `GET /` signed now by `moat sign`.
# compare.sh runs it with MOAT (the moat binary) set and hmac.env's variables exported.
set -euo pipefail
"${MOAT:?}" sign --key-id bench-svc --secret-env MOAT_BENCH_HMAC_SECRET GET /
