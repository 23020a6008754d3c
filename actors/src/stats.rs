//! Process-wide counters, read by `/metrics` and the admin endpoints.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters updated by the actors and the transport.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages accepted and acked.
    pub messages_acked: AtomicU64,
    /// Inbox entries pushed live to at least one connection.
    pub messages_delivered: AtomicU64,
    /// Inbox rows committed.
    pub rows_committed: AtomicU64,
    /// Group-commit batches committed.
    pub batches_committed: AtomicU64,
    /// Sends refused for rate limits.
    pub rate_limited: AtomicU64,
    /// Device sessions restarted after a failure.
    pub session_restarts: AtomicU64,
    /// Contact lists served from a session's cache.
    pub contact_cache_hits: AtomicU64,
    /// Contact lists loaded from the store.
    pub contact_cache_misses: AtomicU64,
    /// Connections cut off for reading too slowly.
    pub slow_consumers: AtomicU64,
    /// Recipient rows delivered again after they were lost (in order, see `outbox.rs`).
    pub rows_resent: AtomicU64,
    /// Open WebSocket connections on this node.
    pub connections: AtomicU64,
    /// The node is draining (it takes no new connections).
    pub draining: AtomicBool,
    /// Prometheus instruments (see [`crate::metrics`]).
    pub metrics: crate::metrics::ActorMetrics,
}

impl Stats {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
