//! The `Store` trait: everything the server keeps durably, and the records it keeps.
//!
//! Implementations: SQLite (the embedded default) and MongoDB, both in the server
//! crate; one contract suite runs against each.
//!
//! Messages are stored once ([`MessageRecord`]); an inbox is a sequence of small rows
//! ([`InboxRow`]) that point at a message or carry a status of one. A device's inbox
//! is written only by its device session, in seq order, through
//! [`Store::commit_rows`].

mod records;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use protocol::rest::Contact;
use protocol::Priority;

use crate::jobs::{JobRecord, JobUpdate, QueueCount, SharedBody};
use crate::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};

pub use records::*;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists (a device address in a tenant, an inbox seq held by
    /// another row).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The backend failed; the same call may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bug or a damaged store); retrying does not
    /// help.
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
    /// The change would pass a limit (e.g. the largest group).
    #[error("over a limit: {0}")]
    Limit(String),
    /// Not written because an earlier row of the same inbox in the same call failed
    /// (an inbox never gets a gap).
    #[error("not written: an earlier row of the same inbox failed")]
    Aborted,
}

impl StoreError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Aborted)
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Outcome of one row of [`Store::commit_rows`].
pub type RowResult = Result<(), StoreError>;

/// Durable state of the server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (`sqlite`, `mongodb`), for `/health` and the admin pages.
    fn backend(&self) -> &'static str;

    /// Creates a tenant.
    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()>;
    /// The tenant whose API key hashes to `hash`.
    async fn tenant_by_key_hash(&self, hash: &str) -> StoreResult<Option<TenantRecord>>;
    /// All tenants (for the admin tree).
    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>>;

    /// Creates a device; `Conflict` if its address exists in the tenant.
    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()>;
    /// A device by id.
    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>>;
    /// A device by tenant and address.
    async fn device_by_address(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> StoreResult<Option<DeviceRecord>>;
    /// A page of a tenant's devices ordered by id, after `after`.
    async fn list_devices(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>>;
    /// Registered devices per tenant id.
    async fn device_counts(&self) -> StoreResult<HashMap<String, u64>>;
    /// Deletes a device with its inbox and contacts, and cancels its queued jobs
    /// (`waiting` / `delayed`); false if it did not exist.
    async fn delete_device(&self, id: &str, now: i64) -> StoreResult<bool>;
    /// Records when a client was last connected.
    async fn set_last_seen(&self, id: &str, ts: i64) -> StoreResult<()>;

    /// Inserts or updates contacts by address; returns how many.
    async fn upsert_contacts(&self, device_id: &str, contacts: &[Contact]) -> StoreResult<usize>;
    /// All contacts of a device, ordered by address.
    async fn list_contacts(&self, device_id: &str) -> StoreResult<Vec<Contact>>;

    /// Creates a group.
    async fn create_group(&self, group: GroupRecord) -> StoreResult<()>;
    /// A group by id.
    async fn get_group(&self, id: &str) -> StoreResult<Option<GroupRecord>>;
    /// Adds members atomically (a concurrent change is never lost) and bumps the
    /// version; `Limit` if the group would pass `max_members`. `None`: no such group.
    async fn add_group_members(
        &self,
        id: &str,
        members: &[String],
        max_members: usize,
    ) -> StoreResult<Option<GroupRecord>>;
    /// Removes one member atomically; answers the group and whether the address was a
    /// member (the version is bumped only then). `None`: no such group.
    async fn remove_group_member(
        &self,
        id: &str,
        address: &str,
    ) -> StoreResult<Option<(GroupRecord, bool)>>;
    /// Creates or replaces groups (group sync): a group that exists gets the given name
    /// and members and its version bumped (its creation time is kept), one that does
    /// not is created as given. Answers the groups as stored, in order. `Conflict` if
    /// an id belongs to another tenant. Idempotent, so a call that failed part way
    /// (MongoDB writes group by group) converges when repeated.
    async fn upsert_groups(&self, groups: Vec<GroupRecord>) -> StoreResult<Vec<GroupRecord>>;

    /// Writes inbox rows (group commit) and the messages their message rows point at.
    /// Answers one result per row, in order: a row whose seq already holds the same
    /// content is `Ok` (an idempotent retry), another content is `Conflict`; a message
    /// row for a message the inbox already holds at another seq is `Conflict`; a row
    /// [`InboxRow::into_fence`] replaces the fence of its epoch at its seq, and is
    /// `Conflict` if the slot holds anything else. Once a row of an inbox fails, that
    /// inbox's later rows in the call are `Aborted`, so an inbox never has a gap. `Err`
    /// when nothing could be written.
    async fn commit_rows(&self, rows: Arc<Vec<InboxRow>>) -> StoreResult<Vec<RowResult>>;
    /// Highest seq in a device's inbox (0 when empty); fence rows are not counted, nor
    /// read by any other call.
    async fn last_seq(&self, device_id: &str) -> StoreResult<u64>;
    /// Inbox rows with `seq > after_seq`, in seq order, at most `limit`; message rows
    /// carry their message.
    async fn read_inbox(
        &self,
        device_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<InboxRow>>;
    /// The message rows of a device's inbox holding any of `message_ids` (at most one
    /// per id), in no particular order.
    async fn inbox_messages(
        &self,
        device_id: &str,
        message_ids: &[String],
    ) -> StoreResult<Vec<InboxRow>>;
    /// Every inbox holding `message_id` as a message row (the sender's and each
    /// recipient's), ordered by device id.
    async fn message_copies(&self, message_id: &str) -> StoreResult<Vec<MessageCopy>>;
    /// The status rows of `device_id`'s inbox about `message_id`, in seq order.
    async fn statuses(&self, device_id: &str, message_id: &str) -> StoreResult<Vec<StatusEntry>>;
    /// The device's most recent sends that carried a client request id, newest first.
    async fn recent_client_ids(
        &self,
        device_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<AcceptedSend>>;
    /// The device's sends under request id `client_id`, or `client_id.N` (a resend of a
    /// queued job under a new id), oldest first.
    async fn sends_by_client_id(
        &self,
        device_id: &str,
        client_id: &str,
    ) -> StoreResult<Vec<AcceptedSend>>;

    /// Per device and UTC day in `[from, to)` (Unix ms): messages sent, statuses got,
    /// jobs created and failed — for a tenant's devices, or one of them. Days with
    /// nothing are left out; ordered by day, then device.
    async fn message_stats(
        &self,
        tenant_id: &str,
        device_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<DayStats>>;

    // ---- durable jobs (state machine in [`crate::jobs`]) ----

    /// Stores new jobs, and the shared bodies they point at, in one transaction.
    async fn insert_jobs(&self, bodies: Vec<SharedBody>, jobs: Vec<JobRecord>) -> StoreResult<()>;
    /// A job by id.
    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>>;
    /// A shared body (a campaign's message) by id.
    async fn job_body(&self, id: &str) -> StoreResult<Option<Arc<str>>>;
    /// The highest rank among a tenant's `waiting` jobs of a lane: new jobs of that
    /// tenant queue behind it (fairness across tenants, see [`crate::jobs::FairRanker`]).
    async fn queue_tail(&self, tenant_id: &str, lane: Priority) -> StoreResult<Option<i64>>;
    /// On dispatcher start on one node: every `active` job back to `waiting`; returns
    /// how many. (A cluster node requeues only claims whose lease ran out:
    /// [`Store::reclaim_jobs`].)
    async fn requeue_active_jobs(&self) -> StoreResult<u64>;
    /// `delayed` jobs whose `not_before` has come → `waiting`; returns how many.
    async fn promote_due_jobs(&self, now: i64) -> StoreResult<u64>;
    /// Claims up to `limit` `waiting` jobs, lowest rank first, moving them to `active`
    /// under `claim` (the claiming node and its lease); jobs of the `paused` lanes are
    /// skipped (they stay `waiting`).
    async fn claim_jobs(
        &self,
        now: i64,
        limit: usize,
        paused: &[Priority],
        claim: &JobClaim,
    ) -> StoreResult<Vec<JobRecord>>;
    /// Applies outcomes of jobs active under `owner`'s claim, in one transaction (jobs
    /// no longer active, or claimed by another node since, are left alone).
    async fn finish_jobs(&self, updates: Vec<JobUpdate>, now: i64, owner: &str) -> StoreResult<()>;
    /// Extends the lease of every job active under `owner`'s claim; returns how many.
    async fn renew_job_claims(&self, owner: &str, lease_until: i64) -> StoreResult<u64>;
    /// Active jobs whose claim's lease ran out before `now` (their node died) →
    /// `waiting`; returns how many.
    async fn reclaim_jobs(&self, now: i64) -> StoreResult<u64>;
    /// Every job active under `owner`'s claim → `waiting` (the node drains); returns
    /// how many.
    async fn release_job_claims(&self, owner: &str) -> StoreResult<u64>;
    /// Pauses or resumes a lane for every node: [`Store::claim_jobs`] callers pass the
    /// paused lanes.
    async fn set_lane_paused(&self, lane: Priority, paused: bool) -> StoreResult<()>;
    /// The paused lanes, critical first.
    async fn paused_lanes(&self) -> StoreResult<Vec<Priority>>;
    /// Records progress of an active job.
    async fn set_job_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()>;
    /// `waiting` / `delayed` → `cancelled`; false if the job was in another state.
    async fn cancel_job(&self, id: &str, now: i64) -> StoreResult<bool>;
    /// `failed` → `waiting` with attempts reset and the given rank; false otherwise.
    async fn retry_job(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool>;
    /// Deletes up to `limit` finished jobs (`completed`, `failed`, `cancelled`) last
    /// changed before `before`, and shared bodies no job points at any more. Pruned
    /// jobs stay counted in [`Store::queue_counts`]. Returns how many jobs went.
    async fn prune_jobs(&self, before: i64, limit: usize) -> StoreResult<u64>;
    /// Job counts by tenant, lane and state, pruned jobs included.
    async fn queue_counts(&self) -> StoreResult<Vec<QueueCount>>;
    /// Queue depth of every lane (critical first): its `waiting` plus `delayed` jobs.
    /// Cheap enough to run every second.
    async fn lane_depths(&self) -> StoreResult<[u64; 4]>;

    // ---- a cluster's nodes and device ownership (`docs/cluster.md`) ----

    /// Registers a node, or replaces its record.
    async fn put_node(&self, node: NodeRecord) -> StoreResult<()>;
    /// Renews a registered node's lease and figures; false when it is not registered
    /// (it was removed).
    async fn renew_node(&self, id: &str, lease_until: i64, load: NodeLoad) -> StoreResult<bool>;
    /// Every registered node, by id.
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    /// Deregisters a node (nothing if it is not registered).
    async fn remove_node(&self, id: &str) -> StoreResult<()>;
    /// Who owns (or last owned) a device's session.
    async fn get_owner(&self, device_id: &str) -> StoreResult<Option<OwnerRecord>>;
    /// Takes a device for `node`, compare-and-set: only if its record is still at epoch
    /// `seen` (`None`: there is no record yet). The new record has the next epoch and
    /// `clean` false. `None` when another claim changed the record first.
    async fn claim_owner(
        &self,
        device_id: &str,
        node: &str,
        seen: Option<u64>,
        now: i64,
    ) -> StoreResult<Option<OwnerRecord>>;
    /// Marks a device released (`clean`) if `node` still owns it at `epoch`; false
    /// otherwise.
    async fn release_owner(
        &self,
        device_id: &str,
        node: &str,
        epoch: u64,
        now: i64,
    ) -> StoreResult<bool>;
    /// Fences seqs `from ..= from + count - 1` of an inbox for `epoch`: a fence row of
    /// `epoch` in every empty slot, and every row of a lower epoch there (a stale
    /// owner's, or an older fence) turned into one. Rows of `epoch` or a higher one are
    /// left alone.
    async fn fence_inbox(
        &self,
        device_id: &str,
        from: u64,
        count: u64,
        epoch: u64,
    ) -> StoreResult<()>;

    // ---- outbound webhooks (`crate::webhooks`, `docs/webhooks.md`) ----

    /// Creates a webhook endpoint.
    async fn create_webhook(&self, endpoint: EndpointRecord) -> StoreResult<()>;
    /// An endpoint by id.
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<EndpointRecord>>;
    /// A tenant's endpoints, by id.
    async fn list_webhooks(&self, tenant_id: &str) -> StoreResult<Vec<EndpointRecord>>;
    /// Replaces an endpoint's record; false if it does not exist.
    async fn update_webhook(&self, endpoint: EndpointRecord) -> StoreResult<bool>;
    /// Deletes an endpoint and every delivery of it; false if it did not exist.
    async fn delete_webhook(&self, id: &str) -> StoreResult<bool>;
    /// Stores new deliveries (the outbox), all or none where the backend allows (see
    /// the MongoDB store).
    async fn enqueue_webhook_deliveries(&self, deliveries: Vec<DeliveryRecord>) -> StoreResult<()>;
    /// Claims up to `limit` deliveries for `claim`'s node: `pending` ones due by `now`
    /// and `sending` ones whose lease ran out before `now` (their node died), soonest
    /// first, skipping the endpoints in `skip`. A delivery is claimed only when it is
    /// the earliest (by `order_key`) `pending` or `sending` one of its endpoint and
    /// device, so each device's events go out in order. A status delivery for which a
    /// delivery of the same endpoint and `status_key` with a higher `status_rank`
    /// exists (pending, sending or delivered) is not claimed but `dropped`. Claimed
    /// deliveries come back `sending`, under the claim.
    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        limit: usize,
        skip: &[String],
        claim: &JobClaim,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// Applies outcomes of deliveries claimed by `owner` (those no longer `sending`
    /// under its claim are left alone); answers how many applied.
    async fn finish_webhook_deliveries(
        &self,
        outcomes: Vec<DeliveryOutcome>,
        now: i64,
        owner: &str,
    ) -> StoreResult<u64>;
    /// A page of an endpoint's deliveries, newest first (by id), with ids below
    /// `before`, in `state` if given.
    async fn list_webhook_deliveries(
        &self,
        endpoint_id: &str,
        state: Option<DeliveryState>,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// Dead deliveries of an endpoint (all, or those of `ids`) → `pending`, due now,
    /// attempts reset; answers how many.
    async fn replay_webhook_dead_letters(
        &self,
        endpoint_id: &str,
        ids: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<u64>;
    /// Open (`pending` + `sending`) deliveries per endpoint id, endpoints with none
    /// left out.
    async fn webhook_outbox_depths(&self) -> StoreResult<Vec<(String, u64)>>;
    /// Deletes up to `limit` `delivered` or `dropped` deliveries last changed before
    /// `before` (dead letters stay until replayed or their endpoint goes); answers how
    /// many.
    async fn prune_webhook_deliveries(&self, before: i64, limit: usize) -> StoreResult<u64>;
}

/// The claim under which a node runs the jobs it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClaim {
    /// The claiming node.
    pub owner: String,
    /// The claim holds until then (Unix ms) unless renewed.
    pub lease_until: i64,
}

/// A node's figures, written with its lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Running device sessions.
    pub sessions: u64,
    /// Whether it is draining.
    pub draining: bool,
}
