#!/usr/bin/env bash
# Run every check and test: no path outside the repository (scripts/check-paths.sh), no
# import cycle between top-level modules (scripts/check-imports.sh), formatting, clippy
# (warnings are errors), unit and integration tests. Installs what is missing first (see
# scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --for-tests
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
echo "== no path outside the repository"
bash scripts/check-paths.sh
echo "== no import cycle between top-level modules"
bash scripts/check-imports.sh --self-test
bash scripts/check-imports.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# the library and binary as the release build compiles them (without the dev-only
# `testkit` feature that --all-targets turns on through the dev-dependency)
cargo clippy --locked -p moat --lib --bins -- -D warnings
echo "== cargo test"
cargo test --locked --workspace --all-targets
