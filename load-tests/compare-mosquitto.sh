#!/usr/bin/env bash
# Switchboard against mosquitto 2.0 on this machine, driven by the same client
# (loadgen: the same WebSocket stack, pacing and bookkeeping; JSON frames for
# Switchboard, MQTT 3.1.1 QoS 1 packets for mosquitto), in alternating rounds
# (Switchboard, mosquitto, Switchboard, …), each on a freshly started server on a
# free loopback port, stopped by its PID. Prints, for both, the medians over the
# rounds of: server CPU µs per delivered message, end-to-end latency p50 / p99 /
# p99.9, loss, memory per connection, and the ratio Switchboard / mosquitto.
#
#   load-tests/compare-mosquitto.sh                      # 3 rounds each, defaults below
#   load-tests/compare-mosquitto.sh --rounds 1 --duration 5 --json
#
# Options (defaults in brackets):
#   --rounds N        rounds per server [3]
#   --clients N       connections [1000]
#   --rate R          messages per second in all [5000]
#   --payload B       padding bytes per message body [64]
#   --duration S      measured seconds [10]
#   --warmup S        seconds sent before measuring [2]
#   --idle            also measure idle memory per connection in each round
#   --idle-clients N  connections of the idle measurement [--clients]
#   --idle-hold S     seconds the idle connections are held [3]
#   --json            print the summary as one JSON object on stdout (the table goes to stderr)
#   --no-build        do not run `cargo build --release`
#   --keep DIR        keep every round's loadgen JSON and the servers' logs in DIR
#
# Switchboard runs on the embedded default (SQLite, fresh data dir per round) with the
# per-device, tenant, server-wide and per-IP limits raised (as load-tests/bench.sh
# raises RATE_LIMIT_NORMAL). mosquitto (Debian's package; installed with apt-get when
# missing) runs with persistence off, anonymous clients and no connection limit.
# Every message is acked by Switchboard only once stored (twice: sender's copy and the
# recipient's inbox), by mosquitto when received in memory: the comparison is what
# each server spends on the same traffic, not the same guarantees.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3 CLIENTS=1000 RATE=5000 PAYLOAD=64 DURATION=10 WARMUP=2
IDLE=0 IDLE_CLIENTS='' IDLE_HOLD=3 JSON=0 BUILD=1 KEEP=''
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --payload) PAYLOAD=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --idle) IDLE=1; shift ;;
    --idle-clients) IDLE_CLIENTS=$2; shift 2 ;;
    --idle-hold) IDLE_HOLD=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$ROUNDS" "$CLIENTS" "$PAYLOAD" "$IDLE_CLIENTS" "$IDLE_HOLD"; do
  case "$v" in *[!0-9]*) echo "--rounds, --clients, --payload, --idle-clients and --idle-hold take whole numbers (got $v)" >&2; exit 2 ;; esac
done
[ "$ROUNDS" -ge 1 ] || { echo "--rounds must be at least 1" >&2; exit 2; }
IDLE_CLIENTS=${IDLE_CLIENTS:-$CLIENTS}

log() { echo "compare: $*" >&2; }

if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  cargo build --release -q -p switchboard -p loadgen
fi
if ! command -v mosquitto >/dev/null 2>&1; then
  log "installing mosquitto (Debian)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >&2; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >&2
  fi
fi
MOSQUITTO=$(command -v mosquitto)
log "$("$MOSQUITTO" -h 2>/dev/null | head -1 || true)"

ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
PID=
stop_server() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    # SIGTERM: Switchboard drains (closes sockets, flushes writers); give it 15 s.
    for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
  fi
}
cleanup() {
  stop_server
  if [ -n "$KEEP" ]; then
    if mkdir -p "$KEEP"; then cp -r "$WORK"/. "$KEEP"/ 2>/dev/null || true; fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a fresh Switchboard on a free port; sets PID and PORT.
start_switchboard() {
  local name=$1
  PORT=$(free_port)
  mkdir -p "$WORK/$name"
  env SWITCHBOARD_BIND="127.0.0.1:$PORT" SWITCHBOARD_DATA_DIR="$WORK/$name" SWITCHBOARD_CONFIG_DIR=/nonexistent \
    ADMIN_TOKEN=bench RATE_LIMIT_NORMAL=1000000000 \
    SWITCHBOARD_TENANT_RATE_PER_MINUTE=0 SWITCHBOARD_GLOBAL_RATE_PER_MINUTE=0 \
    SWITCHBOARD_IP_MAX_CONNECTIONS=0 SWITCHBOARD_IP_HANDSHAKES_PER_MINUTE=0 \
    RUST_LOG="${RUST_LOG:-warn}" \
    target/release/switchboard serve > "$WORK/$name.log" 2>&1 &
  PID=$!
  for _ in $(seq 150); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; log "switchboard exited"; exit 1; }
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2; log "switchboard not healthy on port $PORT"; exit 1
}

# Starts a fresh mosquitto with a WebSocket listener on a free port; sets PID and PORT.
start_mosquitto() {
  local name=$1 plain
  PORT=$(free_port)
  plain=$(free_port)
  # mosquitto 2.0.11 (Debian 12) refuses to start with a websockets listener alone
  # ("Unable to start any listening sockets"), so a plain MQTT listener on another
  # loopback port sits beside it, unused.
  cat > "$WORK/$name.conf" <<EOF
per_listener_settings false
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 100000
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
listener $PORT 127.0.0.1
protocol websockets
listener $plain 127.0.0.1
protocol mqtt
EOF
  "$MOSQUITTO" -c "$WORK/$name.conf" > "$WORK/$name.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    port_open "$PORT" && return 0
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; log "mosquitto exited"; exit 1; }
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2; log "mosquitto not listening on port $PORT"; exit 1
}

# Runs loadgen against the server just started:
#   run_loadgen <name> <switchboard|mqtt> <scenario> <options…>
run_loadgen() {
  local name=$1 proto=$2; shift 2
  local auth=(--admin-token bench)
  [ "$proto" = mqtt ] && auth=()
  if ! target/release/loadgen --protocol "$proto" --url "http://127.0.0.1:$PORT" --server-pid "$PID" \
      "${auth[@]}" --json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err"; then
    cat "$WORK/$name.err" >&2
    log "loadgen failed ($name)"
    exit 1
  fi
  grep -E '^(acked|lost|e2e latency|server CPU|CPU/delivered|RSS/connection)' "$WORK/$name.err" | sed "s/^/  [$name] /" >&2 || true
}

start() {
  if [ "$1" = switchboard ]; then start_switchboard "$2"; else start_mosquitto "$2"; fi
}

# One round of one server: the traffic run on a fresh server, and with --idle the idle
# run on another fresh one (so neither inherits the other's allocations).
one_round() {
  local server=$1 round=$2 name="$1-$2" proto=switchboard
  [ "$server" = mosquitto ] && proto=mqtt
  start "$server" "$name"
  log "round $round: $server (pid $PID, port $PORT): $CLIENTS clients, $RATE msg/s, $PAYLOAD B, ${WARMUP}+${DURATION} s"
  run_loadgen "$name" "$proto" one-to-one --devices "$CLIENTS" --rate "$RATE" --duration "$DURATION" \
    --warmup "$WARMUP" --body-bytes "$PAYLOAD"
  stop_server
  if [ "$IDLE" = 1 ]; then
    start "$server" "$name-idle"
    log "round $round: $server idle (pid $PID): $IDLE_CLIENTS connections held ${IDLE_HOLD} s"
    run_loadgen "$name-idle" "$proto" idle --devices "$IDLE_CLIENTS" --hold "$IDLE_HOLD"
    stop_server
  fi
}

for round in $(seq "$ROUNDS"); do
  one_round switchboard "$round"
  one_round mosquitto "$round"
done

python3 - "$WORK" "$ROUNDS" "$JSON" "$CLIENTS" "$RATE" "$PAYLOAD" "$DURATION" "$WARMUP" "$IDLE" "$IDLE_CLIENTS" <<'PY'
import json, statistics, sys
work, rounds, as_json = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
clients, rate, payload, duration, warmup, idle, idle_clients = sys.argv[4:11]

def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.loads(f.read().strip().splitlines()[-1])

def figures(r, i):
    f = {
        "cpu_us_per_delivered": r.get("cpu_us_per_delivered"),
        "e2e_p50_ms": r["e2e_latency"]["p50_us"] / 1000,
        "e2e_p99_ms": r["e2e_latency"]["p99_us"] / 1000,
        "e2e_p999_ms": r["e2e_latency"]["p999_us"] / 1000,
        "ack_p50_ms": r["ack_latency"]["p50_us"] / 1000,
        "ack_p99_ms": r["ack_latency"]["p99_us"] / 1000,
        "acked_per_sec": r["msgs_per_sec"],
        "sent": r["sent"],
        "delivered": r["delivered"],
        "lost": r["lost"],
        "unacked": r["unacked"],
        "errored": r["errored"],
        "loss_pct": 100.0 * (r["lost"] + r["unacked"] + r["errored"]) / max(r["sent"], 1),
        "rss_per_connection_kib": r["server_rss"].get("per_connection_kib"),
    }
    if i is not None:
        f["idle_rss_per_connection_kib"] = i["server_rss"].get("per_connection_kib")
    return f

servers = {}
for server in ("switchboard", "mosquitto"):
    runs = []
    for n in range(1, rounds + 1):
        idle_run = load(f"{server}-{n}-idle") if idle == "1" else None
        runs.append(figures(load(f"{server}-{n}"), idle_run))
    med = {}
    for k in runs[0]:
        vals = [r[k] for r in runs if r[k] is not None]
        med[k] = round(statistics.median(vals), 3) if vals else None
    servers[server] = {"rounds": runs, "median": med}

sb, mq = servers["switchboard"]["median"], servers["mosquitto"]["median"]
ratio = {k: (round(sb[k] / mq[k], 2) if sb[k] is not None and mq[k] not in (None, 0) else None) for k in sb}
summary = {
    "params": {"rounds": rounds, "clients": int(clients), "rate": float(rate), "payload_bytes": int(payload),
               "duration_s": float(duration), "warmup_s": float(warmup),
               "idle_clients": int(idle_clients) if idle == "1" else None},
    "switchboard": servers["switchboard"], "mosquitto": servers["mosquitto"],
    "ratio_switchboard_over_mosquitto": ratio,
}

rows = [
    ("server CPU per delivered message (µs)", "cpu_us_per_delivered", "{:.1f}"),
    ("end-to-end p50 (ms)", "e2e_p50_ms", "{:.2f}"),
    ("end-to-end p99 (ms)", "e2e_p99_ms", "{:.2f}"),
    ("end-to-end p99.9 (ms)", "e2e_p999_ms", "{:.2f}"),
    ("ack p50 (ms)", "ack_p50_ms", "{:.2f}"),
    ("ack p99 (ms)", "ack_p99_ms", "{:.2f}"),
    ("acked msg/s", "acked_per_sec", "{:.0f}"),
    ("lost + unacked + refused (%)", "loss_pct", "{:.3f}"),
    ("RSS per connection, connected (KiB)", "rss_per_connection_kib", "{:.2f}"),
]
if idle == "1":
    rows.append((f"RSS per idle connection, {idle_clients} held (KiB)", "idle_rss_per_connection_kib", "{:.2f}"))
fmt = lambda f, v: "?" if v is None else f.format(v)
out = sys.stderr if as_json else sys.stdout
print(f"\n=== Switchboard vs mosquitto: {clients} clients, {rate} msg/s, {payload} B, "
      f"{warmup}+{duration} s, median of {rounds} round(s) each ===", file=out)
print(f"{'':40} {'switchboard':>12} {'mosquitto':>12} {'ratio SB/MQ':>12}", file=out)
for label, k, f in rows:
    print(f"{label:40} {fmt(f, sb[k]):>12} {fmt(f, mq[k]):>12} {fmt('{:.2f}', ratio[k]):>12}", file=out)
for server in ("switchboard", "mosquitto"):
    per = ", ".join(fmt("{:.1f}", r["cpu_us_per_delivered"]) for r in servers[server]["rounds"])
    p99 = ", ".join(fmt("{:.2f}", r["e2e_p99_ms"]) for r in servers[server]["rounds"])
    print(f"  {server}: CPU µs/msg per round {per}; p99 ms per round {p99}", file=out)
if as_json:
    print(json.dumps(summary))
PY
