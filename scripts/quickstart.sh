#!/usr/bin/env bash
# Build moat and run it on the bundled quick-start config (no other service needed).
# Then: curl -i http://127.0.0.1:8080/hello/world   (see conf/quickstart.yaml for more)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
exec target/release/moat run -c conf/quickstart.yaml
