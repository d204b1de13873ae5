#!/usr/bin/env bash
# Static checks of the docker compose files (no Docker engine needed):
#  1. `docker-compose config -q` accepts each file;
#  2. every service that sets CHATMESH_* variables passes `chatmesh --check-config`
#     with exactly those variables, so a misspelt key or bad value fails here;
#  3. the nodes' broker is the file's (`--check-config` does not look at the URL):
#     in docker-compose.<kind>.yml each node has broker.kind <kind>, every host of
#     its broker.url is a service of the file with a healthcheck, and the node
#     waits for it (depends_on service_healthy); a Kafka service runs KRaft
#     (KAFKA_PROCESS_ROLES with a controller, no ZooKeeper).
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
  if problems=$(docker-compose -f "$file" config | /usr/bin/python3 -c '
import sys, yaml
kind = sys.argv[1]
doc = yaml.safe_load(sys.stdin)
services = doc.get("services", {})
def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}
def hosts(url):
    for item in url.split(","):
        item = item.strip().split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        yield item.rsplit(":", 1)[0]
problems = []
for name, svc in services.items():
    env = env_of(svc)
    if not any(k.startswith("CHATMESH_") for k in env):
        continue
    got = env.get("CHATMESH_BROKER__KIND")
    if got != kind:
        problems.append(f"{name}: CHATMESH_BROKER__KIND is {got!r}, not {kind!r}")
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {} for d in deps}
    for host in hosts(env.get("CHATMESH_BROKER__URL", "")):
        broker = services.get(host)
        if broker is None:
            problems.append(f"{name}: broker host {host!r} of CHATMESH_BROKER__URL is no service")
            continue
        if not (broker.get("healthcheck") or {}).get("test"):
            problems.append(f"{host}: no healthcheck")
        if (deps.get(host) or {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for {host} (depends_on service_healthy)")
        benv = env_of(broker)
        if kind == "kafka" and ("controller" not in benv.get("KAFKA_PROCESS_ROLES", "").split(",")
                                or "KAFKA_ZOOKEEPER_CONNECT" in benv):
            problems.append(f"{host}: not KRaft (KAFKA_PROCESS_ROLES needs controller, no KAFKA_ZOOKEEPER_CONNECT)")
print("; ".join(dict.fromkeys(problems)))
' "$(basename "$file" .yml | sed 's/^docker-compose\.//')") && [ -z "$problems" ]; then
    echo "ok: $file broker wiring"
  else
    echo "FAIL: $file broker wiring: ${problems:-unreadable}" >&2
    status=1
  fi
done
exit $status
