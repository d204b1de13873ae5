#!/usr/bin/env bash
# Static checks of the docker compose files (no Docker engine needed):
#  1. `docker-compose config -q` accepts each file;
#  2. every service that sets CHATMESH_* variables passes `chatmesh --check-config`
#     with exactly those variables, so a misspelt key or bad value fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CHATMESH_BIN:-target/debug/chatmesh}"
[ -x "$bin" ] || { echo "check-compose: $bin missing; run cargo build -p chatmesh first" >&2; exit 1; }
status=0
for file in docker-compose.*.yml; do
  docker-compose -f "$file" config -q
  # Debian's docker-compose depends on python3-yaml, so /usr/bin/python3 has it.
  envs=$(docker-compose -f "$file" config | /usr/bin/python3 -c '
import sys, yaml, shlex
doc = yaml.safe_load(sys.stdin)
for name, svc in doc.get("services", {}).items():
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    pairs = [f"{k}={v}" for k, v in env.items() if k.startswith("CHATMESH_")]
    if pairs:
        print(name + " " + " ".join(shlex.quote(p) for p in pairs))
')
  while read -r service vars; do
    [ -n "$service" ] || continue
    if eval "env -i $vars $bin --check-config" >/dev/null; then
      echo "ok: $file $service"
    else
      echo "FAIL: $file service $service has a bad CHATMESH_ setting" >&2
      status=1
    fi
  done <<<"$envs"
done
exit $status
