#!/usr/bin/env bash
# Starts a release server on a fresh data dir, runs the load generator against it,
# and stops the server (by its PID). Extra arguments go to loadgen (a scenario name
# first, if not one-to-one: `load-tests/bench.sh fan-out --group-size 256`). Every
# rate and connection limit is lifted: all traffic comes from one loopback address.
#   load-tests/bench.sh --devices 1000 --rate 20000 --duration 20
# Environment:
#   PORT        server port (default 3100)
#   BACKEND     `embedded` (default: SQLite, in-process cache) or `mongodb` (MongoDB +
#               Redis: scripts/services starts redis-server and nx-27017 on free ports,
#               or uses MONGODB_URI / REDIS_URL when set, and stops what it started)
#   SERVER_ENV  extra env for the server, e.g. "SWITCHBOARD_PERSIST_LINGER_MS=1"
#   SERVER_BIN  run this server binary instead of building target/release/switchboard
#               (to compare two builds side by side: build each, copy it, alternate)
#   RUST_LOG    the server's log filter; KEEP_LOG=<file> keeps the server's log
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3100}
BACKEND=${BACKEND:-embedded}
if [ -n "${SERVER_BIN:-}" ]; then
  [ -x "$SERVER_BIN" ] || { echo "SERVER_BIN=$SERVER_BIN is not an executable" >&2; exit 2; }
  cargo build --release -q -p loadgen
else
  cargo build --release -q -p switchboard -p loadgen
  SERVER_BIN=target/release/switchboard
fi
DATA=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"
BACKEND_ENV=()
case "$BACKEND" in
  embedded) ;;
  mongodb)
    # shellcheck source=../scripts/services
    source scripts/services
    BACKEND_ENV=(MONGODB_URI="$SWITCHBOARD_TEST_MONGODB_URI" REDIS_URL="$SWITCHBOARD_TEST_REDIS_URL"
      SWITCHBOARD_MONGODB_DATABASE="bench_$$" SWITCHBOARD_REDIS_PREFIX="bench$$" DB_COMMAND_METRICS=true)
    ;;
  *) echo "BACKEND must be embedded or mongodb, not $BACKEND" >&2; exit 2 ;;
esac
PID=
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  # Kept also when loadgen failed (a stalled run is when the log matters most).
  if [ -n "${KEEP_LOG:-}" ]; then cp "$DATA/server.log" "$KEEP_LOG" || true; fi
  if [ "$BACKEND" = mongodb ]; then switchboard_services_stop; fi
  rm -rf "$DATA"
}
trap stop EXIT
env SWITCHBOARD_BIND=127.0.0.1:$PORT SWITCHBOARD_DATA_DIR="$DATA" SWITCHBOARD_CONFIG_DIR=/nonexistent \
  ADMIN_TOKEN=bench RATE_LIMIT_NORMAL=1000000000 RUST_LOG="${RUST_LOG:-warn}" \
  SWITCHBOARD_TENANT_RATE_PER_MINUTE=0 SWITCHBOARD_GLOBAL_RATE_PER_MINUTE=0 \
  SWITCHBOARD_IP_MAX_CONNECTIONS=0 SWITCHBOARD_IP_HANDSHAKES_PER_MINUTE=0 \
  "${BACKEND_ENV[@]}" ${SERVER_ENV:-} \
  "$SERVER_BIN" serve > "$DATA/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$DATA/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not healthy" >&2; cat "$DATA/server.log" >&2; exit 1; }
STORE_PID=()
if [ -n "${SWITCHBOARD_TEST_MONGODB_PID:-}" ]; then STORE_PID=(--store-pid "$SWITCHBOARD_TEST_MONGODB_PID"); fi
target/release/loadgen --url "http://127.0.0.1:$PORT" --admin-token bench --server-pid "$PID" \
  "${STORE_PID[@]}" "$@"
