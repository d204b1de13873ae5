#!/usr/bin/env bash
# The whole BENCHMARKS.md suite, one run after another on a quiet machine:
# the kernel floor, the Socket.IO peer (its own tool, same session), chatmesh on
# memory / Redis / NATS at 1000 and 5000 clients with a saturation search, the
# cross-node latency at half of the Redis max, and idle RSS at 19,900
# connections per node. Results (JSON, SVG, markdown) go to $OUT (default
# bench/results/<date>).
#
#   bench/run-suite.sh                 # everything (~35 min on 2 cores)
#   ONLY="redis-c1000 half-max" bench/run-suite.sh   # names: floor peer {redis,nats,memory}-c{1000,5000}
#                                                    # half-max {memory,redis,nats}-idle-19900 micro
#                                                    # storm-{memory,redis,nats,kafka,rabbitmq}-{5000,20000}
#                                                    # room-10k-{memory,redis}
#
# Needs: a release build (`cargo build --release -p chatmesh -p chatmesh-bench`,
# target dir $TARGET, default target/), redis-server, nats-server, node + npm
# (for the peer). Nothing here runs in CI: benchmarks are measured, not asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${TARGET:-$ROOT/target}
BIN=$TARGET/release
OUT=${OUT:-$ROOT/bench/results/$(date +%Y-%m-%d)}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peers/socketio}
IDLE_WAIT=${IDLE_WAIT:-60}
mkdir -p "$OUT"
# The generator's publishers send up to 100 msg/s each: lift the per-connection limit.
LIMITS=(--node-env CHATMESH_LIMITS__PUBLISH_PER_SEC=1000000 --node-env CHATMESH_LIMITS__PUBLISH_BURST=1000000
  --node-env CHATMESH_LOG__LEVEL=warn)

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

bench() { # name, args...
  local name=$1; shift
  want "$name" || return 0
  echo "=== $name"
  "$BIN/chatmesh-bench" --idle-wait-max "$IDLE_WAIT" --label "$name" --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.md" 2> "$OUT/$name.log"
  tail -n 3 "$OUT/$name.md"
}

if want floor; then
  echo "=== floor"
  "$BIN/loopback-floor" --secs 5 > "$OUT/loopback-floor.md"
  cat "$OUT/loopback-floor.md"
fi

if want peer; then
  echo "=== peer (Socket.IO + redis adapter, its own generator)"
  rm -rf /tmp/chatmesh-peer && cp -r "$PEER_SRC" /tmp/chatmesh-peer
  (cd /tmp/chatmesh-peer && rm -rf results run && IDLE_WAIT=$IDLE_WAIT OUT_DIR="$OUT/peer" ./run.sh > "$OUT/peer.log" 2>&1)
  tail -n 30 "$OUT/peer/summary.md" || true
fi

RATES_1K=50,200,500,1000,2000
RATES_5K=50,200,500,1000
for broker in redis nats memory; do
  nodes=(--nodes 2); [ "$broker" = memory ] && nodes=(--nodes 1)
  bench "$broker-c1000" --spawn "$broker" "${nodes[@]}" --clients 1000 --rate "$RATES_1K" \
    --saturate --bisect 2 "${LIMITS[@]}"
  bench "$broker-c5000" --spawn "$broker" "${nodes[@]}" --clients 5000 --rate "$RATES_5K" \
    --saturate --bisect 2 "${LIMITS[@]}"
done

if want half-max; then
  max=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['saturation']['max_sustainable_rate'] or 0)" "$OUT/redis-c1000.json")
  half=$(python3 -c "import sys; print(int(float(sys.argv[1]) / 2))" "$max")
  ONLY=half-max bench half-max --spawn redis --nodes 2 --clients 1000 --rate "$half" "${LIMITS[@]}"
fi

for broker in memory redis nats; do
  bench "$broker-idle-19900" --spawn "$broker" --nodes 1 --idle 19900 --settle-secs 5 "${LIMITS[@]}"
done
# Reconnect storms (issue 15): a node drains, every client rejoins another
# node with `since`; and a 10k-member room's rejoin, with presence gathered.
storm() { # name, args...
  local name=$1; shift
  want "$name" || return 0
  echo "=== $name"
  "$BIN/chatmesh-bench" storm --out "$OUT/$name.json" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  cat "$OUT/$name.md"
}
for broker in memory redis nats kafka rabbitmq; do
  for c in 5000 20000; do
    storm "storm-$broker-$c" --spawn "$broker" --clients "$c" "${LIMITS[@]}"
  done
done
GATHER=(--node-env CHATMESH_PRESENCE__DIFF_INTERVAL_MS=200)
storm room-10k-memory --spawn memory --clients 10000 --rooms 1 "${LIMITS[@]}" "${GATHER[@]}"
storm room-10k-redis --spawn redis --clients 10000 --rooms 1 "${LIMITS[@]}" "${GATHER[@]}"

if want micro; then
  echo "=== micro (criterion)"
  CARGO_TARGET_DIR=$TARGET cargo bench -p chatmesh-bench --bench hot_paths 2>&1 \
    | grep -E "^[a-z].*/|time:|thrpt:" > "$OUT/hot-paths.txt"
  cat "$OUT/hot-paths.txt"
fi
echo "results in $OUT"
