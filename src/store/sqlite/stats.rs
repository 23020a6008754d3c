//! Statistics of the SQLite store for `GET /admin/db/stats`: per-table rows and sizes,
//! and indexes with the queries that use them (the replaced system's
//! `analyzeIndexUsage`). Call counts and slow operations come from the timing
//! decorator every store has (`src/store/timed.rs`).
//!
//! - **Index use**: SQLite keeps no usage counters. At request time we run `EXPLAIN
//!   QUERY PLAN` on the store's known read queries ([`known_queries`]) and list, for each
//!   index, the operations whose plan uses it; `uses` sums those operations' calls.
//! - **Sizes** come from the `dbstat` virtual table (compiled into the bundled SQLite),
//!   else only the whole file's size from `page_count × page_size`.

use std::collections::HashMap;

use actors::store::StoreError;
use rusqlite::Connection;
use serde::Serialize;

use super::{unavailable, SqliteStore};

/// The read queries the store runs, by operation: the same constants the store
/// executes. (Inserts and upserts are not listed: they maintain every index of their
/// table.)
pub fn known_queries() -> Vec<(&'static str, String)> {
    use super::{cluster as c, directory as d, inbox as i, jobs as j, reports as r, webhooks as w};
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
        ("delete_device", c::DELETE_OWNER),
        ("list_contacts", d::LIST_CONTACTS),
        ("get_group", d::GET_GROUP),
        ("last_seq", i::LAST_SEQ),
        ("read_inbox", i::READ_INBOX),
        ("inbox_messages", i::INBOX_MESSAGE),
        ("message_copies", i::MESSAGE_COPIES),
        ("statuses", i::STATUSES),
        ("recent_client_ids", i::RECENT_CLIENT_IDS),
        ("sends_by_client_id", i::SENDS_BY_CLIENT_ID),
        ("commit_rows", i::INTO_FENCE),
        ("fence_inbox", i::FENCE_STALE),
        ("get_job", j::GET_JOB),
        ("job_body", j::JOB_BODY),
        ("queue_tail", j::QUEUE_TAIL),
        ("promote_due_jobs", j::PROMOTE_DUE),
        ("requeue_active_jobs", j::REQUEUE_ACTIVE),
        ("claim_jobs", j::CLAIM_ONE),
        ("finish_jobs", j::FINISH_COMPLETED),
        ("finish_jobs", j::FINISH_FAILED),
        ("finish_jobs", j::FINISH_DELAYED),
        ("renew_job_claims", j::RENEW_CLAIMS),
        ("reclaim_jobs", j::RECLAIM),
        ("release_job_claims", j::RELEASE_CLAIMS),
        ("paused_lanes", j::PAUSED_LANES),
        ("lane_depths", j::LANE_DEPTHS),
        ("queue_counts", j::COUNTS),
        ("queue_counts", j::TOTALS),
        ("prune_jobs", j::PRUNABLE),
        ("prune_jobs", j::BODY_IN_USE),
        ("list_webhooks", w::LIST_WEBHOOKS),
        ("claim_webhook_deliveries", w::DUE),
        ("claim_webhook_deliveries", w::LAPSED),
        ("claim_webhook_deliveries", w::HEAD),
        ("claim_webhook_deliveries", w::HIGHER_STATUS),
        ("list_webhook_deliveries", w::LOG),
        ("webhook_outbox_depths", w::DEPTHS),
        ("prune_webhook_deliveries", w::PRUNE),
        ("message_stats", r::TENANT_DEVICES),
        ("message_stats", r::SENT_PER_DAY),
        ("message_stats", r::STATUSES_PER_DAY),
        ("message_stats", r::JOBS_PER_DAY),
        ("renew_node", c::RENEW_NODE),
        ("list_nodes", c::LIST_NODES),
        ("remove_node", c::REMOVE_NODE),
        ("get_owner", c::GET_OWNER),
        ("claim_owner", c::CLAIM_OWNER),
        ("release_owner", c::RELEASE_OWNER),
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

/// What `GET /admin/db/stats` shows of the embedded store (besides the timings every
/// store has).
#[derive(Debug, Clone, Serialize)]
pub struct SqliteStats {
    /// The file.
    pub database: DbFile,
    /// Per table.
    pub tables: Vec<TableDetail>,
    /// Plans of the known queries.
    pub queries: Vec<QueryPlan>,
    /// Indexes no known query uses (constraint indexes may still be needed for writes).
    pub unused_indexes: Vec<String>,
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
    /// Tables, indexes and their use (`calls`: calls per store operation, from the
    /// timings), and the plans of the known queries.
    pub async fn db_stats(
        &self,
        calls: &HashMap<&'static str, u64>,
    ) -> Result<SqliteStats, StoreError> {
        let (database, mut tables, queries) =
            self.read(|conn| collect(conn).map_err(unavailable)).await?;
        let calls_of = |op: &str| calls.get(op).copied().unwrap_or(0);
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
        Ok(SqliteStats {
            database,
            tables,
            queries,
            unused_indexes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let calls: HashMap<&'static str, u64> = [("last_seq", 1)].into();
        let stats = store.db_stats(&calls).await.unwrap();
        assert_eq!(stats.database.size_source, "dbstat");
        let inbox = stats.tables.iter().find(|t| t.name == "inbox").unwrap();
        let seq = inbox.indexes.iter().find(|i| i.origin == "pk").unwrap();
        assert!(seq.used_by.contains(&"read_inbox".to_owned()), "{seq:?}");
        assert!(seq.used_by.contains(&"last_seq".to_owned()), "{seq:?}");
        assert!(seq.uses >= 1, "{seq:?}");
        assert_eq!(seq.columns, vec!["device_id", "seq"]);
        for q in &stats.queries {
            assert!(!q.plan.iter().any(|l| l.starts_with("error")), "{q:?}");
            // Every query the store runs uses an index: none scans a table in full,
            // except listing every tenant, the grouped counts over all rows, and the
            // paused lanes (a table of at most one row per lane) and the nodes.
            let whole_table = [
                "list_tenants",
                "device_counts",
                "queue_counts",
                "paused_lanes",
                "list_nodes",
            ];
            if !whole_table.contains(&q.operation) {
                assert!(q.full_scans.is_empty(), "{q:?}");
            }
        }
    }
}
