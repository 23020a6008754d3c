//! The `Store` trait: everything the server keeps durably, and the records it keeps.
//!
//! Implementations: SQLite (embedded default, in the server crate) and MongoDB.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::rest::Contact;

use crate::jobs::{JobRecord, JobUpdate, QueueCount};

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists (e.g. a device address in a tenant).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The backend failed; the call may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A tenant; its API key is kept only as a hash.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    /// Tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// SHA-256 (hex) of the API key.
    pub api_key_hash: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// A device: one phone-number endpoint of a tenant.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// E.164 address, unique in the tenant.
    pub address: String,
    /// Display name.
    pub name: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last time a client was connected (Unix ms).
    pub last_seen: Option<i64>,
}

/// A group of addresses in one tenant.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    /// Group id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Member addresses, sorted and unique.
    pub members: Vec<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// One row of a device's inbox: a message at a seq.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// Inbox owner.
    pub device_id: Arc<str>,
    /// Position in the owner's inbox.
    pub seq: u64,
    /// Message id (shared by every copy).
    pub message_id: Arc<str>,
    /// Acceptance time.
    pub ts: i64,
    /// Sender address.
    pub from: Arc<str>,
    /// Recipient address, for 1:1 messages.
    pub to: Option<Arc<str>>,
    /// Group id, for group messages.
    pub group: Option<Arc<str>>,
    /// Raw JSON body.
    pub body: Arc<str>,
    /// The sender's request id, on the sender's own copy only.
    pub client_id: Option<String>,
}

/// A previously accepted send, found by its client request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSend {
    /// The sender's request id.
    pub client_id: String,
    /// Message id.
    pub message_id: String,
    /// Seq of the sender's copy.
    pub seq: u64,
    /// Acceptance time.
    pub ts: i64,
}

/// Durable state of the server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    /// Deletes a device with its inbox and contacts; false if it did not exist.
    async fn delete_device(&self, id: &str) -> StoreResult<bool>;
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
    /// Replaces a group's member list.
    async fn set_group_members(&self, id: &str, members: &[String]) -> StoreResult<()>;

    /// Commits inbox rows in one transaction (group commit).
    async fn commit_inbox(&self, rows: Arc<Vec<InboxEntry>>) -> StoreResult<()>;
    /// Highest seq in a device's inbox (0 when empty).
    async fn last_seq(&self, device_id: &str) -> StoreResult<u64>;
    /// Inbox rows with `seq > after_seq`, in seq order, at most `limit`.
    async fn read_inbox(
        &self,
        device_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>>;
    /// The inbox row of a device holding `message_id`.
    async fn inbox_entry(
        &self,
        device_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<InboxEntry>>;
    /// The device's most recent sends that carried a client request id, newest first.
    async fn recent_client_ids(
        &self,
        device_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<AcceptedSend>>;

    // ---- durable jobs (state machine in [`crate::jobs`]) ----

    /// Stores new jobs in one transaction.
    async fn insert_jobs(&self, jobs: Vec<JobRecord>) -> StoreResult<()>;
    /// A job by id.
    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>>;
    /// On dispatcher start: every `active` job back to `waiting`; returns how many.
    async fn requeue_active_jobs(&self) -> StoreResult<u64>;
    /// `delayed` jobs whose `not_before` has come → `waiting`; returns how many.
    async fn promote_due_jobs(&self, now: i64) -> StoreResult<u64>;
    /// Claims up to `limit` `waiting` jobs, lowest rank first, moving them to `active`.
    async fn claim_jobs(&self, now: i64, limit: usize) -> StoreResult<Vec<JobRecord>>;
    /// [`Store::claim_jobs`], skipping the jobs of the `paused` lanes (they stay
    /// `waiting`).
    async fn claim_jobs_except(
        &self,
        now: i64,
        limit: usize,
        paused: &[protocol::Priority],
    ) -> StoreResult<Vec<JobRecord>>;
    /// Applies outcomes of active jobs in one transaction (jobs no longer active are
    /// left alone).
    async fn finish_jobs(&self, updates: Vec<JobUpdate>, now: i64) -> StoreResult<()>;
    /// Records progress of an active job.
    async fn set_job_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()>;
    /// `waiting` / `delayed` → `cancelled`; false if the job was in another state.
    async fn cancel_job(&self, id: &str, now: i64) -> StoreResult<bool>;
    /// `failed` → `waiting` with attempts reset and the given rank; false otherwise.
    async fn retry_job(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool>;
    /// Job counts by tenant, lane and state.
    async fn queue_counts(&self) -> StoreResult<Vec<QueueCount>>;
    /// Queue depth of every lane (critical first): its `waiting` plus `delayed` jobs.
    /// Cheap enough to run every second.
    async fn lane_depths(&self) -> StoreResult<[u64; 4]>;
    /// The sender's stored copies of a queued job's sends (client request id `job_id`,
    /// or `job_id.N` for a resend), oldest first: lets the dispatcher complete a job
    /// sent before a crash without sending it again, however long ago that was.
    async fn job_sends(&self, device_id: &str, job_id: &str) -> StoreResult<Vec<AcceptedSend>>;
}
