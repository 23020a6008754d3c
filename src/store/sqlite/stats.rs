//! Statistics of the SQLite store for `GET /admin/db/stats`: per-table rows and sizes,
//! indexes and the queries that use them, per-operation call counts, and a bounded log
//! of slow operations (the replaced system's `analyzeIndexUsage` and `getSlowQueries`).
//!
//! - **Operations** are timed in [`SqliteStore`]'s `read` / `write` helpers, around the
//!   whole call (blocking-pool wait and connection lock included: that is what a caller
//!   waits). The operation's name is the store method's, taken from the type name of
//!   the closure it passes (a `&'static str`, so the hot path neither allocates nor
//!   formats): every method, including ones added later, is covered without touching it.
//! - **Index use**: SQLite keeps no usage counters. At request time we run `EXPLAIN
//!   QUERY PLAN` on the store's known read queries ([`known_queries`]) and list, for each
//!   index, the operations whose plan uses it; `uses` sums those operations' calls.
//! - **Sizes** come from the `dbstat` virtual table (compiled into the bundled SQLite),
//!   else only the whole file's size from `page_count × page_size`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actors::store::StoreError;
use rusqlite::Connection;
use serde::Serialize;

use super::{now_ms, unavailable, SqliteStore};

/// Slow operations kept, newest last; older ones are dropped.
pub const SLOW_LOG_CAPACITY: usize = 1000;

/// Default slow-operation threshold.
const DEFAULT_SLOW_US: u64 = 100_000;

/// One store operation slower than the threshold.
#[derive(Debug, Clone, Serialize)]
pub struct SlowOp {
    /// Store method (e.g. `commit_inbox`).
    pub operation: &'static str,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
    /// When it finished, Unix milliseconds.
    pub at: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct OpTotals {
    calls: u64,
    total_us: u64,
    max_us: u64,
}

/// Call counts per operation and the slow-operation ring buffer.
#[derive(Debug)]
pub(super) struct OpLog {
    threshold_us: AtomicU64,
    slow: Mutex<VecDeque<SlowOp>>,
    totals: Mutex<HashMap<&'static str, OpTotals>>,
}

impl Default for OpLog {
    fn default() -> Self {
        OpLog {
            threshold_us: AtomicU64::new(DEFAULT_SLOW_US),
            slow: Mutex::new(VecDeque::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }
}

/// The store method a closure passed to `read` / `write` belongs to:
/// `…::SqliteStore as …::Store>::read_inbox::{{closure}}::{{closure}}` → `read_inbox`.
fn op_name(closure_type: &'static str) -> &'static str {
    let path = closure_type
        .find("::{{closure}}")
        .map_or(closure_type, |i| &closure_type[..i]);
    let last = path.rsplit("::").next().unwrap_or(path);
    // `last_seq<'_, '_, '_>`: drop the (lifetime) generics.
    last.split('<').next().unwrap_or(last)
}

impl OpLog {
    /// Records one finished operation (`closure_type` is `type_name` of its closure).
    pub(super) fn record(&self, closure_type: &'static str, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let name = op_name(closure_type);
        {
            let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            let t = totals.entry(name).or_default();
            t.calls += 1;
            t.total_us = t.total_us.saturating_add(us);
            t.max_us = t.max_us.max(us);
        }
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        if us > threshold || threshold == 0 {
            let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
            if slow.len() >= SLOW_LOG_CAPACITY {
                slow.pop_front();
            }
            slow.push_back(SlowOp {
                operation: name,
                duration_ms: us as f64 / 1000.0,
                at: now_ms(),
            });
        }
    }

    fn totals(&self) -> HashMap<&'static str, OpTotals> {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The read queries the store runs, by operation: the same constants the store
/// executes. (Inserts and upserts are not listed: they maintain every index of their
/// table.)
pub fn known_queries() -> Vec<(&'static str, String)> {
    use super::{directory as d, inbox as i, jobs as j};
    [
        ("tenant_by_key_hash", d::TENANT_BY_KEY),
        ("list_tenants", d::LIST_TENANTS),
        ("get_device", d::GET_DEVICE),
        ("device_by_address", d::DEVICE_BY_ADDRESS),
        ("list_devices", d::LIST_DEVICES),
        ("device_counts", d::DEVICE_COUNTS),
        ("set_last_seen", d::SET_LAST_SEEN),
        ("delete_device", d::DELETE_DEVICE),
        ("delete_device", d::DELETE_CONTACTS),
        ("delete_device", i::DELETE_ORPHAN_MESSAGES),
        ("delete_device", i::DELETE_INBOX),
        ("delete_device", j::CANCEL_DEVICE_JOBS),
        ("list_contacts", d::LIST_CONTACTS),
        ("get_group", d::GET_GROUP),
        ("last_seq", i::LAST_SEQ),
        ("read_inbox", i::READ_INBOX),
        ("inbox_messages", i::INBOX_MESSAGE),
        ("message_copies", i::MESSAGE_COPIES),
        ("statuses", i::STATUSES),
        ("recent_client_ids", i::RECENT_CLIENT_IDS),
        ("sends_by_client_id", i::SENDS_BY_CLIENT_ID),
        ("get_job", j::GET_JOB),
        ("job_body", j::JOB_BODY),
        ("queue_tail", j::QUEUE_TAIL),
        ("promote_due_jobs", j::PROMOTE_DUE),
        ("lane_depths", j::LANE_DEPTHS),
        ("queue_counts", j::COUNTS),
        ("queue_counts", j::TOTALS),
        ("prune_jobs", j::PRUNABLE),
        ("prune_jobs", j::BODY_IN_USE),
    ]
    .into_iter()
    .map(|(op, sql)| (op, sql.to_owned()))
    .collect()
}

/// The whole database file.
#[derive(Debug, Clone, Serialize)]
pub struct DbFile {
    /// Bytes per page.
    pub page_size: u64,
    /// Pages in the main file.
    pub page_count: u64,
    /// Unused pages.
    pub freelist_count: u64,
    /// `page_count × page_size`.
    pub size_bytes: u64,
    /// Where table and index sizes come from: `dbstat` or `unavailable`.
    pub size_source: &'static str,
}

/// One index of a table and its use.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStat {
    /// Index name (`sqlite_autoindex_*` for UNIQUE / PRIMARY KEY constraints).
    pub name: String,
    /// Whether it enforces uniqueness.
    pub unique: bool,
    /// `c` (CREATE INDEX), `u` (UNIQUE constraint) or `pk` (primary key).
    pub origin: String,
    /// Indexed columns, in order.
    pub columns: Vec<String>,
    /// Bytes on disk (from `dbstat`).
    pub size_bytes: Option<u64>,
    /// Operations whose query plan uses this index.
    pub used_by: Vec<String>,
    /// Calls of those operations since the server started.
    pub uses: u64,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct TableDetail {
    /// Table name.
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// Bytes of the table itself (from `dbstat`).
    pub size_bytes: Option<u64>,
    /// Bytes of the table and its indexes (from `dbstat`).
    pub total_bytes: Option<u64>,
    /// Its indexes.
    pub indexes: Vec<IndexStat>,
    /// Operations whose plan scans this table in full.
    pub full_scans_by: Vec<String>,
}

/// `EXPLAIN QUERY PLAN` of one known query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryPlan {
    /// Store operation.
    pub operation: &'static str,
    /// The SQL.
    pub sql: String,
    /// Plan lines (`detail` column).
    pub plan: Vec<String>,
    /// Indexes it uses.
    pub indexes: Vec<String>,
    /// Tables it scans in full.
    pub full_scans: Vec<String>,
}

/// Calls of one store operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpStat {
    /// Store method.
    pub operation: &'static str,
    /// Calls since the server started.
    pub calls: u64,
    /// Mean duration, milliseconds.
    pub mean_ms: f64,
    /// Longest call, milliseconds.
    pub max_ms: f64,
}

/// Slow operations in a time window.
#[derive(Debug, Clone, Serialize)]
pub struct SlowReport {
    /// Operations slower than this are recorded.
    pub threshold_ms: f64,
    /// The window asked for.
    pub hours: u64,
    /// Most entries kept (oldest dropped first).
    pub capacity: usize,
    /// Entries in the window, newest first.
    pub items: Vec<SlowOp>,
}

/// Everything `GET /admin/db/stats` reports for the embedded store.
#[derive(Debug, Clone, Serialize)]
pub struct DbStats {
    /// Always `sqlite`.
    pub backend: &'static str,
    /// The file.
    pub database: DbFile,
    /// Per table.
    pub tables: Vec<TableDetail>,
    /// Plans of the known queries.
    pub queries: Vec<QueryPlan>,
    /// Per store operation.
    pub operations: Vec<OpStat>,
    /// Indexes no known query uses (constraint indexes may still be needed for writes).
    pub unused_indexes: Vec<String>,
    /// Slow operations.
    pub slow_operations: SlowReport,
}

/// Table and index names used by a plan line: (indexes, full-scanned tables).
fn plan_uses(detail: &str, pk_index: &HashMap<String, String>) -> (Option<String>, Option<String>) {
    let mut words = detail.split_whitespace();
    let verb = words.next().unwrap_or("");
    let table = words.next().unwrap_or("").to_owned();
    if verb != "SEARCH" && verb != "SCAN" {
        return (None, None);
    }
    if table.starts_with('(') {
        return (None, None); // a subquery or CTE, not a table
    }
    for marker in ["USING COVERING INDEX ", "USING INDEX "] {
        if let Some(i) = detail.find(marker) {
            let name = detail[i + marker.len()..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
            return (Some(name), None);
        }
    }
    if detail.contains("USING PRIMARY KEY") {
        return (pk_index.get(&table).cloned(), None);
    }
    if detail.contains("USING INTEGER PRIMARY KEY") || detail.contains("USING ROWID") {
        return (None, None);
    }
    if verb == "SCAN" {
        return (None, Some(table));
    }
    (None, None)
}

fn index_details(conn: &Connection, table: &str) -> rusqlite::Result<Vec<IndexStat>> {
    let quoted = table.replace('\'', "''");
    let mut list = conn.prepare(&format!("PRAGMA index_list('{quoted}')"))?;
    let entries: Vec<(String, bool, String)> = list
        .query_map([], |r| Ok((r.get(1)?, r.get::<_, i64>(2)? != 0, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, unique, origin) in entries {
        let q = name.replace('\'', "''");
        let mut info = conn.prepare(&format!("PRAGMA index_info('{q}')"))?;
        let columns: Vec<String> = info
            .query_map([], |r| r.get::<_, Option<String>>(2))?
            .filter_map(|c| c.transpose())
            .collect::<rusqlite::Result<_>>()?;
        out.push(IndexStat {
            name,
            unique,
            origin,
            columns,
            size_bytes: None,
            used_by: Vec::new(),
            uses: 0,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn pragma_u64(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    let v: i64 = conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Bytes per table or index name, if `dbstat` is available.
fn dbstat_sizes(conn: &Connection) -> Option<HashMap<String, u64>> {
    let mut st = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
        .ok()?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .ok()?;
    rows.map(|r| r.map(|(n, s)| (n, u64::try_from(s).unwrap_or(0))))
        .collect::<rusqlite::Result<HashMap<_, _>>>()
        .ok()
}

/// Runs on a reader connection: everything but the operation totals and slow log.
fn collect(conn: &Connection) -> rusqlite::Result<(DbFile, Vec<TableDetail>, Vec<QueryPlan>)> {
    let page_size = pragma_u64(conn, "page_size")?;
    let page_count = pragma_u64(conn, "page_count")?;
    let freelist_count = pragma_u64(conn, "freelist_count")?;
    let sizes = dbstat_sizes(conn);
    let database = DbFile {
        page_size,
        page_count,
        freelist_count,
        size_bytes: page_size * page_count,
        size_source: if sizes.is_some() {
            "dbstat"
        } else {
            "unavailable"
        },
    };
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master \
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = Vec::with_capacity(names.len());
    let mut pk_index = HashMap::new();
    for name in names {
        let quoted = name.replace('"', "\"\"");
        let rows: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{quoted}\""), [], |r| {
            r.get(0)
        })?;
        let mut indexes = index_details(conn, &name)?;
        if let Some(pk) = indexes.iter().find(|i| i.origin == "pk") {
            pk_index.insert(name.clone(), pk.name.clone());
        }
        let size_bytes = sizes.as_ref().map(|s| s.get(&name).copied().unwrap_or(0));
        let mut total = size_bytes;
        for idx in &mut indexes {
            idx.size_bytes = sizes
                .as_ref()
                .map(|s| s.get(&idx.name).copied().unwrap_or(0));
            if let (Some(t), Some(i)) = (total.as_mut(), idx.size_bytes) {
                // A WITHOUT ROWID table is its primary-key index: do not count it twice.
                if idx.name != name {
                    *t += i;
                }
            }
        }
        tables.push(TableDetail {
            name,
            rows: u64::try_from(rows).unwrap_or(0),
            size_bytes,
            total_bytes: total,
            indexes,
            full_scans_by: Vec::new(),
        });
    }
    let mut queries = Vec::new();
    for (operation, sql) in known_queries() {
        let plan: Vec<String> = match conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")) {
            Ok(mut st) => {
                // Parameters stay unbound (NULL): the plan does not depend on them.
                let mut rows = st.raw_query();
                let mut lines = Vec::new();
                while let Some(row) = rows.next()? {
                    lines.push(row.get::<_, String>(3)?);
                }
                lines
            }
            // A query the schema no longer supports: show why instead of failing.
            Err(e) => vec![format!("error: {e}")],
        };
        let mut indexes = Vec::new();
        let mut full_scans = Vec::new();
        for line in &plan {
            let (idx, scan) = plan_uses(line, &pk_index);
            indexes.extend(idx);
            full_scans.extend(scan);
        }
        queries.push(QueryPlan {
            operation,
            sql,
            plan,
            indexes,
            full_scans,
        });
    }
    Ok((database, tables, queries))
}

impl SqliteStore {
    /// Operations slower than `threshold` are recorded (zero records every one).
    pub fn set_slow_threshold(&self, threshold: Duration) {
        let us = u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX);
        self.inner.ops.threshold_us.store(us, Ordering::Relaxed);
    }

    /// Slow operations that finished at or after `since_ms` (Unix ms), newest first.
    pub fn slow_operations(&self, since_ms: i64) -> Vec<SlowOp> {
        let slow = self
            .inner
            .ops
            .slow
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slow.iter()
            .rev()
            .filter(|s| s.at >= since_ms)
            .cloned()
            .collect()
    }

    /// Tables, indexes and their use, operation counts, and slow operations of the
    /// last `hours`.
    pub async fn db_stats(&self, hours: u64) -> Result<DbStats, StoreError> {
        let (database, mut tables, queries) =
            self.read(|conn| collect(conn).map_err(unavailable)).await?;
        let totals = self.inner.ops.totals();
        let calls_of = |op: &str| totals.get(op).map_or(0, |t| t.calls);
        for table in &mut tables {
            for idx in &mut table.indexes {
                for q in queries.iter().filter(|q| q.indexes.contains(&idx.name)) {
                    if !idx.used_by.iter().any(|o| o == q.operation) {
                        idx.used_by.push(q.operation.to_owned());
                        idx.uses += calls_of(q.operation);
                    }
                }
            }
            for q in queries
                .iter()
                .filter(|q| q.full_scans.contains(&table.name))
            {
                if !table.full_scans_by.iter().any(|o| o == q.operation) {
                    table.full_scans_by.push(q.operation.to_owned());
                }
            }
        }
        let unused_indexes = tables
            .iter()
            .flat_map(|t| t.indexes.iter())
            .filter(|i| i.used_by.is_empty())
            .map(|i| i.name.clone())
            .collect();
        let mut operations: Vec<OpStat> = totals
            .iter()
            .map(|(op, t)| OpStat {
                operation: op,
                calls: t.calls,
                mean_ms: t.total_us as f64 / t.calls.max(1) as f64 / 1000.0,
                max_ms: t.max_us as f64 / 1000.0,
            })
            .collect();
        operations.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.operation.cmp(b.operation)));
        let window_ms = i64::try_from(hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
        let since = now_ms().saturating_sub(window_ms);
        Ok(DbStats {
            backend: "sqlite",
            database,
            tables,
            queries,
            operations,
            unused_indexes,
            slow_operations: SlowReport {
                threshold_ms: self.inner.ops.threshold_us.load(Ordering::Relaxed) as f64 / 1000.0,
                hours,
                capacity: SLOW_LOG_CAPACITY,
                items: self.slow_operations(since),
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn op_names_from_closure_types() {
        assert_eq!(
            op_name("<switchboard::store::sqlite::SqliteStore as switchboard_actors::store::Store>::read_inbox::{{closure}}::{{closure}}"),
            "read_inbox"
        );
        assert_eq!(
            op_name("switchboard::store::sqlite::SqliteStore::table_stats::{{closure}}"),
            "table_stats"
        );
        assert_eq!(op_name("plain"), "plain");
        assert_eq!(
            op_name("<x::SqliteStore as y::Store>::last_seq<'_, '_, '_>::{{closure}}::{{closure}}"),
            "last_seq"
        );
    }

    #[test]
    fn plan_lines() {
        let pk: HashMap<String, String> = [(
            "contacts".to_owned(),
            "sqlite_autoindex_contacts_1".to_owned(),
        )]
        .into();
        assert_eq!(
            plan_uses(
                "SEARCH inbox USING INDEX inbox_device_seq (device_id=? AND seq>?)",
                &pk
            ),
            (Some("inbox_device_seq".into()), None)
        );
        assert_eq!(
            plan_uses(
                "SEARCH inbox USING COVERING INDEX inbox_device_seq (device_id=?)",
                &pk
            ),
            (Some("inbox_device_seq".into()), None)
        );
        assert_eq!(
            plan_uses("SEARCH contacts USING PRIMARY KEY (device_id=?)", &pk),
            (Some("sqlite_autoindex_contacts_1".into()), None)
        );
        assert_eq!(
            plan_uses("SCAN tenants", &pk),
            (None, Some("tenants".into()))
        );
        assert_eq!(plan_uses("SCAN (subquery-1)", &pk), (None, None));
        assert_eq!(plan_uses("USE TEMP B-TREE FOR ORDER BY", &pk), (None, None));
    }

    #[tokio::test]
    async fn stats_of_a_fresh_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), false).unwrap();
        store.set_slow_threshold(Duration::ZERO);
        use actors::store::Store;
        assert_eq!(store.last_seq("d1").await.unwrap(), 0);
        let stats = store.db_stats(1).await.unwrap();
        assert_eq!(stats.database.size_source, "dbstat");
        let inbox = stats.tables.iter().find(|t| t.name == "inbox").unwrap();
        let seq = inbox.indexes.iter().find(|i| i.origin == "pk").unwrap();
        assert!(seq.used_by.contains(&"read_inbox".to_owned()), "{seq:?}");
        assert!(seq.used_by.contains(&"last_seq".to_owned()), "{seq:?}");
        assert!(seq.uses >= 1, "{seq:?} {:?}", stats.operations);
        assert_eq!(seq.columns, vec!["device_id", "seq"]);
        for q in &stats.queries {
            assert!(!q.plan.iter().any(|l| l.starts_with("error")), "{q:?}");
            // Every query the store runs uses an index: none scans a table in full,
            // except listing every tenant and the grouped counts over all rows.
            let whole_table = ["list_tenants", "device_counts", "queue_counts"];
            if !whole_table.contains(&q.operation) {
                assert!(q.full_scans.is_empty(), "{q:?}");
            }
        }
        assert!(stats
            .slow_operations
            .items
            .iter()
            .any(|s| s.operation == "last_seq"));
    }
}
