//! Configuration: `config/default.toml` < `config/<profile>.toml` < environment.
//!
//! Environment names: `SWITCHBOARD_<FIELD>` for every field (e.g. `SWITCHBOARD_BIND`,
//! `SWITCHBOARD_DATA_DIR`), and the replaced system's names as they are
//! (`ADMIN_TOKEN`, `RATE_LIMIT_NORMAL`, `REDIS_HOST`, `DB_MAX_POOL_SIZE`, …).

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Every setting of the server. Field names are the lower-case environment names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on (`SWITCHBOARD_BIND`); port 0 picks a free one.
    pub bind: String,
    /// Where the embedded store, admin token and signing secret live.
    pub data_dir: PathBuf,
    /// Admin bearer token; generated and kept in the data dir when unset.
    pub admin_token: Option<String>,
    /// Device-token signing secret; generated and kept in the data dir when unset.
    pub jwt_secret: Option<String>,
    /// Default device-token lifetime.
    pub token_ttl_secs: u64,
    /// Largest message body (bytes), on every transport: a bigger `body` is refused
    /// with `too_large` (REST 413, WebSocket `error`).
    pub max_message_bytes: usize,
    /// Largest accepted WebSocket frame (bytes); larger ones close with 1009. Leaves
    /// room for a body of `max_message_bytes` and the frame around it.
    pub max_frame_bytes: usize,
    /// Largest REST request body (bytes) outside the bulk and contacts routes.
    pub max_request_bytes: usize,
    /// Largest `POST /v1/messages/bulk` body (bytes).
    pub max_bulk_bytes: usize,
    /// Largest `PUT /v1/devices/{id}/contacts` body (bytes).
    pub max_contacts_bytes: usize,
    /// Largest `POST /v1/media` upload (bytes); a larger one is refused with 413.
    pub max_media_bytes: u64,
    /// Server ping period; a client silent for two periods is dropped.
    pub heartbeat_ms: u64,
    /// Frames buffered per connection in its channel (more wait in an overflow queue).
    pub outbound_buffer: usize,
    /// A client with frames waiting that reads nothing for this long is cut off (4408).
    pub slow_consumer_ms: u64,
    /// A device session with no client stops after this long.
    pub session_idle_secs: u64,
    /// The same in milliseconds, when set (takes precedence; for tests).
    pub session_idle_ms: Option<u64>,
    /// Per-device critical-tier budget per minute.
    pub rate_limit_critical: u32,
    /// Per-device high-tier budget per minute.
    pub rate_limit_high: u32,
    /// Per-device normal-tier budget per minute.
    pub rate_limit_normal: u32,
    /// Per-device low-tier budget per minute.
    pub rate_limit_low: u32,
    /// Per-device budget of message ids in `receipt` frames, per minute.
    pub rate_limit_receipts: u32,
    /// Per-device budget of `typing` frames, per minute.
    pub rate_limit_typing: u32,
    /// Per-device budget of `sync` frames, per minute.
    pub rate_limit_sync: u32,
    /// Per-tenant budget per minute over all its devices (0: unlimited).
    pub tenant_rate_per_minute: u32,
    /// Server-wide budget per minute (0: unlimited).
    pub global_rate_per_minute: u32,
    /// Per device→recipient budget per minute (0: off; WhatsApp allows about 10).
    pub pair_rate_per_minute: u32,
    /// Queue aging (ms): a queued job counts one lane higher per this long waited.
    pub queue_aging_ms: u64,
    /// Fair queuing (virtual ms): each job of a tenant queues this far behind its
    /// previous one in the same lane, so one tenant's backlog never holds back another.
    pub queue_fair_spacing_ms: u64,
    /// Finished jobs are deleted this long after they finished (seconds).
    pub job_retention_secs: u64,
    /// Supervisors escalate when a child failed more than this many times…
    pub supervisor_max_restarts: u32,
    /// …within this many seconds.
    pub supervisor_period_secs: u64,
    /// First restart backoff (ms); doubled per recent failure.
    pub supervisor_backoff_min_ms: u64,
    /// Longest restart backoff (ms).
    pub supervisor_backoff_max_ms: u64,
    /// Origins allowed to open WebSockets (the `Origin` header); empty: any. A
    /// handshake with another origin is refused with 403.
    pub ws_allowed_origins: Vec<String>,
    /// Origins allowed to call the REST API from a browser (CORS); empty: none.
    pub cors_allowed_origins: Vec<String>,
    /// Open WebSockets per client IP at most (0: unlimited).
    pub ip_max_connections: u32,
    /// WebSocket handshakes per client IP per minute at most (0: unlimited).
    pub ip_handshakes_per_minute: u32,
    /// Rows per group-commit batch, at most.
    pub persist_batch_max: usize,
    /// Group-commit linger (ms).
    pub persist_linger_ms: u64,
    /// Number of persistence writer actors.
    pub persist_writers: usize,
    /// `normal` (survives a process kill) or `full` (also survives power loss).
    pub sqlite_synchronous: String,
    /// Store operations slower than this (ms) are kept for `/admin/db/stats`
    /// (the last 1,000); 0 records every operation.
    pub slow_query_ms: u64,
    /// `pretty` or `json`.
    pub log_format: String,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// Seconds to wait for in-flight HTTP requests on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Enables test-only hooks such as panic injection. Never in production.
    pub test_hooks: bool,
    /// Idempotency window: request ids remembered per device.
    pub idempotency_window: usize,
    /// MongoDB URI: set, the store is MongoDB; unset, the embedded SQLite file.
    pub mongodb_uri: Option<String>,
    /// MongoDB database (default: the URI's, else `switchboard`).
    pub mongodb_database: Option<String>,
    /// MongoDB write concern `w` (`majority`, a number, a tag set).
    pub mongodb_write_concern: String,
    /// Whether MongoDB writes wait for the journal.
    pub mongodb_journal: bool,
    /// MongoDB read concern level (`majority`, `local`, …).
    pub mongodb_read_concern: String,
    /// Redis URL: set (or `REDIS_HOST`…), Redis is the shared cache layer.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel of this deployment (several deployments
    /// may share one Redis).
    pub redis_prefix: String,
    /// Where other nodes and operators reach this node's HTTP API (default: the bound
    /// address); shown in `/admin`.
    pub advertise_url: Option<String>,
    /// Cluster: how often a node renews its lease (ms).
    pub cluster_heartbeat_ms: u64,
    /// Cluster: how long a node's lease holds (ms); a dead node's devices are taken
    /// over after it (plus the skew).
    pub cluster_lease_ms: u64,
    /// Cluster: the clock skew tolerated between nodes (ms).
    pub cluster_skew_ms: u64,
    /// Cluster: how long a call to another node waits for its answer (ms).
    pub cluster_call_timeout_ms: u64,
    /// Cluster: most rows of one device per commit batch; a takeover fences as many.
    pub cluster_fence_rows: usize,
    /// A send that cannot be completed within this long is answered `unavailable` (ms).
    pub send_timeout_ms: u64,
    /// Legacy Redis settings, accepted as they are.
    pub redis_host: Option<String>,
    /// Legacy Redis port.
    pub redis_port: Option<u16>,
    /// Legacy Redis password.
    pub redis_password: Option<String>,
    /// Legacy Redis database.
    pub redis_db: Option<u32>,
    /// Legacy Redis queue database.
    pub redis_queue_db: Option<u32>,
    /// Legacy MongoDB pool settings.
    pub db_max_pool_size: Option<u32>,
    /// Legacy MongoDB pool minimum.
    pub db_min_pool_size: Option<u32>,
    /// Legacy MongoDB idle time (ms).
    pub db_max_idle_time: Option<u64>,
    /// Legacy MongoDB server selection timeout (ms).
    pub db_server_selection_timeout: Option<u64>,
    /// Legacy MongoDB socket timeout (ms).
    pub db_socket_timeout: Option<u64>,
    /// Legacy MongoDB connect timeout (ms).
    pub db_connect_timeout: Option<u64>,
    /// Legacy: create indexes on start.
    pub db_auto_index: Option<bool>,
    /// Count every command sent to MongoDB in `/metrics`
    /// (`switchboard_mongodb_commands_total`); off by default, since the driver then
    /// copies each command for its monitoring event.
    pub db_command_metrics: bool,
    /// Queue workers for messages.
    pub queue_message_concurrency: Option<u32>,
    /// Queue workers for contact syncs.
    pub queue_contact_concurrency: Option<u32>,
    /// Attempts per queued job.
    pub queue_default_attempts: Option<u32>,
    /// Cache TTL of user sessions (s).
    pub cache_ttl_user_session: Option<u64>,
    /// Cache TTL of contacts (s).
    pub cache_ttl_whatsapp_contacts: Option<u64>,
    /// Cache TTL of device status (s).
    pub cache_ttl_device_status: Option<u64>,
    /// Cache TTL of groups (s; default 1800).
    pub cache_ttl_groups: Option<u64>,
    /// Cache TTL of tenant metadata (s; default 7200).
    pub cache_ttl_tenants: Option<u64>,
    /// Cache TTL of finished days' message statistics (s; default 86400).
    pub cache_ttl_stats: Option<u64>,
    /// Most entries in the in-process cache.
    pub cache_max_items: usize,
    /// Webhooks: attempts per delivery before it becomes a dead letter (1–100).
    pub webhook_max_attempts: u32,
    /// Webhooks: the first retry waits about this long (ms); doubled per attempt, with
    /// jitter.
    pub webhook_backoff_base_ms: u64,
    /// Webhooks: the longest wait between attempts (ms).
    pub webhook_backoff_max_ms: u64,
    /// Webhooks: one attempt may take this long in all (ms), connecting included.
    pub webhook_timeout_ms: u64,
    /// Webhooks: connecting to a receiver may take this long (ms).
    pub webhook_connect_timeout_ms: u64,
    /// Webhooks: deliveries in flight at once on this node.
    pub webhook_concurrency: usize,
    /// Webhooks: consecutive failures that open an endpoint's circuit breaker.
    pub webhook_breaker_failures: u32,
    /// Webhooks: how long an open breaker waits before one probe (ms).
    pub webhook_breaker_cooldown_ms: u64,
    /// Webhooks: how often the outbox is polled when nothing wakes the sender (ms).
    pub webhook_poll_ms: u64,
    /// Webhooks: delivered and dropped deliveries are deleted this long after (s).
    pub webhook_retention_secs: u64,
    /// Webhooks: how long a tenant's endpoint list is cached (ms).
    pub webhook_endpoint_cache_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:3000".into(),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            jwt_secret: None,
            token_ttl_secs: 24 * 3600,
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 80 * 1024,
            max_request_bytes: 64 * 1024,
            max_bulk_bytes: 16 * 1024 * 1024,
            max_contacts_bytes: 16 * 1024 * 1024,
            max_media_bytes: 16 * 1024 * 1024,
            heartbeat_ms: 30_000,
            outbound_buffer: 1024,
            slow_consumer_ms: 2000,
            session_idle_secs: 60,
            session_idle_ms: None,
            rate_limit_critical: 200,
            rate_limit_high: 100,
            rate_limit_normal: 60,
            rate_limit_low: 30,
            rate_limit_receipts: 6000,
            rate_limit_typing: 600,
            rate_limit_sync: 1200,
            tenant_rate_per_minute: 6_000_000,
            global_rate_per_minute: 12_000_000,
            pair_rate_per_minute: 0,
            queue_aging_ms: 10_000,
            queue_fair_spacing_ms: 1,
            job_retention_secs: 7 * 24 * 3600,
            supervisor_max_restarts: 5,
            supervisor_period_secs: 10,
            supervisor_backoff_min_ms: 10,
            supervisor_backoff_max_ms: 2000,
            ws_allowed_origins: Vec::new(),
            cors_allowed_origins: Vec::new(),
            ip_max_connections: 10_000,
            ip_handshakes_per_minute: 30_000,
            persist_batch_max: 2048,
            persist_linger_ms: 1,
            persist_writers: 1,
            sqlite_synchronous: "normal".into(),
            slow_query_ms: 100,
            log_format: "pretty".into(),
            workers: 0,
            shutdown_timeout_secs: 5,
            test_hooks: false,
            idempotency_window: 1024,
            mongodb_uri: None,
            mongodb_database: None,
            mongodb_write_concern: "majority".into(),
            mongodb_journal: true,
            mongodb_read_concern: "majority".into(),
            redis_url: None,
            redis_prefix: "sb".into(),
            advertise_url: None,
            cluster_heartbeat_ms: 1000,
            cluster_lease_ms: 6000,
            cluster_skew_ms: 1000,
            cluster_call_timeout_ms: 10_000,
            cluster_fence_rows: 64,
            send_timeout_ms: 30_000,
            redis_host: None,
            redis_port: None,
            redis_password: None,
            redis_db: None,
            redis_queue_db: None,
            db_max_pool_size: None,
            db_min_pool_size: None,
            db_max_idle_time: None,
            db_server_selection_timeout: None,
            db_socket_timeout: None,
            db_connect_timeout: None,
            db_auto_index: None,
            db_command_metrics: false,
            queue_message_concurrency: None,
            queue_contact_concurrency: None,
            queue_default_attempts: None,
            cache_ttl_user_session: None,
            cache_ttl_whatsapp_contacts: None,
            cache_ttl_device_status: None,
            cache_ttl_groups: None,
            cache_ttl_tenants: None,
            cache_ttl_stats: None,
            cache_max_items: 100_000,
            webhook_max_attempts: 8,
            webhook_backoff_base_ms: 1000,
            webhook_backoff_max_ms: 600_000,
            webhook_timeout_ms: 10_000,
            webhook_connect_timeout_ms: 5000,
            webhook_concurrency: 32,
            webhook_breaker_failures: 5,
            webhook_breaker_cooldown_ms: 30_000,
            webhook_poll_ms: 500,
            webhook_retention_secs: 7 * 24 * 3600,
            webhook_endpoint_cache_ms: 2000,
        }
    }
}

/// Environment names of the replaced system, accepted without prefix.
const LEGACY_ENV: &[&str] = &[
    "ADMIN_TOKEN",
    "JWT_SECRET",
    "LOG_FORMAT",
    "MONGODB_URI",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_QUEUE_DB",
    "DB_MAX_POOL_SIZE",
    "DB_MIN_POOL_SIZE",
    "DB_MAX_IDLE_TIME",
    "DB_SERVER_SELECTION_TIMEOUT",
    "DB_SOCKET_TIMEOUT",
    "DB_CONNECT_TIMEOUT",
    "DB_AUTO_INDEX",
    "DB_COMMAND_METRICS",
    "QUEUE_MESSAGE_CONCURRENCY",
    "QUEUE_CONTACT_CONCURRENCY",
    "QUEUE_DEFAULT_ATTEMPTS",
    "RATE_LIMIT_NORMAL",
    "RATE_LIMIT_HIGH",
    "RATE_LIMIT_CRITICAL",
    "RATE_LIMIT_LOW",
    "CACHE_TTL_USER_SESSION",
    "CACHE_TTL_WHATSAPP_CONTACTS",
    "CACHE_TTL_DEVICE_STATUS",
    "CACHE_TTL_GROUPS",
    "CACHE_TTL_TENANTS",
    "CACHE_TTL_STATS",
    "CACHE_MAX_ITEMS",
];

impl Config {
    /// Loads defaults, then `<dir>/default.toml`, `<dir>/<profile>.toml`
    /// (`SWITCHBOARD_PROFILE`), then the environment. `dir` is `SWITCHBOARD_CONFIG_DIR`
    /// or `./config`; missing files are skipped.
    pub fn load() -> Result<Config, Box<figment::Error>> {
        let dir = std::env::var("SWITCHBOARD_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        let profile = std::env::var("SWITCHBOARD_PROFILE").ok();
        let mut fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(format!("{dir}/default.toml")));
        if let Some(p) = profile {
            fig = fig.merge(Toml::file(format!("{dir}/{p}.toml")));
        }
        fig.merge(Env::raw().only(LEGACY_ENV))
            .merge(Env::prefixed("SWITCHBOARD_").ignore(&["PROFILE", "CONFIG_DIR"]))
            .extract()
            .map_err(Box::new)
    }

    /// The Redis URL: `redis_url`, else one built from the replaced system's
    /// `REDIS_HOST` / `REDIS_PORT` / `REDIS_PASSWORD` / `REDIS_DB`; `None` when Redis is
    /// not configured.
    pub fn redis_url(&self) -> Option<String> {
        if let Some(url) = self.redis_url.as_ref().filter(|u| !u.is_empty()) {
            return Some(url.clone());
        }
        let host = self.redis_host.as_ref().filter(|h| !h.is_empty())?;
        let port = self.redis_port.unwrap_or(6379);
        let auth = match self.redis_password.as_ref().filter(|p| !p.is_empty()) {
            Some(p) => format!(":{p}@"),
            None => String::new(),
        };
        let db = self.redis_db.unwrap_or(0);
        Some(format!("redis://{auth}{host}:{port}/{db}"))
    }

    /// The MongoDB store's settings, with the replaced system's `DB_*` variables.
    pub fn mongo_settings(&self, uri: &str) -> crate::store::mongo::MongoSettings {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let d = crate::store::mongo::MongoSettings::default();
        crate::store::mongo::MongoSettings {
            uri: uri.to_owned(),
            database: self.mongodb_database.clone(),
            max_pool_size: self.db_max_pool_size.or(d.max_pool_size),
            min_pool_size: self.db_min_pool_size.or(d.min_pool_size),
            max_idle_time: self.db_max_idle_time.map(ms).or(d.max_idle_time),
            server_selection_timeout: self
                .db_server_selection_timeout
                .map(ms)
                .unwrap_or(d.server_selection_timeout),
            socket_timeout: self.db_socket_timeout.map(ms).or(d.socket_timeout),
            connect_timeout: self.db_connect_timeout.map(ms).or(d.connect_timeout),
            write_concern: self.mongodb_write_concern.clone(),
            journal: self.mongodb_journal,
            read_concern: self.mongodb_read_concern.clone(),
            auto_index: self.db_auto_index.unwrap_or(true),
            command_metrics: self.db_command_metrics,
        }
    }

    /// The actor tree's settings.
    pub fn actor_settings(&self) -> actors::Settings {
        actors::Settings {
            rate_per_minute: [
                self.rate_limit_critical,
                self.rate_limit_high,
                self.rate_limit_normal,
                self.rate_limit_low,
            ],
            outbound_buffer: self.outbound_buffer.max(8),
            slow_consumer: std::time::Duration::from_millis(self.slow_consumer_ms.max(10)),
            session_idle: match self.session_idle_ms {
                Some(ms) => std::time::Duration::from_millis(ms.max(10)),
                None => std::time::Duration::from_secs(self.session_idle_secs.max(1)),
            },
            idempotency_window: self.idempotency_window.max(1),
            batch_max: self.persist_batch_max.max(1),
            linger: std::time::Duration::from_millis(self.persist_linger_ms),
            writers: self.persist_writers.max(1),
            tenant_rate_per_minute: self.tenant_rate_per_minute,
            global_rate_per_minute: self.global_rate_per_minute,
            pair_rate_per_minute: self.pair_rate_per_minute,
            queue_concurrency: self.queue_message_concurrency.unwrap_or(512).max(1) as usize,
            queue_contact_concurrency: self.queue_contact_concurrency.unwrap_or(2).max(1) as usize,
            queue_attempts: self.queue_default_attempts.unwrap_or(3).max(1),
            queue_aging: std::time::Duration::from_millis(self.queue_aging_ms.max(1)),
            queue_fair_spacing_ms: i64::try_from(self.queue_fair_spacing_ms).unwrap_or(1),
            job_retention: std::time::Duration::from_secs(self.job_retention_secs.max(1)),
            control_rate_per_minute: [
                self.rate_limit_receipts,
                self.rate_limit_typing,
                self.rate_limit_sync,
            ],
            restart_policy: actors::supervision::RestartPolicy {
                max_restarts: self.supervisor_max_restarts,
                period: std::time::Duration::from_secs(self.supervisor_period_secs.max(1)),
                backoff_min: std::time::Duration::from_millis(self.supervisor_backoff_min_ms),
                backoff_max: std::time::Duration::from_millis(
                    self.supervisor_backoff_max_ms
                        .max(self.supervisor_backoff_min_ms),
                ),
            },
            node_id: String::new(),
            job_lease: std::time::Duration::from_millis(
                self.cluster_lease_ms.max(1000).saturating_mul(5),
            ),
            cluster: self.cluster_settings(),
            webhook_endpoint_cache: std::time::Duration::from_millis(
                self.webhook_endpoint_cache_ms.min(60_000),
            ),
        }
    }

    /// The webhook sender's settings, each bounded.
    pub fn webhook_settings(&self) -> crate::webhooks::WebhookSettings {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let base = self.webhook_backoff_base_ms.clamp(10, 3_600_000);
        let timeout = self.webhook_timeout_ms.clamp(100, 120_000);
        crate::webhooks::WebhookSettings {
            max_attempts: self.webhook_max_attempts.clamp(1, 100),
            backoff_base: ms(base),
            backoff_max: ms(self.webhook_backoff_max_ms.clamp(base, 24 * 3_600_000)),
            timeout: ms(timeout),
            connect_timeout: ms(self.webhook_connect_timeout_ms.clamp(50, timeout)),
            concurrency: self.webhook_concurrency.clamp(1, 1024),
            breaker_failures: self.webhook_breaker_failures.clamp(1, 1000),
            breaker_cooldown: ms(self.webhook_breaker_cooldown_ms.clamp(10, 3_600_000)),
            poll: ms(self.webhook_poll_ms.clamp(10, 60_000)),
            retention: Duration::from_secs(self.webhook_retention_secs.max(60)),
            // A claim outlives any attempt: the timeout twice, and a margin.
            lease: ms(timeout.saturating_mul(2).saturating_add(5000)),
        }
    }

    /// The cluster's timings (see `docs/cluster.md`). The lease is at least two
    /// heartbeats plus twice the skew, so a node renews well before anyone counts it
    /// dead.
    pub fn cluster_settings(&self) -> actors::settings::ClusterSettings {
        use std::time::Duration;
        let heartbeat = self.cluster_heartbeat_ms.max(50);
        let skew = self.cluster_skew_ms;
        let lease = self.cluster_lease_ms.max(2 * heartbeat + 2 * skew + 100);
        actors::settings::ClusterSettings {
            heartbeat: Duration::from_millis(heartbeat),
            lease: Duration::from_millis(lease),
            skew: Duration::from_millis(skew),
            call_timeout: Duration::from_millis(self.cluster_call_timeout_ms.max(100)),
            fence_rows: self.cluster_fence_rows.max(1),
            send_timeout: Duration::from_millis(self.send_timeout_ms.max(100)),
        }
    }
}
