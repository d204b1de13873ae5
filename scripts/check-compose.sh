#!/usr/bin/env bash
# Static checks of the docker compose files (no Docker engine needed):
#  1. `docker-compose config -q` accepts each file;
#  2. every service that sets CHATMESH_* variables passes `chatmesh --check-config`
#     with exactly those variables, so a misspelt key or bad value fails here.
#     A broker kind this binary lacks (built without its cargo feature) is the one error
#     let through, and only when --check-config says so ("`<kind>` is not built
#     into this binary"): the same variables must then pass with broker.kind
#     memory instead, and the file gets one "skip config check" line;
#  3. the nodes' broker is the file's (`--check-config` does not look at the URL):
#     in docker-compose.<kind>.yml each node has broker.kind <kind>, every host of
#     its broker.url (host:port lists, scheme://host:port, and the amqp form
#     amqp://user:pass@host:port/vhost) is a service of the file with a
#     healthcheck, and the node waits for it (depends_on service_healthy); a Kafka
#     service runs KRaft (KAFKA_PROCESS_ROLES with a controller, no ZooKeeper); a
#     RabbitMQ service has a fixed hostname (its data dir is keyed by node name)
#     and its RABBITMQ_DEFAULT_USER/PASS are the URL's user and password.
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
  unbuilt_kind="" unbuilt_services=""
  while read -r service vars; do
    [ -n "$service" ] || continue
    if err=$(eval "env -i $vars $bin --check-config" 2>&1 >/dev/null); then
      echo "ok: $file $service"
      continue
    fi
    # The one error let through: this binary lacks the broker kind, said in one line:
    #   chatmesh: config error: broker.kind: `<kind>` is not built into this binary; ...
    kind=$(sed -n 's/^chatmesh: config error: broker\.kind: `\([a-z0-9_-]*\)` is not built into this binary;.*/\1/p' <<<"$err")
    if [ -z "$kind" ] || [ "$(wc -l <<<"$err")" -ne 1 ]; then
      echo "$err" >&2
      echo "FAIL: $file service $service has a bad CHATMESH_ setting" >&2
      status=1
    elif [ -n "$unbuilt_kind" ] && [ "$kind" != "$unbuilt_kind" ]; then
      echo "FAIL: $file service $service: broker.kind $kind, another node's is $unbuilt_kind" >&2
      status=1
    elif err=$(eval "env -i $vars CHATMESH_BROKER__KIND=memory $bin --check-config" 2>&1 >/dev/null); then
      # The kind stops --check-config before the other settings are read, so
      # they are checked with the kind every build has.
      unbuilt_kind=$kind unbuilt_services+="${unbuilt_services:+, }$service"
    else
      echo "$err" >&2
      echo "FAIL: $file service $service has a bad CHATMESH_ setting (besides broker.kind $kind, which this binary lacks)" >&2
      status=1
    fi
  done <<<"$envs"
  if [ -n "$unbuilt_kind" ]; then
    echo "skip config check: $file: broker.kind $unbuilt_kind is not built into this binary (built without its cargo feature);" \
      "the other CHATMESH_ settings of $unbuilt_services pass with broker.kind memory"
  fi
  if problems=$(docker-compose -f "$file" config | /usr/bin/python3 -c '
import re, sys, yaml
from urllib.parse import unquote
kind = sys.argv[1]
doc = yaml.safe_load(sys.stdin)
services = doc.get("services", {})
def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}
def authorities(url):
    # kafka:9092,k2:9092 | nats://nats:4222 | amqp://user:pass@rabbitmq:5672/%2f?heartbeat=10
    for item in url.split(","):
        yield re.split(r"[/?#]", item.strip().split("://", 1)[-1], maxsplit=1)[0]
def hosts(url):
    # The host is after the userinfo (up to the last "@") and before the port
    # (":"), or in brackets for IPv6.
    for authority in authorities(url):
        hostport = authority.rsplit("@", 1)[-1]
        if hostport.startswith("["):
            yield hostport[1:].split("]", 1)[0]
        else:
            yield hostport.split(":", 1)[0]
def userinfo(url):
    # (user, password) of the amqp form, percent-decoded; None without "@".
    for authority in authorities(url):
        if "@" in authority:
            user, _, password = authority.rsplit("@", 1)[0].partition(":")
            return unquote(user), unquote(password)
    return None
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
        if kind == "rabbitmq":
            if not broker.get("hostname"):
                problems.append(f"{host}: no fixed hostname (RabbitMQ keys its data dir by node name)")
            want = (benv.get("RABBITMQ_DEFAULT_USER", "guest"), benv.get("RABBITMQ_DEFAULT_PASS", "guest"))
            if userinfo(env.get("CHATMESH_BROKER__URL", "")) != want:
                problems.append(f"{name}: user and password of CHATMESH_BROKER__URL are not RABBITMQ_DEFAULT_USER/PASS of {host}")
print("; ".join(dict.fromkeys(problems)))
' "$(basename "$file" .yml | sed 's/^docker-compose\.//')") && [ -z "$problems" ]; then
    echo "ok: $file broker wiring"
  else
    echo "FAIL: $file broker wiring: ${problems:-unreadable}" >&2
    status=1
  fi
done
exit $status
