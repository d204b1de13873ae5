#!/usr/bin/env bash
# Usage: scripts/npm-ci.sh DIR
# Installs DIR's npm packages with `npm ci`, idempotently: only when DIR/node_modules
# is missing or DIR/package-lock.json changed since the last install (a sha256 stamp
# in node_modules). Installs Debian's nodejs and npm first when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${1:?usage: scripts/npm-ci.sh DIR (a directory with package-lock.json)}"
if [ ! -f "$dir/package-lock.json" ]; then
  echo "error: $dir/package-lock.json not found" >&2
  exit 1
fi

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ((${#need_apt[@]})); then
  printf '\n== installing %s (Debian packages)\n' "${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

stamp="$dir/node_modules/.chatmesh-lock.sha256"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$dir/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  printf '\n== npm ci in %s\n' "$dir"
  (cd "$dir" && npm ci --no-audit --no-fund)
  echo "$want" >"$stamp"
fi
