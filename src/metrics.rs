//! `GET /metrics`: Prometheus text exposition, rendered by `metrics-exporter-prometheus`
//! inside an actix handler (no exporter HTTP listener, no push gateway).
//!
//! The recorder is process-global (the `metrics` facade has one global recorder):
//! [`install`] builds it once per process and keeps its handle in a `OnceLock`, so tests
//! that start several servers in one process share it. Counters and histograms are
//! updated where things happen (pre-registered handles, see `actors::metrics`), so they
//! sum over every server of the process. Gauges that are cheap to read but costly to
//! track (sessions running, writer backlogs, cache sizes, queue lane depths) are set at scrape time from
//! the scraped server's state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};
use actix_web::{get, web, HttpResponse};
use actors::metrics::names as actor_names;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Families owned by the transport and the scrape.
pub mod names {
    /// Open WebSocket connections (gauge).
    pub const CONNECTIONS: &str = "switchboard_connections";
    /// WebSocket frames received (counter).
    pub const WS_FRAMES_IN: &str = "switchboard_ws_frames_in_total";
    /// WebSocket frames sent (counter).
    pub const WS_FRAMES_OUT: &str = "switchboard_ws_frames_out_total";
    /// Running device sessions (gauge).
    pub const SESSIONS: &str = "switchboard_sessions_running";
    /// Rows waiting in a writer's batch (gauge, `writer`).
    pub const WRITER_BACKLOG: &str = "switchboard_persist_backlog_rows";
    /// Messages in an actor's mailbox (gauge, `actor`).
    pub const MAILBOX_DEPTH: &str = "switchboard_mailbox_depth";
    /// Queued jobs (waiting + delayed) per dispatcher lane (gauge, `lane`).
    pub const QUEUE_DEPTH: &str = "switchboard_queue_depth";
    /// Jobs in flight per dispatcher lane (gauge, `lane`).
    pub const QUEUE_ACTIVE: &str = "switchboard_queue_active";
    /// Whether a dispatcher lane is paused, 1 or 0 (gauge, `lane`).
    pub const QUEUE_PAUSED: &str = "switchboard_queue_paused";
    /// Commands sent to Redis by the cache layer (counter).
    pub const REDIS_COMMANDS: &str = "switchboard_redis_commands_total";
    /// Whether a dependency answers, 1 or 0 (gauge, `dependency`: `store`, `redis`).
    pub const DEPENDENCY_UP: &str = "switchboard_dependency_up";
    /// Store calls, by operation and outcome (counter, `op`, `ok`).
    pub const STORE_CALLS: &str = "switchboard_store_calls_total";
    /// Commands sent to MongoDB, by command name, with `DB_COMMAND_METRICS=true`
    /// (counter, `command`): the round trips.
    pub const MONGODB_COMMANDS: &str = "switchboard_mongodb_commands_total";
    /// Webhook attempts by endpoint and result: `delivered`, `retried`, `dead`
    /// (counter, `endpoint`, `result`).
    pub const WEBHOOK_DELIVERIES: &str = "switchboard_webhook_deliveries_total";
    /// Duration of webhook attempts (histogram, `endpoint`).
    pub const WEBHOOK_LATENCY: &str = "switchboard_webhook_attempt_seconds";
    /// An endpoint's circuit breaker on this node: 0 closed, 1 open (half-open, while
    /// one probe is allowed, included) (gauge, `endpoint`).
    pub const WEBHOOK_BREAKER: &str = "switchboard_webhook_breaker_state";
    /// Open (pending + sending) deliveries in the outbox (gauge, `endpoint`).
    pub const WEBHOOK_OUTBOX_DEPTH: &str = "switchboard_webhook_outbox_depth";
}

/// Latency buckets (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Batch-size buckets (rows).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Transport instruments, registered right after the recorder is installed.
#[derive(Debug)]
pub struct WsMetrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Frames received.
    pub frames_in: Counter,
    /// Frames sent.
    pub frames_out: Counter,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static WS: OnceLock<WsMetrics> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls return the
/// same handle). Must run before the actor environment is built, so the actors'
/// pre-registered handles reach the recorder.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(actor_names::BATCH_SIZE.into()),
                    BATCH_BUCKETS,
                )
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Only on empty bucket lists, which are constants above.
            Err(e) => {
                tracing::error!(error = %e, "metrics buckets rejected; histograms become summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only ours");
        }
        describe();
        let _ = WS.set(WsMetrics {
            connections: gauge!(names::CONNECTIONS),
            frames_in: counter!(names::WS_FRAMES_IN),
            frames_out: counter!(names::WS_FRAMES_OUT),
        });
        // Histogram samples are buffered until drained: drain them even when nobody
        // scrapes, so memory stays bounded.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the metrics upkeep thread");
        }
        handle
    })
}

/// The transport instruments (no-ops before [`install`]).
pub fn ws() -> &'static WsMetrics {
    WS.get_or_init(|| WsMetrics {
        connections: Gauge::noop(),
        frames_in: Counter::noop(),
        frames_out: Counter::noop(),
    })
}

fn describe() {
    actors::metrics::describe();
    describe_gauge!(names::CONNECTIONS, "Open WebSocket connections.");
    describe_counter!(
        names::WS_FRAMES_IN,
        "WebSocket frames received from clients."
    );
    describe_counter!(names::WS_FRAMES_OUT, "WebSocket frames sent to clients.");
    describe_gauge!(
        names::SESSIONS,
        "Device sessions running (set at scrape time)."
    );
    describe_gauge!(
        names::WRITER_BACKLOG,
        "Rows waiting in a persistence writer's open batch, by writer."
    );
    describe_gauge!(
        names::MAILBOX_DEPTH,
        "Messages waiting in an actor's mailbox, by actor (persistence writers; sessions' \
         mailboxes are not counted on the hot path)."
    );
    describe_gauge!(
        names::QUEUE_DEPTH,
        "Queued jobs (waiting + delayed) per dispatcher lane (set at scrape time)."
    );
    describe_gauge!(
        names::QUEUE_ACTIVE,
        "Jobs in flight per dispatcher lane (set at scrape time)."
    );
    describe_gauge!(
        names::QUEUE_PAUSED,
        "1 when an operator paused the dispatcher lane, else 0."
    );
    describe_counter!(
        names::REDIS_COMMANDS,
        "Commands the cache layer sent to Redis (round trips)."
    );
    describe_gauge!(
        names::DEPENDENCY_UP,
        "1 when a dependency (store, redis) answered its last check, else 0."
    );
    describe_counter!(
        names::STORE_CALLS,
        "Store calls by operation and outcome (each one round trip or more to the backend)."
    );
    describe_counter!(
        names::MONGODB_COMMANDS,
        "Commands sent to MongoDB by name (round trips), when DB_COMMAND_METRICS is on."
    );
    describe_counter!(
        names::WEBHOOK_DELIVERIES,
        "Webhook attempts by endpoint and result (delivered, retried, dead)."
    );
    ::metrics::describe_histogram!(
        names::WEBHOOK_LATENCY,
        "Duration of webhook attempts by endpoint (seconds)."
    );
    describe_gauge!(
        names::WEBHOOK_BREAKER,
        "Webhook circuit breaker per endpoint on this node: 0 closed, 1 open (or half-open)."
    );
    describe_gauge!(
        names::WEBHOOK_OUTBOX_DEPTH,
        "Open (pending + sending) webhook deliveries per endpoint."
    );
}

/// Endpoints whose outbox depth gauge was set (set to 0 once their outbox empties).
static WEBHOOK_DEPTH_LABELS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Sets the webhook outbox depth per endpoint: one grouped count over the open
/// deliveries (a partial index on both stores).
async fn refresh_webhook_gauges(state: &AppState) {
    let depths = match state.env.store.webhook_outbox_depths().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "webhook outbox depths unavailable for /metrics");
            return;
        }
    };
    let Ok(mut labels) = WEBHOOK_DEPTH_LABELS.lock() else {
        return;
    };
    for gone in labels
        .iter()
        .filter(|l| !depths.iter().any(|(e, _)| e == *l))
    {
        gauge!(names::WEBHOOK_OUTBOX_DEPTH, "endpoint" => gone.clone()).set(0.0);
    }
    labels.clear();
    for (endpoint, n) in depths {
        gauge!(names::WEBHOOK_OUTBOX_DEPTH, "endpoint" => endpoint.clone()).set(n as f64);
        labels.push(endpoint);
    }
}

/// Sets the dispatcher lane gauges: depth from one grouped COUNT over a partial index,
/// in-flight and paused from the dispatcher's counters.
async fn refresh_queue_gauges(state: &AppState) {
    let depths = match state.env.store.lane_depths().await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "queue depths unavailable for /metrics");
            None
        }
    };
    for l in state.env.dispatcher.lanes() {
        let lane = crate::http::queues::lane_name(l.lane);
        if let Some(d) = depths {
            gauge!(names::QUEUE_DEPTH, "lane" => lane).set(d[l.lane.index()] as f64);
        }
        gauge!(names::QUEUE_ACTIVE, "lane" => lane).set(l.active as f64);
        gauge!(names::QUEUE_PAUSED, "lane" => lane).set(if l.paused { 1.0 } else { 0.0 });
    }
}

/// Sets the gauges that are read from the server's state at scrape time.
fn refresh_gauges(state: &AppState) {
    let env = &state.env;
    gauge!(names::SESSIONS).set(env.directory.running_count() as f64);
    for (slot, stats) in env.persistence.stats.iter().enumerate() {
        let backlog = stats.backlog.load(std::sync::atomic::Ordering::Relaxed);
        let mailbox = stats.mailbox.load(std::sync::atomic::Ordering::Relaxed);
        gauge!(names::WRITER_BACKLOG, "writer" => slot.to_string()).set(backlog as f64);
        gauge!(names::MAILBOX_DEPTH, "actor" => format!("persistence:writer:{slot}"))
            .set(mailbox as f64);
    }
    gauge!(actor_names::CACHE_ENTRIES, "kind" => "all", "layer" => "memory")
        .set(env.cache.memory_len() as f64);
    if let Some((_, ok)) = env.cache.remote_healthy() {
        gauge!(names::DEPENDENCY_UP, "dependency" => "redis").set(if ok { 1.0 } else { 0.0 });
    }
}

/// `GET /metrics`: Prometheus text format (version 0.0.4), every family with HELP and
/// TYPE. Unauthenticated, like `/health`, so Prometheus can scrape it.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
#[get("/metrics")]
pub async fn prometheus(state: web::Data<AppState>) -> HttpResponse {
    refresh_gauges(&state);
    refresh_queue_gauges(&state).await;
    refresh_webhook_gauges(&state).await;
    let body = install().render();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

/// Records whether a dependency (`store`, `redis`) answered its last check.
pub fn dependency_up(dependency: &'static str, up: bool) {
    gauge!(names::DEPENDENCY_UP, "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

/// Counts one open WebSocket connection in the connections gauge while it lives.
pub struct OpenConnection(Arc<actors::Env>);

impl std::fmt::Debug for OpenConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenConnection")
    }
}

impl OpenConnection {
    /// Counts a connection that just attached (in `/metrics` and the node's load).
    pub fn open(env: &Arc<actors::Env>) -> Self {
        ws().connections.increment(1.0);
        env.stats.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(env.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        ws().connections.decrement(1.0);
        self.0.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
