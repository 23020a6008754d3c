//! The SQLite schema and its migrations (`PRAGMA user_version`).
//!
//! - v1: inbox rows each held a full copy of their message.
//! - v2: messages are stored once (`messages`); an inbox row is a small key row
//!   pointing at a message, or a status of one (receipts); jobs may point at a shared
//!   body; finished jobs are pruned, their counts kept in `job_totals`; groups carry a
//!   version.
//! - v3 (`docs/cluster.md`): every inbox row carries the fencing epoch of the session
//!   that wrote it (0 on one node), and an inbox holds a message at most once
//!   (`inbox_message_once`); a job claim has an owner and a lease; node leases
//!   (`nodes`), device ownership (`owners`) and lane pauses (`lanes`) are tables.
//! - The `media` table (uploaded files' metadata, `media.rs`) came later, without a
//!   version: a new table needs no migration, [`SCHEMA`] creates it where missing.
//! - v3 also holds outbound webhooks (`webhooks`, `webhook_deliveries`): new tables
//!   only, created on open like every table, so no version bump.
//! - v4: the inbox's message-id indexes are keyed by message id first and split by
//!   kind: `inbox_copy (message_id, device_id) WHERE kind = 0` (unique: it replaces
//!   both `inbox_message (message_id)` and `inbox_message_once (device_id,
//!   message_id)`) and `inbox_status (message_id, device_id) WHERE kind > 0`. Message
//!   ids are ULIDs, so a commit's new copies land on the last page of one index
//!   instead of a page per inbox in two: one B-tree insert and one WAL page fewer per
//!   copy. And `jobs_finished` names its three states with `OR`: SQLite evaluates a
//!   partial index's `IN` list of three or more values through a temporary B-tree
//!   built for each insert and for both row images of each update (five per queued
//!   send, 8 % of a bulk drain's instructions).

use rusqlite::{Connection, ErrorCode};

/// The schema version this code writes.
pub const VERSION: i64 = 4;

/// Every table and index of v4 but `inbox_copy` ([`MESSAGE_ONCE`]), created
/// idempotently.
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
    created_at INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS groups_tenant ON groups (tenant_id);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender_device TEXT,
    sender TEXT NOT NULL,
    recipient TEXT,
    group_id TEXT,
    body TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    by_addr TEXT,
    ts INTEGER NOT NULL,
    client_id TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_status ON inbox (message_id, device_id) WHERE kind > 0;
CREATE INDEX IF NOT EXISTS inbox_sent ON inbox (device_id, seq) WHERE client_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_client ON inbox (device_id, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_status_time ON inbox (device_id, ts) WHERE kind > 0;
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender_device, ts);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    target_to TEXT,
    target_group TEXT,
    body TEXT NOT NULL,
    message_id TEXT,
    error TEXT,
    send_at INTEGER,
    not_before INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    body_ref TEXT,
    owner TEXT,
    lease_until INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (rank) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS jobs_delayed ON jobs (not_before) WHERE state = 'delayed';
CREATE INDEX IF NOT EXISTS jobs_pending_lane ON jobs (lane, state) WHERE state IN ('waiting', 'delayed');
CREATE INDEX IF NOT EXISTS jobs_tail ON jobs (tenant_id, lane, rank) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS jobs_device_pending ON jobs (device_id) WHERE state IN ('waiting', 'delayed');
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (updated_at)
    WHERE state = 'completed' OR state = 'failed' OR state = 'cancelled';
CREATE INDEX IF NOT EXISTS jobs_body_ref ON jobs (body_ref) WHERE body_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_device_created ON jobs (device_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_active_owner ON jobs (owner) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS jobs_active_lease ON jobs (lease_until) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS job_bodies (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_totals (
    tenant_id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    state TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, lane, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lanes (
    lane INTEGER PRIMARY KEY,
    paused INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    draining INTEGER NOT NULL,
    connections INTEGER NOT NULL,
    sessions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    device_id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    clean INTEGER NOT NULL,
    since INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    name TEXT,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    sha256 TEXT,
    width INTEGER,
    height INTEGER,
    thumb_mime TEXT,
    thumb_size INTEGER,
    thumb_width INTEGER,
    thumb_height INTEGER,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    description TEXT,
    enabled INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks (tenant_id, id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    event TEXT NOT NULL,
    order_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status_key TEXT,
    status_rank INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    owner TEXT,
    lease_until INTEGER,
    last_error TEXT,
    last_code INTEGER,
    last_latency_ms INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_leased ON webhook_deliveries (lease_until) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS webhook_queue ON webhook_deliveries (endpoint_id, device_id, order_key, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS webhook_status ON webhook_deliveries (endpoint_id, status_key, status_rank)
    WHERE status_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_log ON webhook_deliveries (endpoint_id, id);
CREATE INDEX IF NOT EXISTS webhook_finished ON webhook_deliveries (updated_at)
    WHERE state IN ('delivered', 'dropped');
";

/// Every copy of a message, and an inbox holds a message at most once (a redelivered
/// row finds it already there). Created apart from [`SCHEMA`]: a database written
/// before v3 may hold a message twice in one inbox, and then gets the same index
/// without uniqueness ([`COPIES_NOT_UNIQUE`]), with a warning.
const MESSAGE_ONCE: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS inbox_copy ON inbox (message_id, device_id) \
     WHERE kind = 0";
/// [`MESSAGE_ONCE`] for an inbox that already holds a message twice.
const COPIES_NOT_UNIQUE: &str =
    "CREATE INDEX IF NOT EXISTS inbox_copy ON inbox (message_id, device_id) WHERE kind = 0";
/// v3 → v4: the indexes v4 replaces (`jobs_finished` is recreated with `OR`).
const V3_INDEXES: &str = "
DROP INDEX IF EXISTS inbox_message;
DROP INDEX IF EXISTS inbox_message_once;
DROP INDEX IF EXISTS jobs_finished;
";

/// v1 → v2, first step: the old inbox moves aside (its indexes go, their names are
/// reused by v2).
const V1_ASIDE: &str = "
ALTER TABLE inbox RENAME TO inbox_v1;
DROP INDEX IF EXISTS inbox_device_seq;
DROP INDEX IF EXISTS inbox_message;
DROP INDEX IF EXISTS inbox_job_send;
";

/// Columns v2 and v3 added to tables older versions had (added where missing).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("groups", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "body_ref", "TEXT"),
    ("inbox", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "owner", "TEXT"),
    ("jobs", "lease_until", "INTEGER"),
];

/// Copies v1 inbox rows into v2 (run after [`SCHEMA`] created the v2 tables).
const V1_COPY: &str = "
INSERT OR IGNORE INTO messages (id, sender_device, sender, recipient, group_id, body, ts)
    SELECT i.message_id, s.id, i.sender, i.recipient, i.group_id, i.body, i.ts
    FROM inbox_v1 i
    LEFT JOIN devices r ON r.id = i.device_id
    LEFT JOIN devices s ON s.tenant_id = r.tenant_id AND s.address = i.sender
    ORDER BY i.device_id, i.seq;
INSERT INTO inbox (device_id, seq, kind, message_id, by_addr, ts, client_id)
    SELECT device_id, seq, 0, message_id, NULL, ts, client_id FROM inbox_v1;
DROP TABLE inbox_v1;
";

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names.iter().any(|n| n == column))
}

/// Creates [`MESSAGE_ONCE`] unless it exists; an inbox holding a message twice (a
/// database from before v3) gets it without uniqueness, with a warning.
fn ensure_message_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("SAVEPOINT message_once")?;
    match conn.execute_batch(MESSAGE_ONCE) {
        Ok(()) => conn.execute_batch("RELEASE message_once"),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
            conn.execute_batch("ROLLBACK TO message_once; RELEASE message_once")?;
            tracing::warn!(
                error = %e,
                "an inbox holds a message twice: the index inbox_copy is not unique \
                 (a redelivered message may be stored twice)"
            );
            conn.execute_batch(COPIES_NOT_UNIQUE)
        }
        Err(e) => Err(e),
    }
}

/// Brings the database to [`VERSION`]: creates a new one, or migrates an older one.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= VERSION {
        conn.execute_batch(SCHEMA)?;
        ensure_message_once(conn)?;
        return Ok(());
    }
    let tx = conn.transaction()?;
    let v1_inbox = has_column(&tx, "inbox", "body")?;
    if v1_inbox {
        tracing::info!("migrating the database from schema v1 to v2");
        tx.execute_batch(V1_ASIDE)?;
    }
    for (table, column, decl) in ADDED_COLUMNS {
        let exists: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if exists && !has_column(&tx, table, column)? {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    tx.execute_batch(V3_INDEXES)?;
    tx.execute_batch(SCHEMA)?;
    if v1_inbox {
        tx.execute_batch(V1_COPY)?;
    }
    ensure_message_once(&tx)?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    if version > 0 {
        tracing::info!(from = version, to = VERSION, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_database_is_migrated_with_its_data() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE devices (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, address TEXT NOT NULL,
                name TEXT, created_at INTEGER NOT NULL, last_seen INTEGER, UNIQUE (tenant_id, address));
             CREATE TABLE groups (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL,
                members TEXT NOT NULL, created_at INTEGER NOT NULL);
             CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, tenant_id TEXT NOT NULL,
                device_id TEXT NOT NULL, lane INTEGER NOT NULL, state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, target_to TEXT, target_group TEXT,
                body TEXT NOT NULL, message_id TEXT, error TEXT, send_at INTEGER,
                not_before INTEGER NOT NULL, rank INTEGER NOT NULL, created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL, progress_done INTEGER NOT NULL DEFAULT 0,
                progress_total INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE inbox (device_id TEXT NOT NULL, seq INTEGER NOT NULL, message_id TEXT NOT NULL,
                ts INTEGER NOT NULL, sender TEXT NOT NULL, recipient TEXT, group_id TEXT,
                body TEXT NOT NULL, client_id TEXT);
             CREATE UNIQUE INDEX inbox_device_seq ON inbox (device_id, seq);
             CREATE INDEX inbox_message ON inbox (message_id);
             INSERT INTO devices VALUES ('a', 't', '+1', NULL, 1, NULL), ('b', 't', '+2', NULL, 1, NULL);
             INSERT INTO groups VALUES ('g', 't', 'G', '[\"+1\"]', 1);
             INSERT INTO inbox VALUES ('a', 1, 'm1', 5, '+1', '+2', NULL, '{\"x\":1}', 'c1'),
                                      ('b', 1, 'm1', 5, '+1', '+2', NULL, '{\"x\":1}', NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        let (sender_device, body): (String, String) = conn
            .query_row(
                "SELECT sender_device, body FROM messages WHERE id = 'm1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((sender_device.as_str(), body.as_str()), ("a", "{\"x\":1}"));
        let rows: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM inbox WHERE message_id = 'm1' AND kind = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 2);
        let client: String = conn
            .query_row(
                "SELECT client_id FROM inbox WHERE device_id = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(client, "c1");
        let version: i64 = conn
            .query_row("SELECT version FROM groups WHERE id = 'g'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, 0);
        // Running it again changes nothing.
        migrate(&mut conn).unwrap();
    }

    /// The one value `sql` answers.
    fn scalar<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn index_names(conn: &Connection) -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_v3_database_gets_the_v4_inbox_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        // Back to v3's message-id indexes, with a message and a status in them.
        conn.execute_batch(
            "DROP INDEX inbox_copy; DROP INDEX inbox_status;
             CREATE INDEX inbox_message ON inbox (message_id);
             CREATE UNIQUE INDEX inbox_message_once ON inbox (device_id, message_id) WHERE kind = 0;
             DROP INDEX jobs_finished;
             CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN ('completed', 'failed', 'cancelled');
             INSERT INTO inbox (device_id, seq, kind, message_id, ts) VALUES ('a', 1, 0, 'm1', 5), ('a', 2, 1, 'm1', 6);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let finished: String = scalar(
            &conn,
            "SELECT sql FROM sqlite_master WHERE name = 'jobs_finished'",
        );
        assert!(!finished.contains(" IN "), "{finished}");
        let names = index_names(&conn);
        assert!(names.contains(&"inbox_copy".to_owned()), "{names:?}");
        assert!(names.contains(&"inbox_status".to_owned()), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("inbox_message")),
            "{names:?}"
        );
        let v: i64 = scalar(&conn, "PRAGMA user_version");
        assert_eq!(v, VERSION);
        // Still one copy per inbox: the same message at another seq is ignored.
        let written = conn
            .execute("INSERT OR IGNORE INTO inbox (device_id, seq, kind, message_id, ts) VALUES ('a', 3, 0, 'm1', 7)", [])
            .unwrap();
        assert_eq!(written, 0);
        // But another inbox may hold it.
        let written = conn
            .execute("INSERT OR IGNORE INTO inbox (device_id, seq, kind, message_id, ts) VALUES ('b', 1, 0, 'm1', 7)", [])
            .unwrap();
        assert_eq!(written, 1);
    }

    #[test]
    fn an_inbox_holding_a_message_twice_gets_copies_without_uniqueness() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "DROP INDEX inbox_copy;
             INSERT INTO inbox (device_id, seq, kind, message_id, ts) VALUES ('a', 1, 0, 'm1', 5), ('a', 2, 0, 'm1', 6);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        assert!(index_names(&conn).contains(&"inbox_copy".to_owned()));
        let unique: i64 = scalar(
            &conn,
            "SELECT \"unique\" FROM pragma_index_list('inbox') WHERE name = 'inbox_copy'",
        );
        assert_eq!(unique, 0);
    }

    #[test]
    fn job_writes_build_no_temporary_b_tree() {
        // A partial index's `IN` list of three or more values is evaluated through a
        // temporary B-tree on every write of the table (see the v4 notes above).
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let statements = [
            super::super::jobs::insert_job_sql(),
            super::super::jobs::CLAIM_ONE.to_owned(),
            super::super::jobs::FINISH_COMPLETED.to_owned(),
            super::super::jobs::FINISH_FAILED.to_owned(),
        ];
        for sql in statements {
            let mut st = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; st.parameter_count()];
            let ops: Vec<String> = st
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(1))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{sql}: {ops:?}");
        }
    }
}
