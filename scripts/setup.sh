#!/usr/bin/env bash
# Installs what building and testing moat needs on a Debian/Ubuntu machine, and nothing
# that is already there: a C toolchain, cmake, pkg-config and OpenSSL headers (Pingora),
# redis-server, redis-cli and redis-sentinel (tests), and a Rust toolchain through rustup
# when cargo is missing.
# Usage: scripts/setup.sh [--for-tests]
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have cc || need_pkgs+=(build-essential)
have cmake || need_pkgs+=(cmake)
have pkg-config || need_pkgs+=(pkg-config)
pkg_installed libssl-dev || need_pkgs+=(libssl-dev)
have curl || need_pkgs+=(curl ca-certificates)
if [[ "${1:-}" == "--for-tests" ]]; then
  have redis-server || need_pkgs+=(redis-server)
  have redis-cli || need_pkgs+=(redis-tools)
  have redis-sentinel || need_pkgs+=(redis-sentinel)
fi

if ((${#need_pkgs[@]})); then
  echo "setup: installing ${need_pkgs[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! have cargo; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
