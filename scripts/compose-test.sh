#!/usr/bin/env bash
# For machines with Docker: start the 3-node cluster of docker-compose.<broker>.yml
# and run the cluster suite against the running nodes. Tests that must kill or
# restart processes say why they do not run in this mode.
# Usage: scripts/compose-test.sh redis|nats|kafka|rabbitmq
set -euo pipefail
cd "$(dirname "$0")/.."
broker="${1:?usage: scripts/compose-test.sh redis|nats|kafka|rabbitmq}"
file="docker-compose.${broker}.yml"
key="${CHATMESH_API_KEY:-dev-key}"
docker compose -f "$file" up -d --build --wait
trap 'docker compose -f "$file" down -v' EXIT
CHATMESH_TEST_NODES=http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083 \
CHATMESH_TEST_API_KEY="$key" \
  cargo test -p chatmesh-tests --test cluster -- --ignored external::
