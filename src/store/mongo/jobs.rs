//! The `jobs` collection of the MongoDB store: durable queued sends and contact syncs.
//!
//! Every state move is a single-document update guarded by the state it leaves
//! (`{_id, state: "active", owner}` for outcomes, `{state: "waiting"}` for claims), so
//! a cancelled, requeued or reclaimed job is never overwritten by a stale worker and
//! two claims never hand out one job: a claim selects the best waiting jobs, then moves
//! them with one `update_many` that stamps a fresh claim token on those still waiting,
//! and answers exactly the documents carrying its token.
//!
//! A claim is leased (`docs/cluster.md`, "The shared queue"): it stamps the claiming
//! node (`owner`) and `lease_until`; a node renews all its claims with one
//! `update_many` per heartbeat (`jobs_active_owner`), and any node puts the claims
//! whose lease ran out back to waiting (`jobs_active_lease`). Paused lanes are
//! documents of `lanes` (`_id` = lane number), read whole: there are four.
//!
//! A campaign's body is one document of `job_bodies`, pointed at by `body_ref`; pruned
//! jobs are added to `job_totals` (`$inc` upserts) so the queue statistics keep
//! counting them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actors::jobs::{
    lane_from_index, lane_index, JobBody, JobKind, JobRecord, JobState, JobUpdate, QueueCount,
    SharedBody,
};
use actors::store::{JobClaim, StoreError, StoreResult};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use protocol::Priority;
use serde::{Deserialize, Serialize};

use super::stats::KnownQuery;
use super::{
    aggregate_all, bson_i64, coll, de_flag, find_all, limit_i64, map_err, to_i64, to_u64, Inner,
    CHUNK, DUPLICATE_KEY,
};

/// Separates the parts of a `job_totals` id and of a live-count group key (no tenant
/// id, lane or state holds it).
const SEP: &str = "\u{1f}";

const WAITING: &str = "waiting";
const DELAYED: &str = "delayed";
const ACTIVE: &str = "active";
const FINISHED: [&str; 3] = ["completed", "failed", "cancelled"];

#[derive(Debug, Serialize, Deserialize)]
struct JobDoc {
    #[serde(rename = "_id")]
    id: String,
    kind: String,
    tenant_id: String,
    device_id: String,
    lane: i64,
    state: String,
    attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    send_at: Option<i64>,
    not_before: i64,
    rank: i64,
    created_at: i64,
    updated_at: i64,
    progress_done: i64,
    progress_total: i64,
    /// The token of the claim that last moved it to `active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
    /// The node whose claim holds it (active jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// Until when that claim holds unless renewed (active jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_until: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BodyDoc {
    #[serde(rename = "_id")]
    id: String,
    tenant_id: String,
    body: String,
}

fn job_doc(j: &JobRecord) -> StoreResult<JobDoc> {
    let (body, body_ref) = match &j.body {
        JobBody::Inline(s) => (Some(s.clone()), None),
        JobBody::Shared(id) => (None, Some(id.clone())),
    };
    Ok(JobDoc {
        id: j.id.clone(),
        kind: j.kind.as_str().to_owned(),
        tenant_id: j.tenant_id.clone(),
        device_id: j.device_id.clone(),
        lane: lane_index(j.lane),
        state: j.state.as_str().to_owned(),
        attempts: i64::from(j.attempts),
        target_to: j.target_to.clone(),
        target_group: j.target_group.clone(),
        body,
        body_ref,
        message_id: j.message_id.clone(),
        error: j.error.clone(),
        send_at: j.send_at,
        not_before: j.not_before,
        rank: j.rank,
        created_at: j.created_at,
        updated_at: j.updated_at,
        progress_done: to_i64(j.progress_done, "progress")?,
        progress_total: to_i64(j.progress_total, "progress")?,
        claim: None,
        owner: None,
        lease_until: None,
    })
}

fn job_record(d: JobDoc) -> StoreResult<JobRecord> {
    let bad = |what: &str, v: &str| StoreError::Corrupt(format!("job {}: bad {what}: {v}", d.id));
    let body = match (d.body_ref.clone(), d.body.clone()) {
        (Some(id), _) => JobBody::Shared(id),
        (None, Some(b)) => JobBody::Inline(b),
        (None, None) => return Err(bad("body", "none")),
    };
    Ok(JobRecord {
        kind: JobKind::parse(&d.kind).ok_or_else(|| bad("kind", &d.kind))?,
        state: JobState::parse(&d.state).ok_or_else(|| bad("state", &d.state))?,
        attempts: u32::try_from(d.attempts)
            .map_err(|_| bad("attempts", &d.attempts.to_string()))?,
        lane: lane_from_index(d.lane),
        body,
        progress_done: to_u64(d.progress_done, "progress")?,
        progress_total: to_u64(d.progress_total, "progress")?,
        id: d.id,
        tenant_id: d.tenant_id,
        device_id: d.device_id,
        target_to: d.target_to,
        target_group: d.target_group,
        message_id: d.message_id,
        error: d.error,
        send_at: d.send_at,
        not_before: d.not_before,
        rank: d.rank,
        created_at: d.created_at,
        updated_at: d.updated_at,
    })
}

// ---- the queries ----

/// A job by id, if in one of `states` (every guarded move; empty: any state).
pub(super) fn job_query(operation: &'static str, id: &str, states: &[&str]) -> KnownQuery {
    let filter = match states {
        [] => doc! { "_id": id },
        [one] => doc! { "_id": id, "state": *one },
        many => doc! { "_id": id, "state": { "$in": many } },
    };
    let q = KnownQuery::new(operation, coll::JOBS, filter).index("_id_");
    if states.is_empty() {
        q
    } else {
        q.residual(&["state"])
    }
}

/// A shared body by id (and deleting unused ones).
pub(super) fn body_query(operation: &'static str, ids: &[&str]) -> KnownQuery {
    let filter = match ids {
        [one] => doc! { "_id": *one },
        many => doc! { "_id": { "$in": many } },
    };
    KnownQuery::new(operation, coll::JOB_BODIES, filter).index("_id_")
}

/// The tail of a tenant's lane.
pub(super) fn queue_tail_query(tenant_id: &str, lane: Priority) -> KnownQuery {
    KnownQuery::new(
        "queue_tail",
        coll::JOBS,
        doc! { "tenant_id": tenant_id, "lane": lane_index(lane), "state": WAITING },
    )
    .sort(doc! { "rank": -1 })
    .index("jobs_tail")
}

/// Active jobs (requeued when the dispatcher starts on one node).
pub(super) fn active_query() -> KnownQuery {
    KnownQuery::new("requeue_active_jobs", coll::JOBS, doc! { "state": ACTIVE })
        .index("jobs_state_updated")
}

/// A job still active under `owner`'s claim (its outcome's guard).
pub(super) fn owned_job_query(id: &str, owner: &str) -> KnownQuery {
    KnownQuery::new(
        "finish_jobs",
        coll::JOBS,
        doc! { "_id": id, "state": ACTIVE, "owner": owner },
    )
    .index("_id_")
    .residual(&["state", "owner"])
}

/// Every job active under one node's claims (renewed, or released when it drains).
pub(super) fn claims_query(operation: &'static str, owner: &str) -> KnownQuery {
    KnownQuery::new(
        operation,
        coll::JOBS,
        doc! { "state": ACTIVE, "owner": owner },
    )
    .index("jobs_active_owner")
}

/// Active jobs whose claim's lease ran out before `now`.
pub(super) fn lapsed_claims_query(now: i64) -> KnownQuery {
    KnownQuery::new(
        "reclaim_jobs",
        coll::JOBS,
        doc! { "state": ACTIVE, "lease_until": { "$lt": now } },
    )
    .index("jobs_active_lease")
}

/// One lane's pause (set or cleared).
pub(super) fn lane_query(lane: Priority) -> KnownQuery {
    KnownQuery::new(
        "set_lane_paused",
        coll::LANES,
        doc! { "_id": lane_index(lane) },
    )
    .index("_id_")
}

/// Every lane's pause (four documents at most).
pub(super) fn lanes_query() -> KnownQuery {
    KnownQuery::new("paused_lanes", coll::LANES, doc! {})
        .sort(doc! { "_id": 1 })
        .index("_id_")
}

/// Delayed jobs that came due.
pub(super) fn due_query(now: i64) -> KnownQuery {
    KnownQuery::new(
        "promote_due_jobs",
        coll::JOBS,
        doc! { "state": DELAYED, "not_before": { "$lte": now } },
    )
    .index("jobs_delayed")
}

/// The best waiting jobs, skipping paused lanes.
pub(super) fn claimable_query(paused: &[Priority]) -> KnownQuery {
    let mut filter = doc! { "state": WAITING };
    if !paused.is_empty() {
        let lanes: Vec<i64> = paused.iter().map(|p| lane_index(*p)).collect();
        filter.insert("lane", doc! { "$nin": lanes });
    }
    KnownQuery::new("claim_jobs", coll::JOBS, filter)
        .sort(doc! { "rank": 1 })
        .index("jobs_waiting")
        .residual(&["lane"])
}

/// The jobs a claim moved (by their token).
pub(super) fn claimed_query(ids: &[&str], token: &str) -> KnownQuery {
    KnownQuery::new(
        "claim_jobs",
        coll::JOBS,
        doc! { "_id": { "$in": ids }, "claim": token },
    )
    .index("_id_")
    .residual(&["claim"])
}

/// Queued jobs of a device (cancelled when it is deleted).
pub(super) fn device_pending_query(device_id: &str) -> KnownQuery {
    KnownQuery::new(
        "delete_device",
        coll::JOBS,
        doc! { "device_id": device_id, "state": { "$in": [WAITING, DELAYED] } },
    )
    .index("jobs_device_state")
}

/// Finished jobs past their retention.
pub(super) fn prunable_query(before: i64) -> KnownQuery {
    KnownQuery::new(
        "prune_jobs",
        coll::JOBS,
        doc! { "state": { "$in": FINISHED.to_vec() }, "updated_at": { "$lt": before } },
    )
    .index("jobs_state_updated")
}

/// Jobs that still point at some shared bodies.
pub(super) fn body_refs_query(ids: &[&str]) -> KnownQuery {
    KnownQuery::new(
        "prune_jobs",
        coll::JOBS,
        doc! { "body_ref": { "$in": ids } },
    )
    .index("jobs_body_ref")
}

/// Queued jobs of every lane (lane depths: index-only on `(lane, state)`).
pub(super) fn pending_query() -> KnownQuery {
    let lanes: Vec<i64> = Priority::ALL.iter().map(|p| lane_index(*p)).collect();
    KnownQuery::new(
        "lane_depths",
        coll::JOBS,
        doc! { "lane": { "$in": lanes }, "state": { "$in": [WAITING, DELAYED] } },
    )
    .index("jobs_lane_state")
}

/// Every job (live counts: a scan by design, as in SQLite).
pub(super) fn all_jobs_query() -> KnownQuery {
    KnownQuery::new("queue_counts", coll::JOBS, doc! {})
}

/// Every pruned-jobs total (one per tenant, lane and state: few).
pub(super) fn totals_query() -> KnownQuery {
    KnownQuery::new("queue_counts", coll::JOB_TOTALS, doc! {})
}

// ---- writes ----

/// Bodies first, then jobs; if the jobs cannot all be stored, what this call stored
/// goes again, so a failed enqueue leaves nothing behind (no transaction needed).
pub(super) async fn insert_jobs(
    s: &Inner,
    bodies: &[SharedBody],
    jobs: &[JobRecord],
) -> StoreResult<()> {
    let mut new_bodies: Vec<&str> = Vec::new();
    if !bodies.is_empty() {
        let docs: Vec<BodyDoc> = bodies
            .iter()
            .map(|b| BodyDoc {
                id: b.id.clone(),
                tenant_id: b.tenant_id.clone(),
                body: b.body.to_string(),
            })
            .collect();
        let result = s
            .coll::<BodyDoc>(coll::JOB_BODIES)
            .insert_many(&docs)
            .ordered(false)
            .await;
        let existing: HashSet<usize> = match result {
            Ok(_) => HashSet::new(),
            Err(e) => match *e.kind {
                // A body already stored under its id is kept (as INSERT OR IGNORE).
                ErrorKind::InsertMany(ref f)
                    if f.write_concern_error.is_none()
                        && f.write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == DUPLICATE_KEY) =>
                {
                    f.write_errors.iter().flatten().map(|w| w.index).collect()
                }
                // Nothing points at the bodies yet; they are not removed, since any of
                // them may have been stored before under its id and be in use.
                _ => return Err(map_err(e)),
            },
        };
        new_bodies = bodies
            .iter()
            .enumerate()
            .filter(|(i, _)| !existing.contains(i))
            .map(|(_, b)| b.id.as_str())
            .collect();
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let docs = jobs.iter().map(job_doc).collect::<StoreResult<Vec<_>>>()?;
    let result = s
        .coll::<JobDoc>(coll::JOBS)
        .insert_many(&docs)
        .ordered(false)
        .await;
    let Err(e) = result else {
        return Ok(());
    };
    let (err, inserted): (StoreError, Vec<&str>) = match *e.kind {
        ErrorKind::InsertMany(ref f) if f.write_concern_error.is_none() => {
            let failed: HashSet<usize> = f.write_errors.iter().flatten().map(|w| w.index).collect();
            let inserted = jobs
                .iter()
                .enumerate()
                .filter(|(i, _)| !failed.contains(i))
                .map(|(_, j)| j.id.as_str())
                .collect();
            (map_err(e), inserted)
        }
        // Unknown outcome: any of this call's jobs may be stored.
        _ => (map_err(e), jobs.iter().map(|j| j.id.as_str()).collect()),
    };
    undo(s, &inserted, &new_bodies).await;
    Err(err)
}

/// Best-effort removal of what a failed `insert_jobs` stored.
async fn undo(s: &Inner, jobs: &[&str], bodies: &[&str]) {
    for chunk in jobs.chunks(CHUNK) {
        if let Err(e) = s
            .coll::<Document>(coll::JOBS)
            .delete_many(doc! { "_id": { "$in": chunk } })
            .await
        {
            tracing::error!(error = %map_err(e), "could not remove the jobs of a failed enqueue");
        }
    }
    for chunk in bodies.chunks(CHUNK) {
        let q = body_query("insert_jobs", chunk);
        if let Err(e) = s.coll::<Document>(q.collection).delete_many(q.filter).await {
            tracing::error!(error = %map_err(e), "could not remove the bodies of a failed enqueue");
        }
    }
}

pub(super) async fn get_job(s: &Inner, id: &str) -> StoreResult<Option<JobRecord>> {
    let q = job_query("get_job", id, &[]);
    s.coll::<JobDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?
        .map(job_record)
        .transpose()
}

pub(super) async fn job_body(s: &Inner, id: &str) -> StoreResult<Option<Arc<str>>> {
    let q = body_query("job_body", &[id]);
    Ok(s.coll::<BodyDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?
        .map(|b| Arc::from(b.body)))
}

pub(super) async fn queue_tail(
    s: &Inner,
    tenant_id: &str,
    lane: Priority,
) -> StoreResult<Option<i64>> {
    #[derive(Deserialize)]
    struct RankRead {
        rank: i64,
    }
    let q = queue_tail_query(tenant_id, lane);
    let found = find_all(
        &s.coll::<RankRead>(q.collection),
        q.filter,
        q.sort,
        Some(1),
        Some(doc! { "_id": 0, "rank": 1 }),
    )
    .await?;
    Ok(found.first().map(|r| r.rank))
}

/// What puts a claimed job back to waiting: the claim goes; `count_attempt` when its
/// node stopped without finishing it (a crash counts as an attempt).
fn unclaim(count_attempt: bool) -> Document {
    let mut update = doc! {
        "$set": { "state": WAITING },
        "$unset": { "owner": "", "lease_until": "" },
    };
    if count_attempt {
        update.insert("$inc", doc! { "attempts": 1_i64 });
    }
    update
}

pub(super) async fn requeue_active(s: &Inner) -> StoreResult<u64> {
    let q = active_query();
    let r = s
        .coll::<Document>(q.collection)
        .update_many(q.filter, unclaim(true))
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

pub(super) async fn renew_claims(s: &Inner, owner: &str, lease_until: i64) -> StoreResult<u64> {
    let q = claims_query("renew_job_claims", owner);
    let r = s
        .coll::<Document>(q.collection)
        .update_many(q.filter, doc! { "$set": { "lease_until": lease_until } })
        .await
        .map_err(map_err)?;
    Ok(r.matched_count)
}

/// Claims whose lease ran out (their node died) go back to waiting, the attempt
/// counted as [`requeue_active`] counts it.
pub(super) async fn reclaim(s: &Inner, now: i64) -> StoreResult<u64> {
    let q = lapsed_claims_query(now);
    let r = s
        .coll::<Document>(q.collection)
        .update_many(q.filter, unclaim(true))
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

/// A draining node gives its claims back (nothing went wrong: no attempt counted).
pub(super) async fn release_claims(s: &Inner, owner: &str) -> StoreResult<u64> {
    let q = claims_query("release_job_claims", owner);
    let r = s
        .coll::<Document>(q.collection)
        .update_many(q.filter, unclaim(false))
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

pub(super) async fn set_lane_paused(s: &Inner, lane: Priority, paused: bool) -> StoreResult<()> {
    let q = lane_query(lane);
    s.coll::<Document>(q.collection)
        .update_one(q.filter, doc! { "$set": { "paused": paused } })
        .upsert(true)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn paused_lanes(s: &Inner) -> StoreResult<Vec<Priority>> {
    #[derive(Deserialize)]
    struct LaneRead {
        #[serde(rename = "_id")]
        lane: i64,
        #[serde(deserialize_with = "de_flag")]
        paused: bool,
    }
    let q = lanes_query();
    let lanes = find_all(
        &s.coll::<LaneRead>(q.collection),
        q.filter,
        q.sort,
        None,
        None,
    )
    .await?;
    Ok(lanes
        .into_iter()
        .filter(|l| l.paused)
        .map(|l| lane_from_index(l.lane))
        .collect())
}

pub(super) async fn promote_due(s: &Inner, now: i64) -> StoreResult<u64> {
    let q = due_query(now);
    let r = s
        .coll::<Document>(q.collection)
        .update_many(q.filter, doc! { "$set": { "state": WAITING } })
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

pub(super) async fn claim(
    s: &Inner,
    now: i64,
    limit: usize,
    paused: &[Priority],
    claim: &JobClaim,
) -> StoreResult<Vec<JobRecord>> {
    if limit == 0 || paused.len() >= Priority::ALL.len() {
        return Ok(Vec::new());
    }
    let jobs = s.coll::<JobDoc>(coll::JOBS);
    let q = claimable_query(paused);
    let candidates = find_all(&jobs, q.filter, q.sort, Some(limit_i64(limit)), None).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = candidates.iter().map(|j| j.id.as_str()).collect();
    let token = ObjectId::new().to_hex();
    // Only the candidates still waiting move; a racing claim stamps its own token on
    // the others, so each job is answered by exactly one claim.
    jobs.update_many(
        doc! { "_id": { "$in": &ids }, "state": WAITING },
        doc! { "$set": {
            "state": ACTIVE, "claim": &token, "updated_at": now,
            "owner": &claim.owner, "lease_until": claim.lease_until,
        } },
    )
    .await
    .map_err(map_err)?;
    let q = claimed_query(&ids, &token);
    let claimed = find_all(&jobs, q.filter, None, None, None).await?;
    // `updated_at` is answered as it was before the claim: the dispatcher tells a fresh
    // job (updated_at == created_at) from one that may have been sent before.
    let before: HashMap<&str, i64> = candidates
        .iter()
        .map(|j| (j.id.as_str(), j.updated_at))
        .collect();
    let mut out = claimed
        .into_iter()
        .map(|mut d| {
            if let Some(t) = before.get(d.id.as_str()) {
                d.updated_at = *t;
            }
            job_record(d)
        })
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by_key(|j| j.rank);
    Ok(out)
}

/// One guarded update statement per outcome, all in one `update` command; each moves
/// its job only if it is still active under `owner`'s claim.
pub(super) async fn finish(
    s: &Inner,
    updates: &[JobUpdate],
    now: i64,
    owner: &str,
) -> StoreResult<()> {
    let statements: Vec<Document> = updates
        .iter()
        .map(|u| {
            let (id, update) = match u {
                JobUpdate::Completed {
                    id,
                    message_id,
                    attempts,
                } => {
                    let mut set = doc! {
                        "state": "completed", "attempts": i64::from(*attempts), "updated_at": now,
                    };
                    let mut unset = doc! { "error": "" };
                    match message_id {
                        Some(m) => {
                            set.insert("message_id", m.as_str());
                        }
                        None => {
                            unset.insert("message_id", "");
                        }
                    }
                    (id, doc! { "$set": set, "$unset": unset })
                }
                JobUpdate::Failed {
                    id,
                    error,
                    attempts,
                } => (
                    id,
                    doc! { "$set": {
                        "state": "failed", "error": error.as_str(),
                        "attempts": i64::from(*attempts), "updated_at": now,
                    } },
                ),
                JobUpdate::Delayed {
                    id,
                    not_before,
                    attempts,
                } => (
                    id,
                    doc! { "$set": {
                        "state": DELAYED, "not_before": *not_before,
                        "attempts": i64::from(*attempts), "updated_at": now,
                    } },
                ),
            };
            doc! { "q": owned_job_query(id, owner).filter, "u": update }
        })
        .collect();
    s.update_statements(coll::JOBS, statements, false).await?;
    Ok(())
}

pub(super) async fn set_progress(s: &Inner, id: &str, done: u64, now: i64) -> StoreResult<()> {
    let q = job_query("set_job_progress", id, &[ACTIVE]);
    s.coll::<Document>(q.collection)
        .update_one(
            q.filter,
            doc! { "$set": { "progress_done": to_i64(done, "progress")?, "updated_at": now } },
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn cancel(s: &Inner, id: &str, now: i64) -> StoreResult<bool> {
    let q = job_query("cancel_job", id, &[WAITING, DELAYED]);
    let r = s
        .coll::<Document>(q.collection)
        .update_one(
            q.filter,
            doc! { "$set": { "state": "cancelled", "updated_at": now } },
        )
        .await
        .map_err(map_err)?;
    Ok(r.matched_count > 0)
}

/// Deleting a device: its queued jobs are cancelled.
pub(super) async fn cancel_device_jobs(s: &Inner, device_id: &str, now: i64) -> StoreResult<u64> {
    let q = device_pending_query(device_id);
    let r = s
        .coll::<Document>(q.collection)
        .update_many(
            q.filter,
            doc! { "$set": {
                "state": "cancelled",
                "error": "cancelled: the device was deleted",
                "updated_at": now,
            } },
        )
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

pub(super) async fn retry(s: &Inner, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
    let q = job_query("retry_job", id, &["failed"]);
    let r = s
        .coll::<Document>(q.collection)
        .update_one(
            q.filter,
            doc! {
                "$set": {
                    "state": WAITING, "attempts": 0_i64, "not_before": now, "rank": rank,
                    "updated_at": now,
                },
                "$unset": { "error": "" },
            },
        )
        .await
        .map_err(map_err)?;
    Ok(r.matched_count > 0)
}

/// Deletes finished jobs past `before` (up to `limit`), adds them to `job_totals`, and
/// deletes the shared bodies no job points at any more.
///
/// Without a transaction the steps are ordered so that a failure never counts a job
/// twice: the jobs go first (guarded by their state; a job retried meanwhile is kept
/// and not counted), then the totals. A failure between the two loses those jobs'
/// counts.
pub(super) async fn prune(s: &Inner, before: i64, limit: usize) -> StoreResult<u64> {
    #[derive(Deserialize)]
    struct PruneRead {
        #[serde(rename = "_id")]
        id: String,
        tenant_id: String,
        lane: i64,
        state: String,
        #[serde(default)]
        body_ref: Option<String>,
    }
    if limit == 0 {
        return Ok(0);
    }
    let jobs = s.coll::<Document>(coll::JOBS);
    let q = prunable_query(before);
    let found = find_all(
        &s.coll::<PruneRead>(q.collection),
        q.filter.clone(),
        None,
        Some(limit_i64(limit)),
        Some(doc! { "tenant_id": 1, "lane": 1, "state": 1, "body_ref": 1 }),
    )
    .await?;
    if found.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = found.iter().map(|j| j.id.as_str()).collect();
    let mut guard = q.filter;
    guard.insert("_id", doc! { "$in": &ids });
    let deleted = jobs
        .delete_many(guard)
        .await
        .map_err(map_err)?
        .deleted_count;
    let mut gone: Vec<&PruneRead> = found.iter().collect();
    if deleted < found.len() as u64 {
        // Some moved meanwhile (a failed job retried): keep counting only what went.
        let left = find_all(
            &jobs,
            doc! { "_id": { "$in": &ids } },
            None,
            None,
            Some(doc! { "_id": 1 }),
        )
        .await?;
        let left: HashSet<String> = left
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect();
        gone.retain(|j| !left.contains(&j.id));
    }

    let mut counts: HashMap<(&str, i64, &str), i64> = HashMap::new();
    for j in &gone {
        *counts.entry((&j.tenant_id, j.lane, &j.state)).or_default() += 1;
    }
    let statements: Vec<Document> = counts
        .into_iter()
        .map(|((tenant, lane, state), n)| {
            doc! {
                "q": { "_id": format!("{tenant}{SEP}{lane}{SEP}{state}") },
                "u": {
                    "$inc": { "count": n },
                    "$setOnInsert": { "tenant_id": tenant, "lane": lane, "state": state },
                },
                "upsert": true,
            }
        })
        .collect();
    s.update_statements(coll::JOB_TOTALS, statements, false)
        .await?;

    let mut refs: Vec<&str> = gone.iter().filter_map(|j| j.body_ref.as_deref()).collect();
    refs.sort_unstable();
    refs.dedup();
    for chunk in refs.chunks(CHUNK) {
        #[derive(Deserialize)]
        struct RefRead {
            body_ref: String,
        }
        let q = body_refs_query(chunk);
        let used: HashSet<String> = find_all(
            &s.coll::<RefRead>(q.collection),
            q.filter,
            None,
            None,
            Some(doc! { "_id": 0, "body_ref": 1 }),
        )
        .await?
        .into_iter()
        .map(|r| r.body_ref)
        .collect();
        let unused: Vec<&str> = chunk
            .iter()
            .copied()
            .filter(|r| !used.contains(*r))
            .collect();
        if !unused.is_empty() {
            let q = body_query("prune_jobs", &unused);
            s.coll::<Document>(q.collection)
                .delete_many(q.filter)
                .await
                .map_err(map_err)?;
        }
    }
    Ok(gone.len() as u64)
}

pub(super) async fn lane_depths(s: &Inner) -> StoreResult<[u64; 4]> {
    let q = pending_query();
    let rows = aggregate_all(
        &s.coll::<Document>(q.collection),
        vec![
            doc! { "$match": q.filter },
            doc! { "$group": { "_id": "$lane", "n": { "$sum": 1 } } },
        ],
    )
    .await?;
    let mut depths = [0u64; 4];
    for r in rows {
        let lane = r.get("_id").and_then(bson_i64).unwrap_or(-1);
        let n = r.get("n").and_then(bson_i64).unwrap_or(0);
        depths[lane_from_index(lane).index()] += to_u64(n, "lane depth")?;
    }
    Ok(depths)
}

fn parse_state(state: &str) -> StoreResult<JobState> {
    JobState::parse(state).ok_or_else(|| StoreError::Corrupt(format!("bad job state: {state}")))
}

/// Live counts plus the pruned totals.
pub(super) async fn queue_counts(s: &Inner) -> StoreResult<Vec<QueueCount>> {
    let q = all_jobs_query();
    // One string group key: not every server groups by a compound `_id` document.
    let rows = aggregate_all(
        &s.coll::<Document>(q.collection),
        vec![
            doc! { "$match": q.filter },
            doc! { "$group": {
                "_id": { "$concat": ["$tenant_id", SEP, "$state", SEP, { "$toString": "$lane" }] },
                "n": { "$sum": 1 },
            } },
        ],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key = match r.get("_id") {
            Some(Bson::String(k)) => k.as_str(),
            other => return Err(StoreError::Corrupt(format!("bad job count key: {other:?}"))),
        };
        let mut parts = key.rsplitn(3, SEP);
        let (Some(lane), Some(state), Some(tenant)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::Corrupt(format!("bad job count key: {key:?}")));
        };
        let lane: i64 = lane
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("bad job lane: {lane:?}")))?;
        out.push(QueueCount {
            tenant_id: tenant.to_owned(),
            lane: lane_from_index(lane),
            state: parse_state(state)?,
            count: to_u64(r.get("n").and_then(bson_i64).unwrap_or(0), "job count")?,
        });
    }
    #[derive(Deserialize)]
    struct TotalRead {
        tenant_id: String,
        lane: i64,
        state: String,
        count: i64,
    }
    let q = totals_query();
    for t in find_all(
        &s.coll::<TotalRead>(q.collection),
        q.filter,
        None,
        None,
        None,
    )
    .await?
    {
        out.push(QueueCount {
            tenant_id: t.tenant_id,
            lane: lane_from_index(t.lane),
            state: parse_state(&t.state)?,
            count: to_u64(t.count, "job total")?,
        });
    }
    Ok(out)
}
