#!/usr/bin/env bash
# The Socket.IO peer's scenario (shared/peers/socketio/run.sh suite), driven by the
# peer's own Node load generator, against a server started here:
#
#   bench/peers/socketioxide/run.sh                      # socketioxide, C=1000 and C=5000
#   bench/peers/socketioxide/run.sh c1000                # one scenario (c1000 | c5000)
#   bench/peers/socketioxide/run.sh custom NAME ARGS...  # ARGS go to run-scenario.js
#   SERVER=chatmesh bench/peers/socketioxide/run.sh c1000
#       # chatmesh (2 nodes, Redis broker) through the generator's `--transport ws`,
#       # so one tool measures the Node peer, socketioxide and chatmesh
#
# Each scenario: a fresh redis-server on a free loopback port, 2 server instances,
# `loadgen/run-scenario.js` with the rates, duration, saturation search and bisection
# of the peer's suite; everything started here is stopped here, by PID.
#
# Env: SERVER (socketioxide | chatmesh), OUT_DIR (bench/results/<date>/socketioxide),
#      IDLE_WAIT (60: max seconds a step waits for foreign CPU < 15 %),
#      PEER_SRC (../shared/peers/socketio next to the repository), GEN_DIR (where the
#      generator is copied and `npm ci` run, default /tmp/chatmesh-peer-socketioxide),
#      BIN (server binary; default: this crate's release build, or target/release/chatmesh),
#      NICE (0).
# Build first:
#   CARGO_TARGET_DIR=bench/peers/socketioxide/target cargo build --release \
#     --manifest-path bench/peers/socketioxide/Cargo.toml
#   cargo build --release -p chatmesh                   # for SERVER=chatmesh (TARGET=<dir>)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
SERVER=${SERVER:-socketioxide}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results/$(date +%Y-%m-%d)/socketioxide}
IDLE_WAIT=${IDLE_WAIT:-60}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peers/socketio}
GEN_DIR=${GEN_DIR:-/tmp/chatmesh-peer-socketioxide}
NICE=(nice -n "${NICE:-0}")
case "$SERVER" in
  socketioxide) BIN=${BIN:-$HERE/target/release/socketioxide-peer}; TRANSPORT=socketio ;;
  chatmesh) BIN=${BIN:-${TARGET:-$ROOT/target}/release/chatmesh}; TRANSPORT=ws ;;
  *) echo "SERVER must be socketioxide or chatmesh" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || { echo "$BIN missing: build it first (see the header of $0)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server missing" >&2; exit 1; }
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The generator is copied out of the shared tree, as bench/run-suite.sh does for the
# `peer` step, so `npm ci` and its run/ files never write into the shared checkout.
if [ ! -d "$GEN_DIR/node_modules" ]; then
  rm -rf "$GEN_DIR" && cp -r "$PEER_SRC" "$GEN_DIR"
  rm -rf "$GEN_DIR/node_modules" "$GEN_DIR/results" "$GEN_DIR/run"
  (cd "$GEN_DIR" && npm ci --no-audit --no-fund)
fi
# Server, redis and generator logs stay next to the generator: results keep JSON + md only.
RUN_DIR=$GEN_DIR/run-$SERVER
mkdir -p "$RUN_DIR"

PIDS=()        # server instances
PORTS=()
REDIS_PID=""

stop_pid() { kill "$1" 2>/dev/null || true; while kill -0 "$1" 2>/dev/null; do sleep 0.1; done; }
stop_stack() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  [ -n "$REDIS_PID" ] && stop_pid "$REDIS_PID"
  PIDS=(); PORTS=(); REDIS_PID=""
}
trap stop_stack EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timeout waiting for $1" >&2; return 1
}

start_stack() {
  local rport port i
  rport=$(free_port)
  # Not --daemonize: $! is then redis-server itself, to be stopped by that PID.
  "${NICE[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    >"$RUN_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.1; done
  for i in 0 1; do
    port=$(free_port)
    if [ "$SERVER" = socketioxide ]; then
      PORT=$port HOST=127.0.0.1 REDIS_URL="redis://127.0.0.1:$rport" \
        "${NICE[@]}" "$BIN" >"$RUN_DIR/server-$port.log" 2>&1 &
    else
      # bench/src/spawn.rs's settings: lift the per-connection publish limit (a
      # publisher sends up to 100 msg/s), warnings only, one namespace per run.
      env -u CHATMESH_CONFIG CHATMESH_NODE__ID="node-$i" CHATMESH_HTTP__LISTEN="127.0.0.1:$port" \
        CHATMESH_CLUSTER__NAMESPACE="sio-$$-$rport" CHATMESH_BROKER__KIND=redis \
        CHATMESH_BROKER__URL="redis://127.0.0.1:$rport" CHATMESH_LIMITS__PUBLISH_PER_SEC=1000000 \
        CHATMESH_LIMITS__PUBLISH_BURST=1000000 CHATMESH_LOG__LEVEL=warn NO_COLOR=1 \
        "${NICE[@]}" "$BIN" >"$RUN_DIR/server-$port.log" 2>&1 &
    fi
    PIDS+=($!)
    PORTS+=("$port")
  done
  local ready=/health; [ "$SERVER" = chatmesh ] && ready=/ready
  for port in "${PORTS[@]}"; do wait_http "http://127.0.0.1:$port$ready"; done
  echo "stack: redis pid=$REDIS_PID port=$rport; $SERVER ports=${PORTS[*]} pids=${PIDS[*]}"
}

scenario() { # name, generator args...
  local name=$1; shift
  start_stack
  local pids="s${PORTS[0]}=${PIDS[0]},s${PORTS[1]}=${PIDS[1]},redis=$REDIS_PID"
  (cd "$GEN_DIR" && "${NICE[@]}" node loadgen/run-scenario.js --idle-wait-max "$IDLE_WAIT" \
    --transport "$TRANSPORT" --ports "${PORTS[0]},${PORTS[1]}" --pids "$pids" \
    --label "$name" --out "$OUT_DIR/$name.json" "$@") 2>&1 | tee "$RUN_DIR/$name.log"
  stop_stack
}

# Rates, duration, saturation and bisection exactly as shared/peers/socketio/run.sh suite.
case "${1:-suite}" in
  c1000|suite)
    scenario "$SERVER-c1000" --clients 1000 --rates 50,200,500,1000,2000 --duration 10 --saturate --bisect 2 ;;&
  c5000|suite)
    scenario "$SERVER-c5000" --clients 5000 --rates 50,200,500,1000 --duration 10 --saturate --bisect 2 ;;&
  c1000|c5000|suite)
    (cd "$GEN_DIR" && node loadgen/report.js "$OUT_DIR/$SERVER"-c*.json) > "$OUT_DIR/$SERVER-summary.md"
    cat "$OUT_DIR/$SERVER-summary.md" ;;
  custom) shift; name=$1; shift; scenario "$SERVER-$name" "$@" ;;
  *) echo "usage: $0 [suite | c1000 | c5000 | custom NAME ARGS...]" >&2; exit 2 ;;
esac
