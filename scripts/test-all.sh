#!/usr/bin/env bash
# Installs whatever this machine lacks (brokers included), then builds and runs
# every check and test chatmesh has. Safe to run again: each install step first
# checks whether its tool is already there. Used as-is by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

log "versions"
cargo --version
redis-server --version

log "format"
cargo fmt --all -- --check

log "build"
cargo build --workspace --all-targets

log "clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "tests"
export CHATMESH_BIN="$PWD/target/debug/chatmesh"
cargo test --workspace --no-fail-fast -- --test-threads="${CHATMESH_TEST_THREADS:-4}"
