#!/usr/bin/env bash
# Starts a release server on a fresh data dir, runs the load generator against it,
# and stops the server (by its PID). Extra arguments go to loadgen.
#   load-tests/bench.sh --devices 1000 --rate 20000 --duration 20
# Environment: PORT (default 3100), SERVER_ENV (extra env for the server, e.g.
# "SWITCHBOARD_PERSIST_LINGER_MS=1"), RUST_LOG for the server.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3100}
cargo build --release -q -p switchboard -p loadgen
DATA=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"
env SWITCHBOARD_BIND=127.0.0.1:$PORT SWITCHBOARD_DATA_DIR="$DATA" SWITCHBOARD_CONFIG_DIR=/nonexistent \
  ADMIN_TOKEN=bench RATE_LIMIT_NORMAL=1000000000 RUST_LOG="${RUST_LOG:-warn}" ${SERVER_ENV:-} \
  target/release/switchboard serve > "$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
target/release/loadgen --url "http://127.0.0.1:$PORT" --admin-token bench --server-pid "$PID" "$@"
if [ -n "${KEEP_LOG:-}" ]; then cp "$DATA/server.log" "$KEEP_LOG"; fi
