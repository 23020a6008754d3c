//! SQLite store: the embedded default backend of the actor crate's [`Store`] trait.
//!
//! It owns every durable table of the server: tenants, devices, contacts, groups and
//! the per-device inboxes.
//!
//! Design:
//! - **One writer connection** behind a mutex. SQLite allows one writer at a time
//!   anyway; serializing writes in-process avoids `SQLITE_BUSY` churn and lets the
//!   connection keep its prepared-statement cache warm.
//! - **A small pool of reader connections** (`query_only`). In WAL mode readers never
//!   block the writer nor each other, so reads scale while a commit is in flight.
//! - **WAL journal** with `synchronous=NORMAL` by default: a commit survives a crash
//!   or `kill -9` of the process (the WAL is in the OS page cache), but the last
//!   commits may be lost on power loss or OS crash. `synchronous=FULL` (on request)
//!   also survives power loss, at the cost of an fsync per commit.
//! - **Group commit**: the inbox actors batch accepted messages and hand them to
//!   [`Store::commit_inbox`], which inserts the whole batch in one transaction with a
//!   cached prepared statement, so one fsync (if any) covers many messages.
//!
//! All blocking SQLite work runs on tokio's blocking pool (`spawn_blocking`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actors::jobs::{JobRecord, JobUpdate, QueueCount};
use actors::store::{
    AcceptedSend, DeviceRecord, GroupRecord, InboxEntry, Store, StoreError, StoreResult,
    TenantRecord,
};
use async_trait::async_trait;
use protocol::rest::Contact;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

mod jobs;
#[path = "sqlite_stats.rs"]
mod stats;
pub use stats::{
    known_queries, DbFile, DbStats, IndexStat, OpStat, QueryPlan, SlowOp, SlowReport, TableDetail,
    SLOW_LOG_CAPACITY,
};

/// How many reader connections the pool holds.
const READERS: usize = 4;

/// Schema, created idempotently at open.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT,
    created_at INTEGER NOT NULL,
    last_seen INTEGER,
    UNIQUE (tenant_id, address)
);
CREATE TABLE IF NOT EXISTS contacts (
    device_id TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    members TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_tenant ON groups (tenant_id);
CREATE TABLE IF NOT EXISTS inbox (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT,
    group_id TEXT,
    body TEXT NOT NULL,
    client_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_device_seq ON inbox (device_id, seq);
CREATE INDEX IF NOT EXISTS inbox_message ON inbox (message_id);
";

const DEVICE_COLUMNS: &str = "id, tenant_id, address, name, created_at, last_seen";
const INBOX_COLUMNS: &str =
    "device_id, seq, message_id, ts, sender, recipient, group_id, body, client_id";

/// Size, row count and indexes of one table (for the admin endpoint).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStat {
    /// Table name.
    pub name: String,
    /// Number of rows.
    pub rows: u64,
    /// Names of the table's indexes.
    pub indexes: Vec<String>,
}

/// SQLite implementation of [`Store`]: one writer connection and a pool of readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Per-operation timings and the slow-operation log (see `sqlite_stats.rs`).
    ops: stats::OpLog,
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

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    Ok(TenantRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        api_key_hash: row.get(2)?,
        created_at: row.get(3)?,
    })
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        address: row.get(2)?,
        name: row.get(3)?,
        created_at: row.get(4)?,
        last_seen: row.get(5)?,
    })
}

fn inbox_from_row(row: &Row<'_>) -> rusqlite::Result<InboxEntry> {
    Ok(InboxEntry {
        device_id: row.get(0)?,
        seq: row.get(1)?,
        message_id: row.get(2)?,
        ts: row.get(3)?,
        from: row.get(4)?,
        to: row.get(5)?,
        group: row.get(6)?,
        body: row.get(7)?,
        client_id: row.get(8)?,
    })
}

/// A group row with its members still JSON-encoded.
fn group_from_row(row: &Row<'_>) -> rusqlite::Result<(GroupRecord, String)> {
    Ok((
        GroupRecord {
            id: row.get(0)?,
            tenant_id: row.get(1)?,
            name: row.get(2)?,
            members: Vec::new(),
            created_at: row.get(4)?,
        },
        row.get(3)?,
    ))
}

fn encode_members(members: &[String]) -> StoreResult<String> {
    serde_json::to_string(members)
        .map_err(|e| StoreError::Unavailable(format!("encoding group members: {e}")))
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

        let writer = Connection::open(path).map_err(unavailable)?;
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
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        writer.execute_batch(jobs::SCHEMA).map_err(unavailable)?;

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
            ops: stats::OpLog::default(),
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
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            f(&mut conn)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("store task failed: {e}"))));
        self.inner
            .ops
            .record(std::any::type_name::<F>(), started.elapsed());
        result
    }

    /// Runs `f` on a reader connection (a free one if any), on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let conn = inner.reader();
            f(&conn)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("store task failed: {e}"))));
        self.inner
            .ops
            .record(std::any::type_name::<F>(), started.elapsed());
        result
    }

    /// Per-table row counts and index names (for the admin endpoint).
    pub async fn table_stats(&self) -> Result<Vec<TableStat>, StoreError> {
        self.read(|conn| {
            let tables: Vec<String> = conn
                .prepare(
                    "SELECT name FROM sqlite_master \
                     WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(unavailable)?;
            let mut index_stmt = conn
                .prepare(
                    "SELECT name FROM sqlite_master \
                     WHERE type = 'index' AND tbl_name = ?1 ORDER BY name",
                )
                .map_err(unavailable)?;
            let mut stats = Vec::with_capacity(tables.len());
            for name in tables {
                let quoted = name.replace('"', "\"\"");
                let rows: i64 = conn
                    .query_row(&format!("SELECT COUNT(*) FROM \"{quoted}\""), [], |r| {
                        r.get(0)
                    })
                    .map_err(unavailable)?;
                let indexes = index_stmt
                    .query_map([&name], |r| r.get(0))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                    .map_err(unavailable)?;
                stats.push(TableStat {
                    name,
                    rows: u64::try_from(rows).unwrap_or(0),
                    indexes,
                });
            }
            Ok(stats)
        })
        .await
    }

    /// Registered devices per tenant (for the admin tree's tenant summaries).
    pub async fn device_counts(
        &self,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT tenant_id, COUNT(*) FROM devices GROUP BY tenant_id")
                .and_then(|mut st| {
                    st.query_map([], |r| {
                        let n: i64 = r.get(1)?;
                        Ok((r.get::<_, String>(0)?, u64::try_from(n).unwrap_or(0)))
                    })?
                    .collect()
                })
                .map_err(unavailable)
        })
        .await
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

/// Inserts inbox rows inside an open transaction; a duplicate `(device_id, seq)` is a
/// `Conflict`. Request ids are not unique here: the device session deduplicates them.
fn insert_inbox_rows(conn: &Connection, rows: &[InboxEntry]) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO inbox \
             (device_id, seq, message_id, ts, sender, recipient, group_id, body, client_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(unavailable)?;
    for row in rows {
        stmt.execute(params![
            &*row.device_id,
            to_i64(row.seq, "seq")?,
            &*row.message_id,
            row.ts,
            &*row.from,
            row.to.as_deref(),
            row.group.as_deref(),
            &*row.body,
            row.client_id.as_deref(),
        ])
        .map_err(conflict_or_unavailable)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO tenants (id, name, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    tenant.id,
                    tenant.name,
                    tenant.api_key_hash,
                    tenant.created_at
                ])
            })
            .map_err(conflict_or_unavailable)?;
            Ok(())
        })
        .await
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> StoreResult<Option<TenantRecord>> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, api_key_hash, created_at FROM tenants WHERE api_key_hash = ?1",
            )
            .and_then(|mut st| st.query_row([&hash], tenant_from_row).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, name, api_key_hash, created_at FROM tenants ORDER BY created_at, id",
            )
            .and_then(|mut st| st.query_map([], tenant_from_row)?.collect())
            .map_err(unavailable)
        })
        .await
    }

    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO devices (id, tenant_id, address, name, created_at, last_seen) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    device.id,
                    device.tenant_id,
                    device.address,
                    device.name,
                    device.created_at,
                    device.last_seen
                ])
            })
            .map_err(conflict_or_unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"
            ))
            .and_then(|mut st| st.query_row([&id], device_from_row).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn device_by_address(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        let tenant_id = tenant_id.to_owned();
        let address = address.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = ?1 AND address = ?2"
            ))
            .and_then(|mut st| {
                st.query_row([&tenant_id, &address], device_from_row)
                    .optional()
            })
            .map_err(unavailable)
        })
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
        let limit = limit_i64(limit);
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .and_then(|mut st| {
                st.query_map(params![tenant_id, after, limit], device_from_row)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn delete_device(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let existed = tx
                .execute("DELETE FROM devices WHERE id = ?1", [&id])
                .map_err(unavailable)?
                > 0;
            tx.execute("DELETE FROM contacts WHERE device_id = ?1", [&id])
                .map_err(unavailable)?;
            tx.execute("DELETE FROM inbox WHERE device_id = ?1", [&id])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
    }

    async fn set_last_seen(&self, id: &str, ts: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![id, ts]))
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn upsert_contacts(&self, device_id: &str, contacts: &[Contact]) -> StoreResult<usize> {
        if contacts.is_empty() {
            return Ok(0);
        }
        let device_id = device_id.to_owned();
        let contacts = contacts.to_vec();
        self.write(move |conn| {
            let now = now_ms();
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO contacts (device_id, address, name, updated_at) \
                         VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (device_id, address) DO UPDATE SET \
                         name = excluded.name, updated_at = excluded.updated_at",
                    )
                    .map_err(unavailable)?;
                for c in &contacts {
                    st.execute(params![device_id, c.address, c.name, now])
                        .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(contacts.len())
        })
        .await
    }

    async fn list_contacts(&self, device_id: &str) -> StoreResult<Vec<Contact>> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT address, name FROM contacts WHERE device_id = ?1 ORDER BY address",
            )
            .and_then(|mut st| {
                st.query_map([&device_id], |r| {
                    Ok(Contact {
                        address: r.get(0)?,
                        name: r.get(1)?,
                    })
                })?
                .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn create_group(&self, group: GroupRecord) -> StoreResult<()> {
        let members = encode_members(&group.members)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO groups (id, tenant_id, name, members, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    group.id,
                    group.tenant_id,
                    group.name,
                    members,
                    group.created_at
                ])
            })
            .map_err(conflict_or_unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_group(&self, id: &str) -> StoreResult<Option<GroupRecord>> {
        let id = id.to_owned();
        self.read(move |conn| {
            let found = conn
                .prepare_cached(
                    "SELECT id, tenant_id, name, members, created_at FROM groups WHERE id = ?1",
                )
                .and_then(|mut st| st.query_row([&id], group_from_row).optional())
                .map_err(unavailable)?;
            match found {
                None => Ok(None),
                Some((mut group, members)) => {
                    group.members = serde_json::from_str(&members).map_err(|e| {
                        StoreError::Unavailable(format!("group {id}: bad members JSON: {e}"))
                    })?;
                    Ok(Some(group))
                }
            }
        })
        .await
    }

    async fn set_group_members(&self, id: &str, members: &[String]) -> StoreResult<()> {
        let id = id.to_owned();
        let members = encode_members(members)?;
        self.write(move |conn| {
            conn.prepare_cached("UPDATE groups SET members = ?2 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![id, members]))
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn commit_inbox(&self, rows: Arc<Vec<InboxEntry>>) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            insert_inbox_rows(&tx, &rows)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn last_seq(&self, device_id: &str) -> StoreResult<u64> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM inbox WHERE device_id = ?1")
                .and_then(|mut st| st.query_row([&device_id], |r| r.get(0)))
                .map_err(unavailable)
        })
        .await
    }

    async fn read_inbox(
        &self,
        device_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<InboxEntry>> {
        let device_id = device_id.to_owned();
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = limit_i64(limit);
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox \
                 WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))
            .and_then(|mut st| {
                st.query_map(params![device_id, after, limit], inbox_from_row)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn inbox_entry(
        &self,
        device_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<InboxEntry>> {
        let device_id = device_id.to_owned();
        let message_id = message_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox \
                 INDEXED BY inbox_message \
                 WHERE message_id = ?2 AND device_id = ?1 ORDER BY seq LIMIT 1"
            ))
            .and_then(|mut st| {
                st.query_row([&device_id, &message_id], inbox_from_row)
                    .optional()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn recent_client_ids(
        &self,
        device_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<AcceptedSend>> {
        let device_id = device_id.to_owned();
        let limit = limit_i64(limit);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT client_id, message_id, seq, ts FROM \
                 (SELECT client_id, message_id, seq, ts FROM inbox \
                  WHERE device_id = ?1 ORDER BY seq DESC LIMIT ?3) \
                 WHERE client_id IS NOT NULL ORDER BY seq DESC LIMIT ?2",
            )
            .and_then(|mut st| {
                st.query_map(params![device_id, limit, limit.saturating_mul(8)], |r| {
                    Ok(AcceptedSend {
                        client_id: r.get(0)?,
                        message_id: r.get(1)?,
                        seq: r.get(2)?,
                        ts: r.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn insert_jobs(&self, jobs: Vec<JobRecord>) -> StoreResult<()> {
        self.jobs_insert(jobs).await
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        self.jobs_get(id).await
    }

    async fn requeue_active_jobs(&self) -> StoreResult<u64> {
        self.jobs_requeue_active().await
    }

    async fn promote_due_jobs(&self, now: i64) -> StoreResult<u64> {
        self.jobs_promote_due(now).await
    }

    async fn claim_jobs(&self, now: i64, limit: usize) -> StoreResult<Vec<JobRecord>> {
        self.jobs_claim(now, limit, Vec::new()).await
    }

    async fn claim_jobs_except(
        &self,
        now: i64,
        limit: usize,
        paused: &[protocol::Priority],
    ) -> StoreResult<Vec<JobRecord>> {
        self.jobs_claim(now, limit, paused.to_vec()).await
    }

    async fn finish_jobs(&self, updates: Vec<JobUpdate>, now: i64) -> StoreResult<()> {
        self.jobs_finish(updates, now).await
    }

    async fn set_job_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()> {
        self.jobs_progress(id, done, now).await
    }

    async fn cancel_job(&self, id: &str, now: i64) -> StoreResult<bool> {
        self.jobs_cancel(id, now).await
    }

    async fn retry_job(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
        self.jobs_retry(id, now, rank).await
    }

    async fn queue_counts(&self) -> StoreResult<Vec<QueueCount>> {
        self.jobs_counts().await
    }

    async fn lane_depths(&self) -> StoreResult<[u64; 4]> {
        self.jobs_lane_depths().await
    }

    async fn job_sends(&self, device_id: &str, job_id: &str) -> StoreResult<Vec<AcceptedSend>> {
        self.jobs_sent(device_id, job_id).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    impl SqliteStore {
        async fn commit_vec(&self, rows: Vec<InboxEntry>) -> StoreResult<()> {
            self.commit_inbox(Arc::new(rows)).await
        }
    }

    fn open_tmp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub/db.sqlite"), false).unwrap();
        (dir, store)
    }

    fn tenant(id: &str) -> TenantRecord {
        TenantRecord {
            id: id.into(),
            name: format!("Tenant {id}"),
            api_key_hash: format!("hash-{id}"),
            created_at: 1000,
        }
    }

    fn device(id: &str, tenant: &str, address: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            address: address.into(),
            name: Some(format!("dev {id}")),
            created_at: 2000,
            last_seen: None,
        }
    }

    fn entry(device: &str, seq: u64, client_id: Option<&str>) -> InboxEntry {
        InboxEntry {
            device_id: device.into(),
            seq,
            message_id: Arc::from(format!("m{seq}").as_str()),
            ts: 10_000 + seq as i64,
            from: Arc::from("+15550000001"),
            to: Some(Arc::from("+15550000002")),
            group: None,
            body: Arc::from(format!("{{\"text\":\"hello {seq}\"}}").as_str()),
            client_id: client_id.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn tenants_and_devices() {
        let (_dir, store) = open_tmp();
        store.create_tenant(tenant("t1")).await.unwrap();
        store.create_tenant(tenant("t2")).await.unwrap();
        assert!(matches!(
            store.create_tenant(tenant("t1")).await,
            Err(StoreError::Conflict(_))
        ));
        let t = store.tenant_by_key_hash("hash-t1").await.unwrap().unwrap();
        assert_eq!(t.id, "t1");
        assert!(store.tenant_by_key_hash("nope").await.unwrap().is_none());
        assert_eq!(store.list_tenants().await.unwrap().len(), 2);

        store
            .create_device(device("d1", "t1", "+15550000001"))
            .await
            .unwrap();
        let dup = store
            .create_device(device("d2", "t1", "+15550000001"))
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        // Same address in another tenant is fine.
        store
            .create_device(device("d3", "t2", "+15550000001"))
            .await
            .unwrap();

        let d = store.get_device("d1").await.unwrap().unwrap();
        assert_eq!(d.address, "+15550000001");
        assert_eq!(d.name.as_deref(), Some("dev d1"));
        assert!(d.last_seen.is_none());
        store.set_last_seen("d1", 5555).await.unwrap();
        assert_eq!(
            store.get_device("d1").await.unwrap().unwrap().last_seen,
            Some(5555)
        );
        let d = store
            .device_by_address("t2", "+15550000001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.id, "d3");
        assert!(store.get_device("d2").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_devices_paging() {
        let (_dir, store) = open_tmp();
        for i in 0..7 {
            store
                .create_device(device(&format!("d{i}"), "t1", &format!("+1555000000{i}")))
                .await
                .unwrap();
        }
        store
            .create_device(device("x", "t2", "+15550000000"))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_devices("t1", after.as_deref(), 3).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            after = page.last().map(|d| d.id.clone());
            seen.extend(page.into_iter().map(|d| d.id));
        }
        let expected: Vec<String> = (0..7).map(|i| format!("d{i}")).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn contacts_upsert_and_list() {
        let (_dir, store) = open_tmp();
        let contacts = vec![
            Contact {
                address: "+2".into(),
                name: Some("Bob".into()),
            },
            Contact {
                address: "+1".into(),
                name: Some("Alice".into()),
            },
        ];
        assert_eq!(store.upsert_contacts("d1", &contacts).await.unwrap(), 2);
        let update = vec![
            Contact {
                address: "+2".into(),
                name: Some("Robert".into()),
            },
            Contact {
                address: "+3".into(),
                name: None,
            },
        ];
        assert_eq!(store.upsert_contacts("d1", &update).await.unwrap(), 2);
        let list = store.list_contacts("d1").await.unwrap();
        let got: Vec<(&str, Option<&str>)> = list
            .iter()
            .map(|c| (c.address.as_str(), c.name.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![("+1", Some("Alice")), ("+2", Some("Robert")), ("+3", None)]
        );
        assert!(store.list_contacts("d2").await.unwrap().is_empty());

        let many: Vec<Contact> = (0..10_000)
            .map(|i| Contact {
                address: format!("+1{i:09}"),
                name: Some(format!("c{i}")),
            })
            .collect();
        let start = std::time::Instant::now();
        assert_eq!(store.upsert_contacts("d2", &many).await.unwrap(), 10_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(store.list_contacts("d2").await.unwrap().len(), 10_000);
    }

    #[tokio::test]
    async fn groups() {
        let (_dir, store) = open_tmp();
        let g = GroupRecord {
            id: "g1".into(),
            tenant_id: "t1".into(),
            name: "Team".into(),
            members: vec!["+1".into(), "+2".into()],
            created_at: 3000,
        };
        store.create_group(g.clone()).await.unwrap();
        assert!(matches!(
            store.create_group(g).await,
            Err(StoreError::Conflict(_))
        ));
        let got = store.get_group("g1").await.unwrap().unwrap();
        assert_eq!(got.name, "Team");
        assert_eq!(got.tenant_id, "t1");
        assert_eq!(got.members, vec!["+1".to_string(), "+2".to_string()]);
        store
            .set_group_members("g1", &["+3".into(), "+4".into(), "+5".into()])
            .await
            .unwrap();
        let got = store.get_group("g1").await.unwrap().unwrap();
        assert_eq!(got.members, vec!["+3", "+4", "+5"]);
        assert!(store.get_group("g2").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn inbox_commit_and_read() {
        let (_dir, store) = open_tmp();
        store.commit_vec(Vec::new()).await.unwrap();
        assert_eq!(store.last_seq("d1").await.unwrap(), 0);

        // Committed out of order on purpose: reads come back in seq order.
        let rows = vec![
            entry("d1", 3, Some("c3")),
            entry("d1", 1, Some("c1")),
            entry("d1", 2, None),
            entry("d2", 1, None),
        ];
        store.commit_vec(rows).await.unwrap();
        let mut group_row = entry("d1", 4, None);
        group_row.to = None;
        group_row.group = Some(Arc::from("g1"));
        store
            .commit_vec(vec![group_row, entry("d1", 5, Some("c5"))])
            .await
            .unwrap();

        assert_eq!(store.last_seq("d1").await.unwrap(), 5);
        assert_eq!(store.last_seq("d2").await.unwrap(), 1);

        let page = store.read_inbox("d1", 0, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        let page = store.read_inbox("d1", 2, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(&*page[0].body, "{\"text\":\"hello 3\"}");
        assert_eq!(page[0].client_id.as_deref(), Some("c3"));
        assert_eq!(page[1].group.as_deref(), Some("g1"));
        assert!(page[1].to.is_none());
        let page = store.read_inbox("d1", 4, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
        assert!(store.read_inbox("d1", 5, 10).await.unwrap().is_empty());

        let e = store.inbox_entry("d1", "m3").await.unwrap().unwrap();
        assert_eq!(e.seq, 3);
        assert_eq!(&*e.from, "+15550000001");
        assert_eq!(e.to.as_deref(), Some("+15550000002"));
        assert_eq!(e.ts, 10_003);
        assert!(store.inbox_entry("d1", "nope").await.unwrap().is_none());
        assert!(store.inbox_entry("d2", "m3").await.unwrap().is_none());

        let recent = store.recent_client_ids("d1", 10).await.unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|a| (a.client_id.as_str(), a.seq))
                .collect::<Vec<_>>(),
            vec![("c5", 5), ("c3", 3), ("c1", 1)]
        );
        assert_eq!(
            recent[0],
            AcceptedSend {
                client_id: "c5".into(),
                message_id: "m5".into(),
                seq: 5,
                ts: 10_005,
            }
        );
        assert_eq!(store.recent_client_ids("d1", 2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn duplicate_client_id_and_seq() {
        let (_dir, store) = open_tmp();
        store
            .commit_vec(vec![entry("d1", 1, Some("c1"))])
            .await
            .unwrap();
        // Same client id again (other batch and within one batch): rows are kept as
        // they are; deduplication is the device session's job.
        store
            .commit_vec(vec![
                entry("d1", 2, Some("c1")),
                entry("d1", 3, Some("c3")),
                entry("d1", 4, Some("c3")),
            ])
            .await
            .unwrap();
        let rows = store.read_inbox("d1", 0, 10).await.unwrap();
        let ids: Vec<(u64, Option<&str>)> = rows
            .iter()
            .map(|e| (e.seq, e.client_id.as_deref()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (1, Some("c1")),
                (2, Some("c1")),
                (3, Some("c3")),
                (4, Some("c3"))
            ]
        );
        // The same client id on another device is independent.
        store
            .commit_vec(vec![entry("d2", 1, Some("c1"))])
            .await
            .unwrap();
        assert_eq!(store.recent_client_ids("d2", 10).await.unwrap().len(), 1);

        // A duplicate (device, seq) is a real conflict and rolls back the batch.
        let res = store
            .commit_vec(vec![entry("d1", 5, None), entry("d1", 3, None)])
            .await;
        assert!(matches!(res, Err(StoreError::Conflict(_))), "{res:?}");
        let res = store
            .commit_vec(vec![entry("d1", 6, Some("c6")), entry("d1", 6, Some("c7"))])
            .await;
        assert!(matches!(res, Err(StoreError::Conflict(_))), "{res:?}");
        assert_eq!(store.last_seq("d1").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn delete_device_removes_everything() {
        let (_dir, store) = open_tmp();
        store.create_device(device("d1", "t1", "+1")).await.unwrap();
        store.create_device(device("d2", "t1", "+2")).await.unwrap();
        store
            .upsert_contacts(
                "d1",
                &[Contact {
                    address: "+9".into(),
                    name: None,
                }],
            )
            .await
            .unwrap();
        store
            .commit_vec(vec![
                entry("d1", 1, Some("c1")),
                entry("d1", 2, None),
                entry("d2", 1, None),
            ])
            .await
            .unwrap();

        assert!(store.delete_device("d1").await.unwrap());
        assert!(!store.delete_device("d1").await.unwrap());
        assert!(store.get_device("d1").await.unwrap().is_none());
        assert!(store.read_inbox("d1", 0, 10).await.unwrap().is_empty());
        assert_eq!(store.last_seq("d1").await.unwrap(), 0);
        assert!(store.list_contacts("d1").await.unwrap().is_empty());
        assert!(store.recent_client_ids("d1", 10).await.unwrap().is_empty());
        // Other devices are untouched.
        assert_eq!(store.read_inbox("d2", 0, 10).await.unwrap().len(), 1);
        assert!(store.get_device("d2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let store = SqliteStore::open(&path, true).unwrap();
            store.create_tenant(tenant("t1")).await.unwrap();
            store.create_device(device("d1", "t1", "+1")).await.unwrap();
            store
                .commit_vec(vec![entry("d1", 1, Some("c1")), entry("d1", 2, None)])
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path, false).unwrap();
        assert_eq!(store.list_tenants().await.unwrap().len(), 1);
        assert!(store.get_device("d1").await.unwrap().is_some());
        assert_eq!(store.last_seq("d1").await.unwrap(), 2);
        assert_eq!(store.read_inbox("d1", 0, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn table_stats_lists_tables() {
        let (_dir, store) = open_tmp();
        store
            .commit_vec(vec![entry("d1", 1, None), entry("d1", 2, None)])
            .await
            .unwrap();
        let stats = store.table_stats().await.unwrap();
        let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
        for t in ["contacts", "devices", "groups", "inbox", "tenants"] {
            assert!(names.contains(&t), "{names:?}");
        }
        let inbox = stats.iter().find(|s| s.name == "inbox").unwrap();
        assert_eq!(inbox.rows, 2);
        assert!(inbox.indexes.contains(&"inbox_message".to_string()));
        assert!(inbox.indexes.contains(&"inbox_device_seq".to_string()));
        let groups = stats.iter().find(|s| s.name == "groups").unwrap();
        assert!(groups.indexes.contains(&"groups_tenant".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reads_and_writes() {
        let (_dir, store) = open_tmp();
        let mut tasks = Vec::new();
        for d in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let dev = format!("d{d}");
                for seq in 1..=20u64 {
                    store
                        .commit_vec(vec![entry(&dev, seq, None)])
                        .await
                        .unwrap();
                    assert_eq!(store.last_seq(&dev).await.unwrap(), seq);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.read_inbox("d7", 0, 100).await.unwrap().len(), 20);
    }
}
