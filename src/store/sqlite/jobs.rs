//! The `jobs` table of the SQLite store: durable queued sends and contact syncs.
//!
//! Claiming is index-driven: the partial index `jobs_waiting (rank)` serves "the best
//! waiting jobs" and `jobs_delayed (not_before)` serves "delayed jobs whose time came",
//! so the dispatcher spends two indexed queries per batch of up to a thousand jobs,
//! never a scan. Lane depths (`/admin/tree`, `/metrics`, every second) are one grouped
//! COUNT over the covering partial index `jobs_pending_lane (lane, state)`. The other
//! partial indexes serve one query each: `jobs_tail` the tenant's queue tail (fair
//! ranks), `jobs_device_pending` cancelling a deleted device's jobs, `jobs_finished`
//! pruning, `jobs_body_ref` dropping shared bodies no job needs. Every outcome update is
//! guarded by `state = 'active'` and the claim's `owner`, so a cancelled, requeued or
//! reclaimed job is never overwritten by a stale worker.
//!
//! A claim is leased (`docs/cluster.md`, "The shared queue"): it stores the claiming
//! node (`owner`) and `lease_until`; the partial indexes `jobs_active_owner` and
//! `jobs_active_lease` serve renewing or releasing one node's claims and taking back
//! the claims whose lease ran out. Paused lanes are rows of `lanes`.
//!
//! A campaign's body is one row of `job_bodies`, pointed at by `body_ref`; pruned jobs
//! are added to `job_totals` so the queue statistics keep counting them.

use std::collections::HashMap;
use std::sync::Arc;

use actors::jobs::{
    lane_from_index, lane_index, JobBody, JobKind, JobRecord, JobState, JobUpdate, QueueCount,
    SharedBody,
};
use actors::store::{JobClaim, StoreError, StoreResult};
use protocol::Priority;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{limit_i64, unavailable};

const JOB_COLUMNS: &str = "id, kind, tenant_id, device_id, lane, state, attempts, target_to, \
     target_group, body, message_id, error, send_at, not_before, rank, created_at, updated_at, \
     progress_done, progress_total, body_ref";

/// A new job's row, every column of [`JOB_COLUMNS`].
pub(super) fn insert_job_sql() -> String {
    format!(
        "INSERT INTO jobs ({JOB_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    )
}

/// A job by id.
pub const GET_JOB: &str = "SELECT id, kind, tenant_id, device_id, lane, state, attempts, \
     target_to, target_group, body, message_id, error, send_at, not_before, rank, created_at, \
     updated_at, progress_done, progress_total, body_ref FROM jobs WHERE id = ?1";
/// A shared body.
pub const JOB_BODY: &str = "SELECT body FROM job_bodies WHERE id = ?1";
/// The tail of a tenant's lane.
pub const QUEUE_TAIL: &str = "SELECT MAX(rank) FROM jobs INDEXED BY jobs_tail \
     WHERE tenant_id = ?1 AND lane = ?2 AND state = 'waiting'";
/// Delayed jobs that came due.
pub const PROMOTE_DUE: &str = "UPDATE jobs SET state = 'waiting' WHERE rowid IN \
     (SELECT rowid FROM jobs INDEXED BY jobs_delayed \
      WHERE state = 'delayed' AND not_before <= ?1)";
/// Lane depths.
pub const LANE_DEPTHS: &str = "SELECT lane, COUNT(*) FROM jobs INDEXED BY jobs_pending_lane \
     WHERE state IN ('waiting', 'delayed') GROUP BY lane";
/// Live job counts.
pub const COUNTS: &str =
    "SELECT tenant_id, lane, state, COUNT(*) FROM jobs GROUP BY tenant_id, lane, state";
/// Counts of pruned jobs.
pub const TOTALS: &str = "SELECT tenant_id, lane, state, count FROM job_totals";
/// Finished jobs past their retention.
pub const PRUNABLE: &str = "SELECT rowid, tenant_id, lane, state, body_ref FROM jobs \
     INDEXED BY jobs_finished \
     WHERE (state = 'completed' OR state = 'failed' OR state = 'cancelled') \
     AND updated_at < ?1 LIMIT ?2";
/// Whether a job still points at a shared body.
pub const BODY_IN_USE: &str = "SELECT 1 FROM jobs INDEXED BY jobs_body_ref \
     WHERE body_ref IS NOT NULL AND body_ref = ?1 LIMIT 1";
/// Claiming one job.
pub const CLAIM_ONE: &str = "UPDATE jobs SET state = 'active', updated_at = ?2, owner = ?3, \
     lease_until = ?4 WHERE rowid = ?1";
/// Outcomes, each applied only to a job still active under the claim of `?5`.
pub const FINISH_COMPLETED: &str = "UPDATE jobs SET state = 'completed', message_id = ?2, \
     attempts = ?3, error = NULL, updated_at = ?4 \
     WHERE id = ?1 AND state = 'active' AND owner = ?5";
/// A failed outcome (see [`FINISH_COMPLETED`]).
pub const FINISH_FAILED: &str = "UPDATE jobs SET state = 'failed', error = ?2, attempts = ?3, \
     updated_at = ?4 WHERE id = ?1 AND state = 'active' AND owner = ?5";
/// A delayed outcome (see [`FINISH_COMPLETED`]).
pub const FINISH_DELAYED: &str = "UPDATE jobs SET state = 'delayed', not_before = ?2, \
     attempts = ?3, updated_at = ?4 WHERE id = ?1 AND state = 'active' AND owner = ?5";
/// On one node's start: every active job back to waiting, the attempt counted.
pub const REQUEUE_ACTIVE: &str = "UPDATE jobs SET state = 'waiting', attempts = attempts + 1, \
     owner = NULL, lease_until = NULL WHERE rowid IN \
     (SELECT rowid FROM jobs INDEXED BY jobs_active_lease WHERE state = 'active')";
/// A node's heartbeat extends its claims.
pub const RENEW_CLAIMS: &str = "UPDATE jobs SET lease_until = ?2 WHERE rowid IN \
     (SELECT rowid FROM jobs INDEXED BY jobs_active_owner \
      WHERE state = 'active' AND owner = ?1)";
/// Claims whose lease ran out (their node died): back to waiting, the attempt counted
/// (as [`REQUEUE_ACTIVE`] counts it).
pub const RECLAIM: &str = "UPDATE jobs SET state = 'waiting', attempts = attempts + 1, \
     owner = NULL, lease_until = NULL WHERE rowid IN \
     (SELECT rowid FROM jobs INDEXED BY jobs_active_lease \
      WHERE state = 'active' AND lease_until < ?1)";
/// A draining node gives its claims back (nothing went wrong: no attempt counted).
pub const RELEASE_CLAIMS: &str = "UPDATE jobs SET state = 'waiting', owner = NULL, \
     lease_until = NULL WHERE rowid IN \
     (SELECT rowid FROM jobs INDEXED BY jobs_active_owner \
      WHERE state = 'active' AND owner = ?1)";
/// Pausing or resuming a lane.
const SET_LANE: &str = "INSERT INTO lanes (lane, paused) VALUES (?1, ?2) \
     ON CONFLICT (lane) DO UPDATE SET paused = excluded.paused";
/// The paused lanes (at most four rows: read whole).
pub const PAUSED_LANES: &str = "SELECT lane FROM lanes WHERE paused = 1 ORDER BY lane";
/// Deleting a device: its queued jobs are cancelled.
pub const CANCEL_DEVICE_JOBS: &str = "UPDATE jobs SET state = 'cancelled', \
     error = 'cancelled: the device was deleted', updated_at = ?2 \
     WHERE rowid IN (SELECT rowid FROM jobs INDEXED BY jobs_device_pending \
     WHERE state IN ('waiting', 'delayed') AND device_id = ?1)";

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
    let body_ref: Option<String> = row.get(19)?;
    let body = match body_ref {
        Some(id) => JobBody::Shared(id),
        None => JobBody::Inline(row.get(9)?),
    };
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
        body,
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

pub(super) fn insert_jobs(
    conn: &mut Connection,
    bodies: &[SharedBody],
    jobs: &[JobRecord],
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut body_stmt = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO job_bodies (id, tenant_id, body) VALUES (?1, ?2, ?3)",
            )
            .map_err(unavailable)?;
        for b in bodies {
            body_stmt
                .execute(params![b.id, b.tenant_id, &*b.body])
                .map_err(unavailable)?;
        }
        let mut stmt = tx.prepare_cached(&insert_job_sql()).map_err(unavailable)?;
        for j in jobs {
            let (body, body_ref) = match &j.body {
                JobBody::Inline(s) => (s.as_str(), None),
                JobBody::Shared(id) => ("", Some(id.as_str())),
            };
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
                body,
                j.message_id,
                j.error,
                j.send_at,
                j.not_before,
                j.rank,
                j.created_at,
                j.updated_at,
                j.progress_done,
                j.progress_total,
                body_ref,
            ])
            .map_err(super::conflict_or_unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

pub(super) fn claim(
    conn: &mut Connection,
    now: i64,
    limit: usize,
    paused: &[Priority],
    claim: &JobClaim,
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
                Ok((job_from_row(r)?, r.get::<_, i64>(20)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)?;
        let mut update = tx.prepare_cached(CLAIM_ONE).map_err(unavailable)?;
        for (_, rowid) in &rows {
            update
                .execute(params![rowid, now, claim.owner, claim.lease_until])
                .map_err(unavailable)?;
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

pub(super) fn finish(
    conn: &mut Connection,
    updates: &[JobUpdate],
    now: i64,
    owner: &str,
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut done = tx.prepare_cached(FINISH_COMPLETED).map_err(unavailable)?;
        let mut failed = tx.prepare_cached(FINISH_FAILED).map_err(unavailable)?;
        let mut delayed = tx.prepare_cached(FINISH_DELAYED).map_err(unavailable)?;
        for u in updates {
            match u {
                JobUpdate::Completed {
                    id,
                    message_id,
                    attempts,
                } => done.execute(params![id, message_id, attempts, now, owner]),
                JobUpdate::Failed {
                    id,
                    error,
                    attempts,
                } => failed.execute(params![id, error, attempts, now, owner]),
                JobUpdate::Delayed {
                    id,
                    not_before,
                    attempts,
                } => delayed.execute(params![id, not_before, attempts, now, owner]),
            }
            .map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

pub(super) fn renew_claims(conn: &Connection, owner: &str, lease_until: i64) -> StoreResult<u64> {
    conn.prepare_cached(RENEW_CLAIMS)
        .and_then(|mut st| st.execute(params![owner, lease_until]))
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn reclaim(conn: &Connection, now: i64) -> StoreResult<u64> {
    conn.prepare_cached(RECLAIM)
        .and_then(|mut st| st.execute([now]))
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn release_claims(conn: &Connection, owner: &str) -> StoreResult<u64> {
    conn.prepare_cached(RELEASE_CLAIMS)
        .and_then(|mut st| st.execute([owner]))
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn set_lane_paused(conn: &Connection, lane: Priority, paused: bool) -> StoreResult<()> {
    conn.prepare_cached(SET_LANE)
        .and_then(|mut st| st.execute(params![lane_index(lane), paused]))
        .map(|_| ())
        .map_err(unavailable)
}

pub(super) fn paused_lanes(conn: &Connection) -> StoreResult<Vec<Priority>> {
    conn.prepare_cached(PAUSED_LANES)
        .and_then(|mut st| {
            st.query_map([], |r| r.get::<_, i64>(0))?
                .map(|lane| lane.map(lane_from_index))
                .collect()
        })
        .map_err(unavailable)
}

pub(super) fn get_job(conn: &Connection, id: &str) -> StoreResult<Option<JobRecord>> {
    conn.prepare_cached(GET_JOB)
        .and_then(|mut st| st.query_row([id], job_from_row).optional())
        .map_err(unavailable)
}

pub(super) fn job_body(conn: &Connection, id: &str) -> StoreResult<Option<Arc<str>>> {
    conn.prepare_cached(JOB_BODY)
        .and_then(|mut st| st.query_row([id], |r| r.get::<_, String>(0)).optional())
        .map(|b| b.map(Arc::from))
        .map_err(unavailable)
}

pub(super) fn queue_tail(
    conn: &Connection,
    tenant_id: &str,
    lane: Priority,
) -> StoreResult<Option<i64>> {
    conn.prepare_cached(QUEUE_TAIL)
        .and_then(|mut st| st.query_row(params![tenant_id, lane_index(lane)], |r| r.get(0)))
        .map_err(unavailable)
}

pub(super) fn requeue_active(conn: &Connection) -> StoreResult<u64> {
    conn.execute(REQUEUE_ACTIVE, [])
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn promote_due(conn: &Connection, now: i64) -> StoreResult<u64> {
    conn.prepare_cached(PROMOTE_DUE)
        .and_then(|mut st| st.execute([now]))
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn set_progress(conn: &Connection, id: &str, done: u64, now: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE jobs SET progress_done = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'active'",
    )
    .and_then(|mut st| st.execute(params![id, done, now]))
    .map(|_| ())
    .map_err(unavailable)
}

pub(super) fn cancel(conn: &Connection, id: &str, now: i64) -> StoreResult<bool> {
    conn.execute(
        "UPDATE jobs SET state = 'cancelled', updated_at = ?2 \
         WHERE id = ?1 AND state IN ('waiting', 'delayed')",
        params![id, now],
    )
    .map(|n| n > 0)
    .map_err(unavailable)
}

pub(super) fn cancel_device_jobs(conn: &Connection, device_id: &str, now: i64) -> StoreResult<u64> {
    conn.prepare_cached(CANCEL_DEVICE_JOBS)
        .and_then(|mut st| st.execute(params![device_id, now]))
        .map(|n| n as u64)
        .map_err(unavailable)
}

pub(super) fn retry(conn: &Connection, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
    conn.execute(
        "UPDATE jobs SET state = 'waiting', attempts = 0, error = NULL, \
         not_before = ?2, rank = ?3, updated_at = ?2 \
         WHERE id = ?1 AND state = 'failed'",
        params![id, now, rank],
    )
    .map(|n| n > 0)
    .map_err(unavailable)
}

/// Deletes finished jobs past `before` (up to `limit`), adding them to `job_totals`,
/// and the shared bodies no job points at any more.
pub(super) fn prune(conn: &mut Connection, before: i64, limit: usize) -> StoreResult<u64> {
    let tx = conn.transaction().map_err(unavailable)?;
    let mut pruned = 0u64;
    {
        let rows: Vec<(i64, String, i64, String, Option<String>)> = tx
            .prepare_cached(PRUNABLE)
            .and_then(|mut st| {
                st.query_map(params![before, limit_i64(limit)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .map_err(unavailable)?;
        let mut counts: HashMap<(String, i64, String), i64> = HashMap::new();
        let mut refs: Vec<String> = Vec::new();
        let mut delete = tx
            .prepare_cached("DELETE FROM jobs WHERE rowid = ?1")
            .map_err(unavailable)?;
        for (rowid, tenant, lane, state, body_ref) in rows {
            delete.execute([rowid]).map_err(unavailable)?;
            *counts.entry((tenant, lane, state)).or_default() += 1;
            refs.extend(body_ref);
            pruned += 1;
        }
        let mut add = tx
            .prepare_cached(
                "INSERT INTO job_totals (tenant_id, lane, state, count) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant_id, lane, state) DO UPDATE SET count = count + excluded.count",
            )
            .map_err(unavailable)?;
        for ((tenant, lane, state), n) in counts {
            add.execute(params![tenant, lane, state, n])
                .map_err(unavailable)?;
        }
        refs.sort();
        refs.dedup();
        let mut in_use = tx.prepare_cached(BODY_IN_USE).map_err(unavailable)?;
        let mut drop_body = tx
            .prepare_cached("DELETE FROM job_bodies WHERE id = ?1")
            .map_err(unavailable)?;
        for id in refs {
            let used = in_use
                .query_row([&id], |_| Ok(()))
                .optional()
                .map_err(unavailable)?
                .is_some();
            if !used {
                drop_body.execute([&id]).map_err(unavailable)?;
            }
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(pruned)
}

pub(super) fn lane_depths(conn: &Connection) -> StoreResult<[u64; 4]> {
    let mut st = conn.prepare_cached(LANE_DEPTHS).map_err(unavailable)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(unavailable)?;
    let mut depths = [0u64; 4];
    for (lane, n) in rows {
        depths[lane_from_index(lane).index()] += u64::try_from(n).unwrap_or(0);
    }
    Ok(depths)
}

/// Live counts plus the pruned totals.
pub(super) fn queue_counts(conn: &Connection) -> StoreResult<Vec<QueueCount>> {
    let mut out = Vec::new();
    for sql in [COUNTS, TOTALS] {
        let mut st = conn.prepare_cached(sql).map_err(unavailable)?;
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
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.extend(rows);
    }
    Ok(out)
}
