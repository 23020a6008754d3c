//! Prometheus instruments of the actor tree, through the `metrics` facade.
//!
//! The server installs the recorder (and describes every family, see [`describe`])
//! before it builds the [`crate::Env`]; the handles here are registered once, when the
//! environment (or a session) is created, so the hot path only does atomic adds on
//! pre-registered handles: no key hashing, no label formatting per message. Without an
//! installed recorder (unit tests) every handle is a no-op.
//!
//! Tenant labels: the message counters (`switchboard_messages_{sent,acked,delivered}_total`)
//! carry `tenant`, registered once per device session start ([`SessionMetrics`]), which
//! costs one registry lookup per session, never per message. Histograms carry no tenant
//! label: a series per tenant and bucket would multiply the scrape size for little use.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, histogram, Counter, Histogram};

/// Metric family names, shared with the server (which describes and renders them).
pub mod names {
    /// Messages accepted from a device (counter, `tenant`).
    pub const MESSAGES_SENT: &str = "switchboard_messages_sent_total";
    /// Sends acked once durable (counter, `tenant`).
    pub const MESSAGES_ACKED: &str = "switchboard_messages_acked_total";
    /// Inbox entries pushed live (counter, `tenant`).
    pub const MESSAGES_DELIVERED: &str = "switchboard_messages_delivered_total";
    /// Send received → ack answered (histogram, seconds).
    pub const ACK_LATENCY: &str = "switchboard_ack_latency_seconds";
    /// Message timestamp → live push (histogram, seconds).
    pub const DELIVERY_LATENCY: &str = "switchboard_delivery_latency_seconds";
    /// Rows per group-commit batch (histogram).
    pub const BATCH_SIZE: &str = "switchboard_persist_batch_size";
    /// Group-commit duration (histogram, seconds).
    pub const COMMIT_LATENCY: &str = "switchboard_persist_commit_seconds";
    /// Sends refused by a rate limit (counter, `level`).
    pub const RATE_LIMITED: &str = "switchboard_rate_limit_rejections_total";
    /// Actors restarted by their supervisor (counter, `kind`).
    pub const RESTARTS: &str = "switchboard_actor_restarts_total";
    /// Cache lookups answered from the cache (counter, `kind`, `layer`).
    pub const CACHE_HITS: &str = "switchboard_cache_hits_total";
    /// Cache lookups that went to the store (counter, `kind`, `layer`).
    pub const CACHE_MISSES: &str = "switchboard_cache_misses_total";
    /// Entries held by a cache (gauge, `kind`, `layer`).
    pub const CACHE_ENTRIES: &str = "switchboard_cache_entries";
    /// Sends whose shared budgets (cluster) did not answer, so the node's own budgets
    /// decided (counter).
    pub const BUDGET_FALLBACKS: &str = "switchboard_rate_budget_fallbacks_total";
    /// Times this node's lease lapsed and it rejoined, dropping its connections
    /// (counter, cluster only).
    pub const LEASE_LAPSES: &str = "switchboard_cluster_lease_lapses_total";
}

/// Describes every family of this crate (HELP lines). Call once, after installing the
/// recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::MESSAGES_SENT,
        "Messages accepted from devices (seq assigned), by tenant."
    );
    describe_counter!(
        names::MESSAGES_ACKED,
        "Sends acked to the sender after every row was durable, by tenant."
    );
    describe_counter!(
        names::MESSAGES_DELIVERED,
        "Inbox entries pushed live to at least one connection of the recipient, by tenant."
    );
    describe_histogram!(
        names::ACK_LATENCY,
        "Seconds from a device session receiving a send to answering it with an ack."
    );
    describe_histogram!(
        names::DELIVERY_LATENCY,
        "Seconds from a message's timestamp to its live push to the recipient."
    );
    describe_histogram!(
        names::BATCH_SIZE,
        "Rows per group-commit batch of the persistence writers."
    );
    describe_histogram!(
        names::COMMIT_LATENCY,
        "Seconds one group-commit batch took to become durable (retries included)."
    );
    describe_counter!(
        names::RATE_LIMITED,
        "Sends refused by a rate limit, by level (device, tenant, global)."
    );
    describe_counter!(
        names::RESTARTS,
        "Actors restarted by their supervisor after a failure, by kind."
    );
    describe_counter!(
        names::CACHE_HITS,
        "Cache lookups answered from the cache, by kind and layer."
    );
    describe_counter!(
        names::CACHE_MISSES,
        "Cache lookups that went to the store, by kind and layer."
    );
    describe_gauge!(
        names::CACHE_ENTRIES,
        "Entries held by a cache, by kind and layer."
    );
    describe_counter!(
        names::BUDGET_FALLBACKS,
        "Sends decided by this node's own rate budgets because the shared (Redis) budgets \
         did not answer in time."
    );
    describe_counter!(
        names::LEASE_LAPSES,
        "Times this node's lease lapsed (a renewal came too late) and the node rejoined, \
         closing its connections with 1012."
    );
}

/// Hit / miss / size counters of one cache, readable for the admin endpoint and
/// mirrored to Prometheus.
#[derive(Debug)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    hit_counter: Counter,
    miss_counter: Counter,
}

impl CacheCounters {
    /// Counters for cache `kind` in `layer`, registered with the recorder.
    pub fn new(kind: &'static str, layer: &'static str) -> Self {
        CacheCounters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hit_counter: counter!(names::CACHE_HITS, "kind" => kind, "layer" => layer),
            miss_counter: counter!(names::CACHE_MISSES, "kind" => kind, "layer" => layer),
        }
    }

    /// Counts a hit.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.hit_counter.increment(1);
    }

    /// Counts a miss.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.miss_counter.increment(1);
    }

    /// (hits, misses) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Process-level instruments of the actor tree (held by [`crate::stats::Stats`]).
#[derive(Debug)]
pub struct ActorMetrics {
    /// Send → ack.
    pub ack_latency: Histogram,
    /// Message ts → live push.
    pub delivery_latency: Histogram,
    /// Rows per committed batch.
    pub batch_size: Histogram,
    /// Commit duration.
    pub commit_latency: Histogram,
    /// Device-level rate-limit refusals.
    pub rate_limited_device: Counter,
    /// Tenant-level rate-limit refusals (for the shared budgets to count).
    pub rate_limited_tenant: Counter,
    /// Server-wide rate-limit refusals (for the shared budgets to count).
    pub rate_limited_global: Counter,
    /// Device session restarts.
    pub restarts_session: Counter,
    /// Tenant supervisor restarts.
    pub restarts_tenant: Counter,
    /// Persistence writer restarts.
    pub restarts_writer: Counter,
}

impl Default for ActorMetrics {
    fn default() -> Self {
        ActorMetrics {
            ack_latency: histogram!(names::ACK_LATENCY),
            delivery_latency: histogram!(names::DELIVERY_LATENCY),
            batch_size: histogram!(names::BATCH_SIZE),
            commit_latency: histogram!(names::COMMIT_LATENCY),
            rate_limited_device: counter!(names::RATE_LIMITED, "level" => "device"),
            rate_limited_tenant: counter!(names::RATE_LIMITED, "level" => "tenant"),
            rate_limited_global: counter!(names::RATE_LIMITED, "level" => "global"),
            restarts_session: counter!(names::RESTARTS, "kind" => "device_session"),
            restarts_tenant: counter!(names::RESTARTS, "kind" => "tenant_supervisor"),
            restarts_writer: counter!(names::RESTARTS, "kind" => "persistence_writer"),
        }
    }
}

/// A device session's tenant-labelled counters, registered when the session starts.
#[derive(Debug, Clone)]
pub struct SessionMetrics {
    /// Messages accepted.
    pub sent: Counter,
    /// Sends acked.
    pub acked: Counter,
    /// Entries pushed live.
    pub delivered: Counter,
}

impl SessionMetrics {
    /// The counters of `tenant_id`.
    pub fn new(tenant_id: &str) -> Self {
        let tenant = tenant_id.to_owned();
        SessionMetrics {
            sent: counter!(names::MESSAGES_SENT, "tenant" => tenant.clone()),
            acked: counter!(names::MESSAGES_ACKED, "tenant" => tenant.clone()),
            delivered: counter!(names::MESSAGES_DELIVERED, "tenant" => tenant),
        }
    }
}

/// Seconds since `ts_ms` (Unix milliseconds), never negative.
pub fn secs_since_ms(ts_ms: i64) -> f64 {
    (crate::clock::now_ms().saturating_sub(ts_ms)).max(0) as f64 / 1000.0
}
