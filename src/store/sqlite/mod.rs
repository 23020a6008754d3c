//! SQLite store: the embedded default backend of the actor crate's [`Store`] trait.
//!
//! It owns every durable table of the server; the queries live by concern in
//! `directory.rs` (tenants, devices, contacts, groups), `inbox.rs` (messages, inboxes
//! and their fences), `jobs.rs` (the queue and its lanes), `cluster.rs` (node leases and
//! device ownership), `webhooks.rs` (webhook endpoints and their outbox) and
//! `schema.rs` (tables and migrations); `stats.rs` serves
//! `/admin/db/stats`.
//!
//! Design:
//! - **One writer connection** behind a mutex. SQLite allows one writer at a time
//!   anyway; serializing writes in-process avoids `SQLITE_BUSY` churn and lets the
//!   connection keep its prepared-statement cache warm. It also makes every
//!   read-modify-write on it (group membership) atomic.
//! - **A small pool of reader connections** (`query_only`). In WAL mode readers never
//!   block the writer nor each other, so reads scale while a commit is in flight.
//! - **WAL journal** with `synchronous=NORMAL` by default: a commit survives a crash
//!   or `kill -9` of the process (the WAL is in the OS page cache), but the last
//!   commits may be lost on power loss or OS crash. `synchronous=FULL` (on request)
//!   also survives power loss, at the cost of an fsync per commit.
//! - **Group commit**: the persistence writers batch rows and hand them to
//!   [`Store::commit_rows`], which writes the whole batch in one transaction with
//!   cached prepared statements, so one fsync (if any) covers many messages.
//!
//! All blocking SQLite work runs on tokio's blocking pool (`spawn_blocking`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actors::jobs::{JobRecord, JobUpdate, QueueCount, SharedBody};
use actors::store::{
    AcceptedSend, DayStats, DeviceRecord, GroupRecord, InboxRow, JobClaim, MessageCopy, NodeLoad,
    NodeRecord, OwnerRecord, RowResult, StatusEntry, Store, StoreError, StoreResult, TenantRecord,
};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};
use async_trait::async_trait;
use protocol::rest::Contact;
use protocol::Priority;
use rusqlite::{Connection, ErrorCode};

mod cluster;
mod directory;
mod inbox;
mod jobs;
mod media;
mod reports;
mod schema;
mod stats;
pub use media::SqliteMedia;
mod webhooks;
pub use stats::{known_queries, DbFile, IndexStat, QueryPlan, SqliteStats, TableDetail};

/// How many reader connections the pool holds.
const READERS: usize = 4;

/// SQLite implementation of [`Store`]: one writer connection and a pool of readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("readers", &self.inner.readers.len())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, recovering from poisoning (a panicking holder leaves the
/// connection usable: an open transaction is rolled back when dropped).
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Maps any SQLite error to `Unavailable`.
fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps a constraint violation to `Conflict`, anything else to `Unavailable`.
fn conflict_or_unavailable(e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        StoreError::Conflict(e.to_string())
    } else {
        unavailable(e)
    }
}

fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Unavailable(format!("{what} out of range: {v}")))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Copies the WAL back into the database file from a thread of its own, so commits
/// never stall on a checkpoint (the writer's automatic checkpoint is only a backstop).
/// Stops when the store is dropped.
fn spawn_checkpointer(conn: Connection, store: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if store.upgrade().is_none() {
                break;
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the WAL checkpointer; relying on autocheckpoint");
    }
}

/// Applies the pragmas shared by every connection.
fn configure(conn: &Connection, synchronous_full: bool, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(5000))?;
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: WAL journal, `synchronous`
    /// NORMAL (FULL when `synchronous_full`), and the schema.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
                })?;
            }
        }

        let mut writer = Connection::open(path).map_err(unavailable)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL");
        }
        configure(&writer, synchronous_full, 64 * 1024).map_err(unavailable)?;
        writer
            .pragma_update(None, "wal_autocheckpoint", 100000)
            .map_err(unavailable)?;
        schema::migrate(&mut writer).map_err(unavailable)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open(path).map_err(unavailable)?;
            configure(&conn, synchronous_full, 16 * 1024).map_err(unavailable)?;
            conn.pragma_update(None, "query_only", "ON")
                .map_err(unavailable)?;
            readers.push(Mutex::new(conn));
        }

        let checkpointer = Connection::open(path).map_err(unavailable)?;
        configure(&checkpointer, synchronous_full, 1024).map_err(unavailable)?;

        tracing::info!(path = %path.display(), synchronous_full, "SQLite store opened");
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        });
        spawn_checkpointer(checkpointer, Arc::downgrade(&inner));
        Ok(SqliteStore { inner })
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            f(&mut conn)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("store task failed: {e}"))))
    }

    /// Runs `f` on a reader connection (a free one if any), on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader();
            f(&conn)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("store task failed: {e}"))))
    }
}

impl Inner {
    /// A free reader if one is idle, else waits on one chosen round-robin.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for r in &self.readers {
            match r.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[i])
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        self.write(move |c| directory::create_tenant(c, &tenant))
            .await
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> StoreResult<Option<TenantRecord>> {
        let hash = hash.to_owned();
        self.read(move |c| directory::tenant_by_key(c, &hash)).await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        self.read(directory::list_tenants).await
    }

    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()> {
        self.write(move |c| directory::create_device(c, &device))
            .await
    }

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        let id = id.to_owned();
        self.read(move |c| directory::get_device(c, &id)).await
    }

    async fn device_by_address(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        let (tenant_id, address) = (tenant_id.to_owned(), address.to_owned());
        self.read(move |c| directory::device_by_address(c, &tenant_id, &address))
            .await
    }

    async fn list_devices(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let tenant_id = tenant_id.to_owned();
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| directory::list_devices(c, &tenant_id, &after, limit))
            .await
    }

    async fn device_counts(&self) -> StoreResult<HashMap<String, u64>> {
        self.read(directory::device_counts).await
    }

    async fn delete_device(&self, id: &str, now: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let existed = tx
                .execute(directory::DELETE_DEVICE, [&id])
                .map_err(unavailable)?
                > 0;
            tx.execute(directory::DELETE_CONTACTS, [&id])
                .map_err(unavailable)?;
            tx.execute(inbox::DELETE_ORPHAN_MESSAGES, [&id])
                .map_err(unavailable)?;
            tx.execute(inbox::DELETE_INBOX, [&id])
                .map_err(unavailable)?;
            jobs::cancel_device_jobs(&tx, &id, now)?;
            tx.execute(cluster::DELETE_OWNER, [&id])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
    }

    async fn set_last_seen(&self, id: &str, ts: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| directory::set_last_seen(c, &id, ts))
            .await
    }

    async fn upsert_contacts(&self, device_id: &str, contacts: &[Contact]) -> StoreResult<usize> {
        if contacts.is_empty() {
            return Ok(0);
        }
        let device_id = device_id.to_owned();
        let contacts = contacts.to_vec();
        self.write(move |c| directory::upsert_contacts(c, &device_id, &contacts))
            .await
    }

    async fn list_contacts(&self, device_id: &str) -> StoreResult<Vec<Contact>> {
        let device_id = device_id.to_owned();
        self.read(move |c| directory::list_contacts(c, &device_id))
            .await
    }

    async fn create_group(&self, group: GroupRecord) -> StoreResult<()> {
        self.write(move |c| directory::create_group(c, &group))
            .await
    }

    async fn get_group(&self, id: &str) -> StoreResult<Option<GroupRecord>> {
        let id = id.to_owned();
        self.read(move |c| directory::get_group(c, &id)).await
    }

    async fn add_group_members(
        &self,
        id: &str,
        members: &[String],
        max_members: usize,
    ) -> StoreResult<Option<GroupRecord>> {
        let id = id.to_owned();
        let added = members.to_vec();
        self.write(move |c| {
            directory::change_members(c, &id, |members| {
                let before = members.len();
                members.extend(added);
                members.sort();
                members.dedup();
                if members.len() > max_members {
                    return Err(StoreError::Limit(format!(
                        "a group has at most {max_members} members"
                    )));
                }
                Ok(members.len() != before)
            })
            .map(|found| found.map(|(g, _)| g))
        })
        .await
    }

    async fn remove_group_member(
        &self,
        id: &str,
        address: &str,
    ) -> StoreResult<Option<(GroupRecord, bool)>> {
        let id = id.to_owned();
        let address = address.to_owned();
        self.write(move |c| {
            directory::change_members(c, &id, |members| {
                let before = members.len();
                members.retain(|m| *m != address);
                Ok(members.len() != before)
            })
        })
        .await
    }

    async fn upsert_groups(&self, groups: Vec<GroupRecord>) -> StoreResult<Vec<GroupRecord>> {
        self.write(move |c| directory::upsert_groups(c, groups))
            .await
    }

    async fn commit_rows(&self, rows: Arc<Vec<InboxRow>>) -> StoreResult<Vec<RowResult>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |c| inbox::commit_rows(c, &rows)).await
    }

    async fn last_seq(&self, device_id: &str) -> StoreResult<u64> {
        let device_id = device_id.to_owned();
        self.read(move |c| inbox::last_seq(c, &device_id)).await
    }

    async fn read_inbox(
        &self,
        device_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<InboxRow>> {
        let device_id = device_id.to_owned();
        self.read(move |c| inbox::read_inbox(c, &device_id, after_seq, limit))
            .await
    }

    async fn inbox_messages(
        &self,
        device_id: &str,
        message_ids: &[String],
    ) -> StoreResult<Vec<InboxRow>> {
        let device_id = device_id.to_owned();
        let ids = message_ids.to_vec();
        self.read(move |c| inbox::inbox_messages(c, &device_id, &ids))
            .await
    }

    async fn message_copies(&self, message_id: &str) -> StoreResult<Vec<MessageCopy>> {
        let message_id = message_id.to_owned();
        self.read(move |c| inbox::message_copies(c, &message_id))
            .await
    }

    async fn statuses(&self, device_id: &str, message_id: &str) -> StoreResult<Vec<StatusEntry>> {
        let (device_id, message_id) = (device_id.to_owned(), message_id.to_owned());
        self.read(move |c| inbox::statuses(c, &device_id, &message_id))
            .await
    }

    async fn recent_client_ids(
        &self,
        device_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<AcceptedSend>> {
        let device_id = device_id.to_owned();
        self.read(move |c| inbox::recent_client_ids(c, &device_id, limit))
            .await
    }

    async fn sends_by_client_id(
        &self,
        device_id: &str,
        client_id: &str,
    ) -> StoreResult<Vec<AcceptedSend>> {
        let (device_id, client_id) = (device_id.to_owned(), client_id.to_owned());
        self.read(move |c| inbox::sends_by_client_id(c, &device_id, &client_id))
            .await
    }

    async fn message_stats(
        &self,
        tenant_id: &str,
        device_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<DayStats>> {
        let tenant_id = tenant_id.to_owned();
        let device_id = device_id.map(str::to_owned);
        self.read(move |c| reports::message_stats(c, &tenant_id, device_id.as_deref(), from, to))
            .await
    }

    async fn insert_jobs(&self, bodies: Vec<SharedBody>, jobs: Vec<JobRecord>) -> StoreResult<()> {
        self.write(move |c| jobs::insert_jobs(c, &bodies, &jobs))
            .await
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let id = id.to_owned();
        self.read(move |c| jobs::get_job(c, &id)).await
    }

    async fn job_body(&self, id: &str) -> StoreResult<Option<Arc<str>>> {
        let id = id.to_owned();
        self.read(move |c| jobs::job_body(c, &id)).await
    }

    async fn queue_tail(&self, tenant_id: &str, lane: Priority) -> StoreResult<Option<i64>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |c| jobs::queue_tail(c, &tenant_id, lane))
            .await
    }

    async fn requeue_active_jobs(&self) -> StoreResult<u64> {
        self.write(|c| jobs::requeue_active(c)).await
    }

    async fn promote_due_jobs(&self, now: i64) -> StoreResult<u64> {
        self.write(move |c| jobs::promote_due(c, now)).await
    }

    async fn claim_jobs(
        &self,
        now: i64,
        limit: usize,
        paused: &[Priority],
        claim: &JobClaim,
    ) -> StoreResult<Vec<JobRecord>> {
        let paused = paused.to_vec();
        let claim = claim.clone();
        self.write(move |c| jobs::claim(c, now, limit, &paused, &claim))
            .await
    }

    async fn finish_jobs(&self, updates: Vec<JobUpdate>, now: i64, owner: &str) -> StoreResult<()> {
        let owner = owner.to_owned();
        self.write(move |c| jobs::finish(c, &updates, now, &owner))
            .await
    }

    async fn renew_job_claims(&self, owner: &str, lease_until: i64) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.write(move |c| jobs::renew_claims(c, &owner, lease_until))
            .await
    }

    async fn reclaim_jobs(&self, now: i64) -> StoreResult<u64> {
        self.write(move |c| jobs::reclaim(c, now)).await
    }

    async fn release_job_claims(&self, owner: &str) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.write(move |c| jobs::release_claims(c, &owner)).await
    }

    async fn set_lane_paused(&self, lane: Priority, paused: bool) -> StoreResult<()> {
        self.write(move |c| jobs::set_lane_paused(c, lane, paused))
            .await
    }

    async fn paused_lanes(&self) -> StoreResult<Vec<Priority>> {
        self.read(jobs::paused_lanes).await
    }

    async fn set_job_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| jobs::set_progress(c, &id, done, now))
            .await
    }

    async fn cancel_job(&self, id: &str, now: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| jobs::cancel(c, &id, now)).await
    }

    async fn retry_job(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| jobs::retry(c, &id, now, rank)).await
    }

    async fn prune_jobs(&self, before: i64, limit: usize) -> StoreResult<u64> {
        self.write(move |c| jobs::prune(c, before, limit)).await
    }

    async fn queue_counts(&self) -> StoreResult<Vec<QueueCount>> {
        self.read(jobs::queue_counts).await
    }

    async fn lane_depths(&self) -> StoreResult<[u64; 4]> {
        self.read(jobs::lane_depths).await
    }

    async fn put_node(&self, node: NodeRecord) -> StoreResult<()> {
        self.write(move |c| cluster::put_node(c, &node)).await
    }

    async fn renew_node(&self, id: &str, lease_until: i64, load: NodeLoad) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| cluster::renew_node(c, &id, lease_until, load))
            .await
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.read(cluster::list_nodes).await
    }

    async fn remove_node(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |c| cluster::remove_node(c, &id)).await
    }

    async fn get_owner(&self, device_id: &str) -> StoreResult<Option<OwnerRecord>> {
        let device_id = device_id.to_owned();
        self.read(move |c| cluster::get_owner(c, &device_id)).await
    }

    async fn claim_owner(
        &self,
        device_id: &str,
        node: &str,
        seen: Option<u64>,
        now: i64,
    ) -> StoreResult<Option<OwnerRecord>> {
        let (device_id, node) = (device_id.to_owned(), node.to_owned());
        self.write(move |c| cluster::claim_owner(c, &device_id, &node, seen, now))
            .await
    }

    async fn release_owner(
        &self,
        device_id: &str,
        node: &str,
        epoch: u64,
        now: i64,
    ) -> StoreResult<bool> {
        let (device_id, node) = (device_id.to_owned(), node.to_owned());
        self.write(move |c| cluster::release_owner(c, &device_id, &node, epoch, now))
            .await
    }

    async fn fence_inbox(
        &self,
        device_id: &str,
        from: u64,
        count: u64,
        epoch: u64,
    ) -> StoreResult<()> {
        let device_id = device_id.to_owned();
        self.write(move |c| inbox::fence_inbox(c, &device_id, from, count, epoch))
            .await
    }

    async fn create_webhook(&self, endpoint: EndpointRecord) -> StoreResult<()> {
        self.write(move |c| webhooks::create(c, &endpoint)).await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<EndpointRecord>> {
        let id = id.to_owned();
        self.read(move |c| webhooks::get(c, &id)).await
    }

    async fn list_webhooks(&self, tenant_id: &str) -> StoreResult<Vec<EndpointRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |c| webhooks::list(c, &tenant_id)).await
    }

    async fn update_webhook(&self, endpoint: EndpointRecord) -> StoreResult<bool> {
        self.write(move |c| webhooks::update(c, &endpoint)).await
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| webhooks::delete(c, &id)).await
    }

    async fn enqueue_webhook_deliveries(&self, deliveries: Vec<DeliveryRecord>) -> StoreResult<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.write(move |c| webhooks::enqueue(c, &deliveries)).await
    }

    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        limit: usize,
        skip: &[String],
        claim: &JobClaim,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (skip, claim) = (skip.to_vec(), claim.clone());
        self.write(move |c| webhooks::claim(c, now, limit, &skip, &claim))
            .await
    }

    async fn finish_webhook_deliveries(
        &self,
        outcomes: Vec<DeliveryOutcome>,
        now: i64,
        owner: &str,
    ) -> StoreResult<u64> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let owner = owner.to_owned();
        self.write(move |c| webhooks::finish(c, &outcomes, now, &owner))
            .await
    }

    async fn list_webhook_deliveries(
        &self,
        endpoint_id: &str,
        state: Option<DeliveryState>,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        let endpoint_id = endpoint_id.to_owned();
        let before = before.map(str::to_owned);
        self.read(move |c| webhooks::log(c, &endpoint_id, state, before.as_deref(), limit))
            .await
    }

    async fn replay_webhook_dead_letters(
        &self,
        endpoint_id: &str,
        ids: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<u64> {
        let endpoint_id = endpoint_id.to_owned();
        self.write(move |c| webhooks::replay(c, &endpoint_id, ids.as_deref(), now))
            .await
    }

    async fn webhook_outbox_depths(&self) -> StoreResult<Vec<(String, u64)>> {
        self.read(webhooks::depths).await
    }

    async fn prune_webhook_deliveries(&self, before: i64, limit: usize) -> StoreResult<u64> {
        self.write(move |c| webhooks::prune(c, before, limit)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopen_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/db.sqlite");
        {
            let store = SqliteStore::open(&path, true).unwrap();
            store
                .create_tenant(TenantRecord {
                    id: "t1".into(),
                    name: "T".into(),
                    api_key_hash: "h".into(),
                    created_at: 1,
                })
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path, false).unwrap();
        assert_eq!(store.list_tenants().await.unwrap().len(), 1);
        let version: i64 = store
            .read(|c| {
                c.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(unavailable)
            })
            .await
            .unwrap();
        assert_eq!(version, schema::VERSION);
    }
}
