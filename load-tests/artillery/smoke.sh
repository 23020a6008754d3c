#!/usr/bin/env bash
# Smoke run of the artillery scenarios: starts a server on a free loopback port with a
# fresh data dir, runs each scenario with its small `smoke` environment (a few seconds,
# a handful of virtual users), and stops the server (by its PID) at the end.
# Fails (exit 1) when any scenario fails: artillery exits non-zero when a virtual user
# failed, an error was counted or a check did not hold (each file's `ensure` block).
#   load-tests/artillery/smoke.sh                     # all four scenarios
#   load-tests/artillery/smoke.sh ws-reconnect.yml    # some of them
# Environment:
#   SWITCHBOARD_BIN  server binary, relative to the repository root or absolute
#                    (default target/debug/switchboard; built with
#                    `cargo build -p switchboard` when missing)
#   SERVER_ENV       extra settings for the server, e.g. "RATE_LIMIT_NORMAL=600"; it
#                    gets a clean environment otherwise (the embedded SQLite store and
#                    the default limits, even when the caller has MONGODB_URI,
#                    REDIS_URL or SWITCHBOARD_* set)
#   RUST_LOG         the server's log filter (default warn); KEEP_LOG=<file> keeps its log
# Installs artillery into load-tests/artillery/node_modules with `npm ci` (no browser
# download) when it is missing or older than package-lock.json. Artillery's telemetry
# is turned off: apart from that npm download, nothing goes anywhere but to the
# server on 127.0.0.1.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(ws-messaging.yml ws-reconnect.yml bulk-send.yml contact-sync.yml)
fi
for s in "${SCENARIOS[@]}"; do
  [ -f "$HERE/$s" ] || { echo "smoke: no scenario $HERE/$s" >&2; exit 2; }
done

for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "smoke: $tool is needed (Node.js 20+ with npm, curl)" >&2; exit 1; }
done

BIN="${SWITCHBOARD_BIN:-target/debug/switchboard}"
if [ ! -x "$BIN" ]; then
  echo "smoke: $BIN missing; cargo build -p switchboard" >&2
  cargo build -q -p switchboard
  [ -x "$BIN" ] || { echo "smoke: $BIN still missing after the build (set SWITCHBOARD_BIN)" >&2; exit 1; }
fi

if [ ! -x "$HERE/node_modules/.bin/artillery" ] ||
  [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
  echo "smoke: installing artillery (npm ci, no browser download)"
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
    { echo "smoke: npm ci failed in $HERE" >&2; exit 1; }
fi

DATA=$(mktemp -d)
PID=
stop() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    # The server drains on SIGTERM; give it 10 s, then kill it.
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  if [ -n "${KEEP_LOG:-}" ] && [ -f "$DATA/server.log" ]; then cp "$DATA/server.log" "$KEEP_LOG"; fi
  rm -rf "$DATA"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ADMIN_TOKEN="smoke-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# A clean environment: the embedded store whatever MONGODB_URI / REDIS_URL /
# SWITCHBOARD_* the caller has set (SERVER_ENV adds settings on purpose). Port 0: the
# server picks a free port and prints it.
# shellcheck disable=SC2086 # SERVER_ENV is a list of VAR=value words
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
  SWITCHBOARD_BIND=127.0.0.1:0 SWITCHBOARD_DATA_DIR="$DATA" SWITCHBOARD_CONFIG_DIR=/nonexistent \
  ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="${RUST_LOG:-warn}" ${SERVER_ENV:-} \
  "$BIN" serve > "$DATA/server.log" 2>&1 &
PID=$!

server_failed() {
  echo "smoke: $*; server log:" >&2
  tail -n 50 "$DATA/server.log" >&2 || true
  exit 1
}
URL=
for _ in $(seq 300); do
  URL=$(sed -n 's/.*Switchboard listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$DATA/server.log" | head -n 1)
  [ -n "$URL" ] && break
  kill -0 "$PID" 2>/dev/null || server_failed "the server exited"
  sleep 0.1
done
[ -n "$URL" ] || server_failed "the server printed no address within 30 s"
for _ in $(seq 100); do
  curl -fsS "$URL/health" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || server_failed "the server exited"
  sleep 0.1
done
curl -fsS "$URL/health" >/dev/null || server_failed "$URL/health did not answer 200 within 10 s"
echo "smoke: server $PID on $URL"

export TARGET="$URL" ADMIN_TOKEN ARTILLERY_DISABLE_TELEMETRY=1
FAILED=()
RESULTS=()
for s in "${SCENARIOS[@]}"; do
  echo
  echo "==> artillery run -e smoke $s"
  started=$SECONDS
  rc=0
  # Bounded: a smoke scenario takes seconds; 120 s means something hangs.
  (cd "$HERE" && timeout -k 5 120 node_modules/.bin/artillery run --environment smoke "$s") || rc=$?
  RESULTS+=("$(printf '%-18s %s (%d s)' "$s" "$([ $rc -eq 0 ] && echo ok || echo "FAILED, exit $rc")" $((SECONDS - started)))")
  if [ $rc -ne 0 ]; then FAILED+=("$s"); fi
done

echo
echo "smoke results:"
printf '  %s\n' "${RESULTS[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "smoke: FAILED: ${FAILED[*]} (see its summary and checks above)" >&2
  echo "smoke: server log (last 30 lines):" >&2
  tail -n 30 "$DATA/server.log" >&2 || true
  exit 1
fi
echo "smoke: all ${#SCENARIOS[@]} scenarios passed"
