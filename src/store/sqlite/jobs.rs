//! The `jobs` table of the SQLite store: durable queued sends and contact syncs.
//!
//! Claiming is index-driven: the partial index `jobs_waiting (rank)` serves "the best
//! waiting jobs" and `jobs_delayed (not_before)` serves "delayed jobs whose time came",
//! so the dispatcher spends two indexed queries per batch of up to a thousand jobs,
//! never a scan. Lane depths (`/admin/tree`, `/metrics`, every second) are one grouped
//! COUNT over the covering partial index `jobs_pending_lane (lane, state)`. All three
//! are partial (only waiting or delayed rows), so active and finished jobs cost no index
//! upkeep. Every outcome update is guarded by `state = 'active'`, so a cancelled or
//! requeued job is never overwritten by a stale worker.

use actors::jobs::{
    lane_from_index, lane_index, JobKind, JobRecord, JobState, JobUpdate, QueueCount,
};
use actors::store::{AcceptedSend, StoreResult};
use protocol::Priority;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{limit_i64, unavailable, SqliteStore};

/// Schema of the jobs table, created idempotently at open.
pub(super) const SCHEMA: &str = "
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
    progress_total INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (rank) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS jobs_delayed ON jobs (not_before) WHERE state = 'delayed';
CREATE INDEX IF NOT EXISTS jobs_pending_lane ON jobs (lane, state) WHERE state IN ('waiting', 'delayed');
CREATE INDEX IF NOT EXISTS inbox_job_send ON inbox (client_id) WHERE client_id GLOB 'j_*';
";

const JOB_COLUMNS: &str = "id, kind, tenant_id, device_id, lane, state, attempts, target_to, \
     target_group, body, message_id, error, send_at, not_before, rank, created_at, updated_at, \
     progress_done, progress_total";

fn bad(what: &str, v: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what}: {v}").into(),
    )
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let kind: String = row.get(1)?;
    let state: String = row.get(5)?;
    Ok(JobRecord {
        id: row.get(0)?,
        kind: JobKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        tenant_id: row.get(2)?,
        device_id: row.get(3)?,
        lane: lane_from_index(row.get(4)?),
        state: JobState::parse(&state).ok_or_else(|| bad("state", &state))?,
        attempts: row.get(6)?,
        target_to: row.get(7)?,
        target_group: row.get(8)?,
        body: row.get(9)?,
        message_id: row.get(10)?,
        error: row.get(11)?,
        send_at: row.get(12)?,
        not_before: row.get(13)?,
        rank: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        progress_done: row.get(17)?,
        progress_total: row.get(18)?,
    })
}

fn insert_jobs(conn: &mut Connection, jobs: &[JobRecord]) -> StoreResult<()> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ))
            .map_err(unavailable)?;
        for j in jobs {
            stmt.execute(params![
                j.id,
                j.kind.as_str(),
                j.tenant_id,
                j.device_id,
                lane_index(j.lane),
                j.state.as_str(),
                j.attempts,
                j.target_to,
                j.target_group,
                j.body,
                j.message_id,
                j.error,
                j.send_at,
                j.not_before,
                j.rank,
                j.created_at,
                j.updated_at,
                j.progress_done,
                j.progress_total,
            ])
            .map_err(super::conflict_or_unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

fn claim(
    conn: &mut Connection,
    now: i64,
    limit: usize,
    paused: &[Priority],
) -> StoreResult<Vec<JobRecord>> {
    // Lane numbers are integers we format ourselves: no injection, and at most 16
    // distinct statements for the statement cache.
    let skip = if paused.is_empty() {
        String::new()
    } else {
        let lanes: Vec<String> = paused.iter().map(|p| lane_index(*p).to_string()).collect();
        format!(" AND lane NOT IN ({})", lanes.join(","))
    };
    let tx = conn.transaction().map_err(unavailable)?;
    let jobs = {
        let mut select = tx
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS}, rowid FROM jobs INDEXED BY jobs_waiting \
                 WHERE state = 'waiting'{skip} ORDER BY rank LIMIT ?1"
            ))
            .map_err(unavailable)?;
        let rows = select
            .query_map([limit_i64(limit)], |r| {
                Ok((job_from_row(r)?, r.get::<_, i64>(19)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)?;
        let mut update = tx
            .prepare_cached("UPDATE jobs SET state = 'active', updated_at = ?2 WHERE rowid = ?1")
            .map_err(unavailable)?;
        for (_, rowid) in &rows {
            update.execute(params![rowid, now]).map_err(unavailable)?;
        }
        rows.into_iter().map(|(j, _)| j).collect::<Vec<_>>()
    };
    tx.commit().map_err(unavailable)?;
    Ok(jobs
        .into_iter()
        .map(|mut j| {
            // `updated_at` keeps its pre-claim value: the dispatcher tells a fresh job
            // (updated_at == created_at) from one that may have been sent before.
            j.state = JobState::Active;
            j
        })
        .collect())
}

fn finish(conn: &mut Connection, updates: &[JobUpdate], now: i64) -> StoreResult<()> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut done = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'completed', message_id = ?2, attempts = ?3, \
                 error = NULL, updated_at = ?4 WHERE id = ?1 AND state = 'active'",
            )
            .map_err(unavailable)?;
        let mut failed = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'failed', error = ?2, attempts = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND state = 'active'",
            )
            .map_err(unavailable)?;
        let mut delayed = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'delayed', not_before = ?2, attempts = ?3, \
                 updated_at = ?4 WHERE id = ?1 AND state = 'active'",
            )
            .map_err(unavailable)?;
        for u in updates {
            match u {
                JobUpdate::Completed {
                    id,
                    message_id,
                    attempts,
                } => done.execute(params![id, message_id, attempts, now]),
                JobUpdate::Failed {
                    id,
                    error,
                    attempts,
                } => failed.execute(params![id, error, attempts, now]),
                JobUpdate::Delayed {
                    id,
                    not_before,
                    attempts,
                } => delayed.execute(params![id, not_before, attempts, now]),
            }
            .map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

impl SqliteStore {
    pub(super) async fn jobs_insert(&self, jobs: Vec<JobRecord>) -> StoreResult<()> {
        self.write(move |conn| insert_jobs(conn, &jobs)).await
    }

    pub(super) async fn jobs_get(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
                .and_then(|mut st| st.query_row([&id], job_from_row).optional())
                .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_requeue_active(&self) -> StoreResult<u64> {
        self.write(|conn| {
            conn.execute(
                "UPDATE jobs SET state = 'waiting', attempts = attempts + 1 WHERE state = 'active'",
                [],
            )
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_promote_due(&self, now: i64) -> StoreResult<u64> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE jobs SET state = 'waiting' WHERE rowid IN \
                 (SELECT rowid FROM jobs INDEXED BY jobs_delayed \
                  WHERE state = 'delayed' AND not_before <= ?1)",
            )
            .and_then(|mut st| st.execute([now]))
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_claim(
        &self,
        now: i64,
        limit: usize,
        paused: Vec<Priority>,
    ) -> StoreResult<Vec<JobRecord>> {
        self.write(move |conn| claim(conn, now, limit, &paused))
            .await
    }

    pub(super) async fn jobs_finish(&self, updates: Vec<JobUpdate>, now: i64) -> StoreResult<()> {
        self.write(move |conn| finish(conn, &updates, now)).await
    }

    pub(super) async fn jobs_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE jobs SET progress_done = ?2, updated_at = ?3 \
                 WHERE id = ?1 AND state = 'active'",
            )
            .and_then(|mut st| st.execute(params![id, done, now]))
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_cancel(&self, id: &str, now: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', updated_at = ?2 \
                 WHERE id = ?1 AND state IN ('waiting', 'delayed')",
                params![id, now],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_retry(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'waiting', attempts = 0, error = NULL, \
                 not_before = ?2, rank = ?3, updated_at = ?2 \
                 WHERE id = ?1 AND state = 'failed'",
                params![id, now, rank],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_sent(
        &self,
        device_id: &str,
        job_id: &str,
    ) -> StoreResult<Vec<AcceptedSend>> {
        let device_id = device_id.to_owned();
        // `job_id` and `job_id.N` sort in [job_id, job_id + "/"): '.' < '/'.
        let low = job_id.to_owned();
        let high = format!("{job_id}/");
        self.read(move |conn| {
            // The GLOB term repeats the partial index's condition so SQLite may use it.
            conn.prepare_cached(
                "SELECT client_id, message_id, seq, ts FROM inbox INDEXED BY inbox_job_send \
                 WHERE client_id GLOB 'j_*' AND client_id >= ?2 AND client_id < ?3 \
                 AND device_id = ?1 ORDER BY seq",
            )
            .and_then(|mut st| {
                st.query_map(params![device_id, low, high], |r| {
                    Ok(AcceptedSend {
                        client_id: r.get(0)?,
                        message_id: r.get(1)?,
                        seq: r.get(2)?,
                        ts: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn jobs_lane_depths(&self) -> StoreResult<[u64; 4]> {
        self.read(|conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT lane, COUNT(*) FROM jobs INDEXED BY jobs_pending_lane \
                     WHERE state IN ('waiting', 'delayed') GROUP BY lane",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            let mut depths = [0u64; 4];
            for (lane, n) in rows {
                depths[lane_from_index(lane).index()] += u64::try_from(n).unwrap_or(0);
            }
            Ok(depths)
        })
        .await
    }

    pub(super) async fn jobs_counts(&self) -> StoreResult<Vec<QueueCount>> {
        self.read(|conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT tenant_id, lane, state, COUNT(*) FROM jobs \
                     GROUP BY tenant_id, lane, state",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| {
                    let state: String = r.get(2)?;
                    Ok(QueueCount {
                        tenant_id: r.get(0)?,
                        lane: lane_from_index(r.get(1)?),
                        state: JobState::parse(&state).ok_or_else(|| bad("state", &state))?,
                        count: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use actors::jobs::rank;
    use actors::store::Store;
    use protocol::Priority;

    use super::*;

    const AGING: Duration = Duration::from_secs(10);

    fn job(id: &str, lane: Priority, due: i64) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind: JobKind::Message,
            tenant_id: "t1".into(),
            device_id: "d1".into(),
            lane,
            state: JobState::Waiting,
            attempts: 0,
            target_to: Some("+15550001".into()),
            target_group: None,
            body: "{}".into(),
            message_id: None,
            error: None,
            send_at: None,
            not_before: due,
            rank: rank(due, lane, AGING),
            created_at: due,
            updated_at: due,
            progress_done: 0,
            progress_total: 0,
        }
    }

    fn open_tmp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), false).unwrap();
        (dir, store)
    }

    fn ids(jobs: &[JobRecord]) -> Vec<&str> {
        jobs.iter().map(|j| j.id.as_str()).collect()
    }

    #[tokio::test]
    async fn claims_by_lane_with_aging() {
        let (_dir, store) = open_tmp();
        let now = 1_000_000;
        store
            .insert_jobs(vec![
                job("low-new", Priority::Low, now),
                job("normal-new", Priority::Normal, now),
                job("critical-new", Priority::Critical, now),
                // Waited 31 s: three aging periods, more than a low job needs to
                // outrank a critical one enqueued now.
                job("low-old", Priority::Low, now - 31_000),
                job("high-new", Priority::High, now),
            ])
            .await
            .unwrap();
        let first = store.claim_jobs(now, 2).await.unwrap();
        assert_eq!(ids(&first), ["low-old", "critical-new"]);
        assert!(first.iter().all(|j| j.state == JobState::Active));
        let rest = store.claim_jobs(now, 10).await.unwrap();
        assert_eq!(ids(&rest), ["high-new", "normal-new", "low-new"]);
        assert!(store.claim_jobs(now, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn paused_lanes_are_skipped_and_depths_counted() {
        let (_dir, store) = open_tmp();
        let now = 1_000_000;
        let mut later = job("low-later", Priority::Low, now + 60_000);
        later.state = JobState::Delayed;
        store
            .insert_jobs(vec![
                job("critical", Priority::Critical, now),
                job("low-1", Priority::Low, now - 100_000),
                job("low-2", Priority::Low, now),
                job("normal", Priority::Normal, now),
                later,
            ])
            .await
            .unwrap();
        assert_eq!(store.lane_depths().await.unwrap(), [1, 0, 1, 3]);
        let got = store
            .claim_jobs_except(now, 10, &[Priority::Low])
            .await
            .unwrap();
        assert_eq!(ids(&got), ["critical", "normal"]);
        // Claimed jobs are active, no longer queued.
        assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 0, 3]);
        assert!(store
            .claim_jobs_except(now, 10, &[Priority::Low, Priority::High])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(&store.claim_jobs(now, 10).await.unwrap()),
            ["low-1", "low-2"]
        );
        assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 0, 1]);
        // The depth query reads the partial index only, never the table.
        let plan: String = store
            .read(|conn| {
                conn.query_row(
                    "EXPLAIN QUERY PLAN SELECT lane, COUNT(*) FROM jobs INDEXED BY \
                     jobs_pending_lane WHERE state IN ('waiting', 'delayed') GROUP BY lane",
                    [],
                    |r| r.get::<_, String>(3),
                )
                .map_err(unavailable)
            })
            .await
            .unwrap();
        assert!(plan.contains("COVERING INDEX jobs_pending_lane"), "{plan}");
    }

    #[tokio::test]
    async fn state_machine_moves() {
        let (_dir, store) = open_tmp();
        let now = 5_000;
        let mut later = job("later", Priority::Normal, now + 1_000);
        later.state = JobState::Delayed;
        store
            .insert_jobs(vec![job("a", Priority::Normal, now), later])
            .await
            .unwrap();
        assert_eq!(ids(&store.claim_jobs(now, 10).await.unwrap()), ["a"]);
        // Rate-limited: delayed, then due again.
        store
            .finish_jobs(
                vec![JobUpdate::Delayed {
                    id: "a".into(),
                    not_before: now + 500,
                    attempts: 0,
                }],
                now,
            )
            .await
            .unwrap();
        assert_eq!(store.promote_due_jobs(now + 499).await.unwrap(), 0);
        assert_eq!(store.promote_due_jobs(now + 1_000).await.unwrap(), 2);
        let claimed = store.claim_jobs(now + 1_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 2);
        // A crash: active jobs go back to waiting.
        assert_eq!(store.requeue_active_jobs().await.unwrap(), 2);
        store.claim_jobs(now, 10).await.unwrap();
        store
            .finish_jobs(
                vec![
                    JobUpdate::Completed {
                        id: "a".into(),
                        message_id: Some("m_1".into()),
                        attempts: 1,
                    },
                    JobUpdate::Failed {
                        id: "later".into(),
                        error: "not_found: x".into(),
                        attempts: 1,
                    },
                ],
                now,
            )
            .await
            .unwrap();
        let a = store.get_job("a").await.unwrap().unwrap();
        assert_eq!(a.state, JobState::Completed);
        assert_eq!(a.message_id.as_deref(), Some("m_1"));
        // Final states are not moved by stale outcomes, cancel or retry.
        store
            .finish_jobs(
                vec![JobUpdate::Failed {
                    id: "a".into(),
                    error: "late".into(),
                    attempts: 2,
                }],
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_job("a").await.unwrap().unwrap().state,
            JobState::Completed
        );
        assert!(!store.cancel_job("a", now).await.unwrap());
        assert!(!store.retry_job("a", now, 0).await.unwrap());
        // Failed → retry → waiting with attempts reset.
        assert!(store.retry_job("later", now, 7).await.unwrap());
        let l = store.get_job("later").await.unwrap().unwrap();
        assert_eq!((l.state, l.attempts, l.error), (JobState::Waiting, 0, None));
        assert!(store.cancel_job("later", now).await.unwrap());
        let counts = store.queue_counts().await.unwrap();
        let total: u64 = counts.iter().map(|c| c.count).sum();
        assert_eq!(total, 2);
        assert!(counts
            .iter()
            .any(|c| c.state == JobState::Cancelled && c.count == 1));
        assert!(store.get_job("nope").await.unwrap().is_none());
    }
}
