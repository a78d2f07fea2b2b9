#!/usr/bin/env bash
# Prints the request headers of scenario "hmac": `GET /` for `Host: bench.local`, signed now
# by `moat sign` (which signs the host; the client sends the Host it prints, overriding its
# own). compare.sh runs it with MOAT (the moat binary) set and hmac.env's variables exported.
set -euo pipefail
"${MOAT:?}" sign --key-id bench-svc --secret-env MOAT_BENCH_HMAC_SECRET -H "Host: bench.local" GET /
