//! A [`Store`] decorator: runs a [`StoreHook`] around every call of an inner store.
//! One mechanism for everything that watches or bends store calls without knowing the
//! backend: timing for the admin statistics ([`super::timed::Timing`]) and, in tests,
//! fault injection ([`Faults`]); [`ServerHook`] is both, the one decorator the server
//! puts around its store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::jobs::{JobRecord, JobUpdate, QueueCount, SharedBody};
use actors::store::{
    AcceptedSend, DayStats, DeviceRecord, GroupRecord, InboxRow, JobClaim, MessageCopy, NodeLoad,
    NodeRecord, OwnerRecord, RowResult, StatusEntry, Store, StoreError, StoreResult, TenantRecord,
};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};
use async_trait::async_trait;
use dashmap::{DashMap, DashSet};
use protocol::rest::Contact;
use protocol::Priority;

/// What runs around each store call.
pub trait StoreHook: Send + Sync + 'static {
    /// Before the call: an error here is the call's answer (the inner store is not
    /// called).
    fn before(&self, _op: &'static str) -> StoreResult<()> {
        Ok(())
    }
    /// How long to hold the call before it runs (none by default).
    fn delay(&self, _op: &'static str) -> Option<Duration> {
        None
    }
    /// After the call, with its duration and whether it succeeded.
    fn after(&self, _op: &'static str, _elapsed: Duration, _ok: bool) {}
    /// Whether this inbox row must be answered as failed (not written).
    fn fails_row(&self, _row: &InboxRow) -> bool {
        false
    }
}

/// A store with a hook around every call.
pub struct Hooked<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H: StoreHook> Hooked<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, hook: H) -> Self {
        Hooked { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.hook.before(op)?;
        if let Some(d) = self.hook.delay(op) {
            tokio::time::sleep(d).await;
        }
        let started = Instant::now();
        let result = call.await;
        self.hook.after(op, started.elapsed(), result.is_ok());
        result
    }
}

/// The `Store` impl: every listed method is the inner call under the hook, named after
/// the method; `backend` and `commit_rows` are written out. (A macro around the whole
/// impl, so `async_trait` sees the generated methods.)
macro_rules! hooked_impl {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty;)*) => {
#[async_trait]
impl<H: StoreHook> Store for Hooked<H> {
    $(async fn $name(&self, $($arg: $ty),*) -> $ret {
        self.run(stringify!($name), self.inner.$name($($arg),*)).await
    })*

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn commit_rows(&self, rows: Arc<Vec<InboxRow>>) -> StoreResult<Vec<RowResult>> {
        if !rows.iter().any(|r| self.hook.fails_row(r)) {
            return self.run("commit_rows", self.inner.commit_rows(rows)).await;
        }
        // The rows the hook fails are answered as failed; the others are written.
        let kept: Vec<InboxRow> = rows
            .iter()
            .filter(|r| !self.hook.fails_row(r))
            .cloned()
            .collect();
        let mut written = self
            .run("commit_rows", self.inner.commit_rows(Arc::new(kept)))
            .await?
            .into_iter();
        Ok(rows
            .iter()
            .map(|r| {
                if self.hook.fails_row(r) {
                    Err(StoreError::Unavailable(INJECTED.into()))
                } else {
                    written.next().unwrap_or(Err(StoreError::Aborted))
                }
            })
            .collect())
    }
}
    };
}

hooked_impl! {
        create_tenant(tenant: TenantRecord) -> StoreResult<()>;
        tenant_by_key_hash(hash: &str) -> StoreResult<Option<TenantRecord>>;
        list_tenants() -> StoreResult<Vec<TenantRecord>>;
        create_device(device: DeviceRecord) -> StoreResult<()>;
        get_device(id: &str) -> StoreResult<Option<DeviceRecord>>;
        device_by_address(tenant_id: &str, address: &str) -> StoreResult<Option<DeviceRecord>>;
        list_devices(tenant_id: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<DeviceRecord>>;
        device_counts() -> StoreResult<HashMap<String, u64>>;
        delete_device(id: &str, now: i64) -> StoreResult<bool>;
        set_last_seen(id: &str, ts: i64) -> StoreResult<()>;
        upsert_contacts(device_id: &str, contacts: &[Contact]) -> StoreResult<usize>;
        list_contacts(device_id: &str) -> StoreResult<Vec<Contact>>;
        create_group(group: GroupRecord) -> StoreResult<()>;
        get_group(id: &str) -> StoreResult<Option<GroupRecord>>;
        add_group_members(id: &str, members: &[String], max_members: usize) -> StoreResult<Option<GroupRecord>>;
        remove_group_member(id: &str, address: &str) -> StoreResult<Option<(GroupRecord, bool)>>;
        upsert_groups(groups: Vec<GroupRecord>) -> StoreResult<Vec<GroupRecord>>;
        last_seq(device_id: &str) -> StoreResult<u64>;
        read_inbox(device_id: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<InboxRow>>;
        inbox_messages(device_id: &str, message_ids: &[String]) -> StoreResult<Vec<InboxRow>>;
        message_copies(message_id: &str) -> StoreResult<Vec<MessageCopy>>;
        statuses(device_id: &str, message_id: &str) -> StoreResult<Vec<StatusEntry>>;
        recent_client_ids(device_id: &str, limit: usize) -> StoreResult<Vec<AcceptedSend>>;
        sends_by_client_id(device_id: &str, client_id: &str) -> StoreResult<Vec<AcceptedSend>>;
        message_stats(tenant_id: &str, device_id: Option<&str>, from: i64, to: i64) -> StoreResult<Vec<DayStats>>;
        insert_jobs(bodies: Vec<SharedBody>, jobs: Vec<JobRecord>) -> StoreResult<()>;
        get_job(id: &str) -> StoreResult<Option<JobRecord>>;
        job_body(id: &str) -> StoreResult<Option<Arc<str>>>;
        queue_tail(tenant_id: &str, lane: Priority) -> StoreResult<Option<i64>>;
        requeue_active_jobs() -> StoreResult<u64>;
        promote_due_jobs(now: i64) -> StoreResult<u64>;
        claim_jobs(now: i64, limit: usize, paused: &[Priority], claim: &JobClaim) -> StoreResult<Vec<JobRecord>>;
        finish_jobs(updates: Vec<JobUpdate>, now: i64, owner: &str) -> StoreResult<()>;
        renew_job_claims(owner: &str, lease_until: i64) -> StoreResult<u64>;
        reclaim_jobs(now: i64) -> StoreResult<u64>;
        release_job_claims(owner: &str) -> StoreResult<u64>;
        set_lane_paused(lane: Priority, paused: bool) -> StoreResult<()>;
        paused_lanes() -> StoreResult<Vec<Priority>>;
        set_job_progress(id: &str, done: u64, now: i64) -> StoreResult<()>;
        cancel_job(id: &str, now: i64) -> StoreResult<bool>;
        retry_job(id: &str, now: i64, rank: i64) -> StoreResult<bool>;
        prune_jobs(before: i64, limit: usize) -> StoreResult<u64>;
        queue_counts() -> StoreResult<Vec<QueueCount>>;
        lane_depths() -> StoreResult<[u64; 4]>;
        put_node(node: NodeRecord) -> StoreResult<()>;
        renew_node(id: &str, lease_until: i64, load: NodeLoad) -> StoreResult<bool>;
        list_nodes() -> StoreResult<Vec<NodeRecord>>;
        remove_node(id: &str) -> StoreResult<()>;
        get_owner(device_id: &str) -> StoreResult<Option<OwnerRecord>>;
        claim_owner(device_id: &str, node: &str, seen: Option<u64>, now: i64) -> StoreResult<Option<OwnerRecord>>;
        release_owner(device_id: &str, node: &str, epoch: u64, now: i64) -> StoreResult<bool>;
        fence_inbox(device_id: &str, from: u64, count: u64, epoch: u64) -> StoreResult<()>;
        create_webhook(endpoint: EndpointRecord) -> StoreResult<()>;
        get_webhook(id: &str) -> StoreResult<Option<EndpointRecord>>;
        list_webhooks(tenant_id: &str) -> StoreResult<Vec<EndpointRecord>>;
        update_webhook(endpoint: EndpointRecord) -> StoreResult<bool>;
        delete_webhook(id: &str) -> StoreResult<bool>;
        enqueue_webhook_deliveries(deliveries: Vec<DeliveryRecord>) -> StoreResult<()>;
        claim_webhook_deliveries(now: i64, limit: usize, skip: &[String], claim: &JobClaim) -> StoreResult<Vec<DeliveryRecord>>;
        finish_webhook_deliveries(outcomes: Vec<DeliveryOutcome>, now: i64, owner: &str) -> StoreResult<u64>;
        list_webhook_deliveries(endpoint_id: &str, state: Option<DeliveryState>, before: Option<&str>, limit: usize) -> StoreResult<Vec<DeliveryRecord>>;
        replay_webhook_dead_letters(endpoint_id: &str, ids: Option<Vec<String>>, now: i64) -> StoreResult<u64>;
        webhook_outbox_depths() -> StoreResult<Vec<(String, u64)>>;
        prune_webhook_deliveries(before: i64, limit: usize) -> StoreResult<u64>;
}

/// Test-only faults (`test_hooks`): a store outage, slow calls, and failing inbox
/// rows of chosen devices. The outage's error text is marked so tests can check it
/// never reaches a client.
#[derive(Debug, Default)]
pub struct Faults {
    down: AtomicBool,
    /// Milliseconds each call of an operation (by its method name) waits first.
    delays: DashMap<String, u64>,
    failing_devices: Arc<DashSet<String>>,
}

/// The error text of an injected outage (must never reach a client).
pub const INJECTED: &str = "INJECTED-STORE-FAULT: do not show to clients";

impl Faults {
    /// Every call fails (`down`) or works again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Each call of `op` (a [`Store`] method's name) waits `ms` first; 0 removes the
    /// delay.
    pub fn set_delay(&self, op: &str, ms: u64) {
        if ms == 0 {
            self.delays.remove(op);
        } else {
            self.delays.insert(op.to_owned(), ms);
        }
    }

    /// The inbox rows of `device_id` fail to commit (`fail`) or work again.
    pub fn set_failing_device(&self, device_id: &str, fail: bool) {
        if fail {
            self.failing_devices.insert(device_id.to_owned());
        } else {
            self.failing_devices.remove(device_id);
        }
    }
}

impl StoreHook for Arc<Faults> {
    fn before(&self, _op: &'static str) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(INJECTED.into()));
        }
        Ok(())
    }

    fn delay(&self, op: &'static str) -> Option<Duration> {
        self.delays.get(op).map(|ms| Duration::from_millis(*ms))
    }

    fn fails_row(&self, row: &InboxRow) -> bool {
        self.failing_devices.contains(&*row.device_id)
    }
}

/// The server's hook: timing always, faults when test hooks are on.
pub struct ServerHook {
    /// Per-operation timings.
    pub timing: Arc<super::timed::Timing>,
    /// Injected faults (tests only).
    pub faults: Option<Arc<Faults>>,
}

impl StoreHook for ServerHook {
    fn before(&self, op: &'static str) -> StoreResult<()> {
        match &self.faults {
            Some(f) => f.before(op),
            None => Ok(()),
        }
    }

    fn delay(&self, op: &'static str) -> Option<Duration> {
        self.faults.as_ref().and_then(|f| f.delay(op))
    }

    fn after(&self, op: &'static str, elapsed: Duration, ok: bool) {
        self.timing.after(op, elapsed, ok);
    }

    fn fails_row(&self, row: &InboxRow) -> bool {
        self.faults.as_ref().is_some_and(|f| f.fails_row(row))
    }
}
