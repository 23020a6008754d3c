#!/usr/bin/env bash
# Starts NODES release nodes as one cluster on MongoDB + Redis, runs the load generator
# across them (device i on node i mod NODES), and stops everything it started (by PID).
# Extra arguments go to loadgen.
#   load-tests/cluster-bench.sh --devices 400 --rate 400 --duration 15
#   NODES=3 load-tests/cluster-bench.sh --devices 400 --rate 200 --json
# Environment:
#   NODES       number of nodes (default 2)
#   PORT        first node's port; node i listens on PORT+i (default: free ports)
#   SERVER_ENV  extra env for every node, e.g. "SWITCHBOARD_PERSIST_LINGER_MS=1"
#   RUST_LOG    the nodes' log filter; KEEP_LOG=<dir> keeps the nodes' logs there
#   REDIS_INFO  0: do not count commands in Redis itself (INFO commandstats)
#   BUILD=0     skip `cargo build`; BIN=<dir> takes switchboard and loadgen from <dir>
#               (default target/release), e.g. a copy kept for runs side by side
# scripts/services starts redis-server and nx-27017 on free loopback ports (or uses
# MONGODB_URI / REDIS_URL when set) and stops what it started. Every node shares one
# database name and one key prefix; each has its own port and data dir; the secrets
# (JWT key) are shared through MongoDB, the admin token through the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-2}
case "$NODES" in '' | *[!0-9]* | 0) echo "NODES must be a positive number, not $NODES" >&2; exit 2 ;; esac
BIN=${BIN:-target/release}
if [ "${BUILD:-1}" != 0 ]; then cargo build --release -q -p switchboard -p loadgen; fi
DIR=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"

PIDS=()
stop() {
  local pid alive
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # SIGTERM drains a node (sessions commit and release); give it 30 s, then SIGKILL.
  for _ in $(seq 300); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if declare -F switchboard_services_stop >/dev/null; then switchboard_services_stop; fi
  if [ -n "${KEEP_LOG:-}" ]; then { mkdir -p "$KEEP_LOG" && cp "$DIR"/node*.log "$KEEP_LOG"/; } 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap stop EXIT

# shellcheck source=../scripts/services
source scripts/services

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

PORTS=()
for i in $(seq 0 $((NODES - 1))); do
  if [ -n "${PORT:-}" ]; then p=$((PORT + i)); else p=$(free_port); fi
  if port_in_use "$p"; then echo "port $p is already in use" >&2; exit 1; fi
  PORTS+=("$p")
done

NAME="cbench_$$"
start_node() {
  local i=$1 port=${PORTS[$1]}
  mkdir -p "$DIR/node$i"
  # SERVER_ENV is split into words on purpose (several VAR=value).
  # shellcheck disable=SC2086
  env SWITCHBOARD_BIND="127.0.0.1:$port" SWITCHBOARD_ADVERTISE_URL="http://127.0.0.1:$port" \
    SWITCHBOARD_DATA_DIR="$DIR/node$i" SWITCHBOARD_CONFIG_DIR=/nonexistent \
    ADMIN_TOKEN=bench RATE_LIMIT_NORMAL=1000000000 RUST_LOG="${RUST_LOG:-warn}" \
    MONGODB_URI="$SWITCHBOARD_TEST_MONGODB_URI" REDIS_URL="$SWITCHBOARD_TEST_REDIS_URL" \
    SWITCHBOARD_MONGODB_DATABASE="$NAME" SWITCHBOARD_REDIS_PREFIX="$NAME" DB_COMMAND_METRICS=true \
    ${SERVER_ENV:-} \
    "$BIN/switchboard" serve > "$DIR/node$i.log" 2>&1 &
  PIDS[i]=$!
}
wait_healthy() {
  local i=$1 port=${PORTS[$1]}
  for _ in $(seq 150); do
    kill -0 "${PIDS[i]}" 2>/dev/null || { echo "node $i exited" >&2; cat "$DIR/node$i.log" >&2; exit 1; }
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $i not healthy on port $port" >&2; cat "$DIR/node$i.log" >&2; exit 1
}

# The first node alone first: it creates the indexes and the shared secrets.
start_node 0
wait_healthy 0
for i in $(seq 1 $((NODES - 1))); do start_node "$i"; done
for i in $(seq 1 $((NODES - 1))); do wait_healthy "$i"; done
echo "cluster: $NODES nodes on ports ${PORTS[*]} (pids ${PIDS[*]}), database and prefix $NAME" >&2

ARGS=()
for i in $(seq 0 $((NODES - 1))); do
  ARGS+=(--url "http://127.0.0.1:${PORTS[i]}" --server-pid "${PIDS[i]}")
done
if [ -n "${SWITCHBOARD_TEST_MONGODB_PID:-}" ]; then ARGS+=(--store-pid "$SWITCHBOARD_TEST_MONGODB_PID"); fi
# Redis' own command counts, when it is a loopback Redis (the one scripts/services started).
if [ "${REDIS_INFO:-1}" != 0 ]; then
  case "$SWITCHBOARD_TEST_REDIS_URL" in
    redis://127.0.0.1:* | redis://localhost:*)
      rport=${SWITCHBOARD_TEST_REDIS_URL#redis://*:}
      rport=${rport%%/*}
      case "$rport" in '' | *[!0-9]*) ;; *) ARGS+=(--redis-port "$rport") ;; esac
      ;;
  esac
fi
"$BIN/loadgen" --admin-token bench "${ARGS[@]}" "$@"
