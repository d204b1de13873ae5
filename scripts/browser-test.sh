#!/usr/bin/env bash
# Headless-browser test of the demo web client (node/src/demo/index.html, served at GET /).
# Installs what is missing, idempotently: Debian's chromium when /usr/bin/chromium is absent,
# and tests/browser's npm packages (npm ci) when node_modules is absent or package-lock.json
# changed since the last install. Then runs `node --test tests/browser/`.
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

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
[ -n "${CHROMIUM:-}" ] || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

dir=tests/browser
stamp="$dir/node_modules/.chatmesh-lock.sha256"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$dir/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund)
  echo "$want" >"$stamp"
fi

log "versions"
node --version
"${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null || true

log "browser test (chatmesh: $bin)"
CHATMESH_BIN="$bin" exec node --test tests/browser/
