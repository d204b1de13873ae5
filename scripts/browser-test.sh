#!/usr/bin/env bash
# Headless-browser test of the demo web client (node/src/demo/index.html, served at GET /).
# Installs what is missing, idempotently: Debian's chromium when /usr/bin/chromium is absent,
# and tests/browser's npm packages (scripts/npm-ci.sh: npm ci when node_modules is absent or
# package-lock.json changed since the last install). Then runs `node --test tests/browser/`.
#
# Expects the node binary built already: `cargo build -p chatmesh` (or CHATMESH_BIN=<path>).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
bin="${CHATMESH_BIN:-$PWD/target/debug/chatmesh}"
if [ ! -x "$bin" ]; then
  echo "error: chatmesh binary not found at $bin" >&2
  echo "       build it first: cargo build -p chatmesh   (or set CHATMESH_BIN to a built binary)" >&2
  exit 1
fi

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
# nodejs and npm when missing, then npm ci when node_modules is stale.
./scripts/npm-ci.sh tests/browser

log "versions"
node --version
"${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null || true

log "browser test (chatmesh: $bin)"
CHATMESH_BIN="$bin" exec node --test tests/browser/
