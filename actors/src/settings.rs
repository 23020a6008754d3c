//! Tunables the actors need, filled in by the server from its configuration.

use std::time::Duration;

use crate::supervision::RestartPolicy;

/// Settings shared by every actor.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-device budget per minute for critical, high, normal, low.
    pub rate_per_minute: [u32; 4],
    /// Frames buffered per connection in its channel.
    pub outbound_buffer: usize,
    /// A client whose frames wait and who read nothing for this long is cut off (4408).
    pub slow_consumer: Duration,
    /// A device session with no connection stops after this long.
    pub session_idle: Duration,
    /// Client request ids remembered per device for idempotent resends.
    pub idempotency_window: usize,
    /// Rows per group-commit batch, at most.
    pub batch_max: usize,
    /// How long a writer waits for more rows before committing.
    pub linger: Duration,
    /// Number of writer actors.
    pub writers: usize,
    /// Per-tenant budget per minute over all its devices (0: unlimited).
    pub tenant_rate_per_minute: u32,
    /// Server-wide budget per minute (0: unlimited).
    pub global_rate_per_minute: u32,
    /// Per device→recipient budget per minute (0: off).
    pub pair_rate_per_minute: u32,
    /// Queued sends in flight at once.
    pub queue_concurrency: usize,
    /// Contact-sync jobs running at once (within `queue_concurrency`).
    pub queue_contact_concurrency: usize,
    /// Attempts per queued job before a transient error fails it.
    pub queue_attempts: u32,
    /// Queue aging: a job counts as one lane higher for every this long it has waited.
    pub queue_aging: Duration,
    /// Fair queuing across tenants: each job of a tenant queues this far (virtual
    /// milliseconds) behind the tenant's previous one in the same lane.
    pub queue_fair_spacing_ms: i64,
    /// Finished jobs are deleted this long after they finished.
    pub job_retention: Duration,
    /// Per-device budgets per minute for receipt ids, typing frames and sync pages.
    pub control_rate_per_minute: [u32; 3],
    /// How supervisors restart failing children.
    pub restart_policy: RestartPolicy,
    /// This node's id (`n_<ulid>`): the owner of its job claims and device sessions.
    pub node_id: String,
    /// How long a job claim holds without renewal (a dead node's jobs are taken back
    /// after it).
    pub job_lease: Duration,
    /// The cluster's timings (used only when the node runs in a cluster).
    pub cluster: ClusterSettings,
    /// How long a tenant's webhook endpoint list is cached (a change made on another
    /// node applies after at most this long).
    pub webhook_endpoint_cache: Duration,
}

/// Timings of a cluster (`docs/cluster.md`).
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// How often a node renews its lease.
    pub heartbeat: Duration,
    /// How long a lease holds.
    pub lease: Duration,
    /// The clock skew tolerated between nodes.
    pub skew: Duration,
    /// How long a call to another node waits for its answer.
    pub call_timeout: Duration,
    /// Most rows of one device in one commit batch; a takeover fences this many seqs.
    pub fence_rows: usize,
    /// A send not complete after this long is answered `unavailable`.
    pub send_timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(6),
            skew: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            fence_rows: 64,
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rate_per_minute: [200, 100, 60, 30],
            outbound_buffer: 1024,
            slow_consumer: Duration::from_secs(2),
            session_idle: Duration::from_secs(60),
            idempotency_window: 1024,
            batch_max: 2048,
            linger: Duration::from_millis(1),
            writers: 1,
            tenant_rate_per_minute: 6_000_000,
            global_rate_per_minute: 12_000_000,
            pair_rate_per_minute: 0,
            queue_concurrency: 512,
            queue_contact_concurrency: 2,
            queue_attempts: 3,
            queue_aging: Duration::from_secs(10),
            queue_fair_spacing_ms: 1,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            control_rate_per_minute: [6000, 600, 1200],
            restart_policy: RestartPolicy::default(),
            node_id: "n_local".into(),
            job_lease: Duration::from_secs(30),
            cluster: ClusterSettings::default(),
            webhook_endpoint_cache: Duration::from_secs(2),
        }
    }
}
