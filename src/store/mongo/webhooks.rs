//! Webhook endpoints (`webhooks`) and the outbox of deliveries (`webhook_deliveries`) on
//! MongoDB (`docs/webhooks.md`); the SQLite store is the reference behaviour.
//!
//! Without transactions a claim is a compare-and-set per delivery: the candidate is
//! read, checked to be the head of its endpoint+device queue (`wd_queue`, over the
//! `open` flag that `pending` and `sending` deliveries carry) and then moved to
//! `sending` only if it is still in the state (and lease) it was read in. Two nodes may
//! both pick a delivery; one of them wins it. A delivery behind the head of its queue
//! is never claimed, because the head stays open until its outcome is written.

use actors::store::{JobClaim, StoreError, StoreResult};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};
use mongodb::bson::{doc, Bson, Document};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{coll, de_flag, find_all, is_duplicate, map_err, Inner};

/// Most candidates one claim looks at.
const SCAN: i64 = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct EndpointDoc {
    #[serde(rename = "_id")]
    id: String,
    tenant_id: String,
    url: String,
    events: Vec<String>,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(deserialize_with = "de_flag")]
    enabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl From<&EndpointRecord> for EndpointDoc {
    fn from(e: &EndpointRecord) -> Self {
        EndpointDoc {
            id: e.id.clone(),
            tenant_id: e.tenant_id.clone(),
            url: e.url.clone(),
            events: e.events.clone(),
            secret: e.secret.clone(),
            description: e.description.clone(),
            enabled: e.enabled,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

impl From<EndpointDoc> for EndpointRecord {
    fn from(d: EndpointDoc) -> Self {
        EndpointRecord {
            id: d.id,
            tenant_id: d.tenant_id,
            url: d.url,
            events: d.events,
            secret: d.secret,
            description: d.description,
            enabled: d.enabled,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryDoc {
    #[serde(rename = "_id")]
    id: String,
    endpoint_id: String,
    tenant_id: String,
    device_id: String,
    event: String,
    order_key: String,
    payload: String,
    /// Absent unless a status (the `wd_status` index covers only those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_key: Option<String>,
    status_rank: i64,
    state: String,
    /// 1 while `pending` or `sending` (the `wd_queue` index covers only those).
    open: i64,
    attempts: i64,
    next_at: i64,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    lease_until: Option<i64>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    last_code: Option<i64>,
    #[serde(default)]
    last_latency_ms: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

fn is_open(s: DeliveryState) -> bool {
    matches!(s, DeliveryState::Pending | DeliveryState::Sending)
}

impl From<&DeliveryRecord> for DeliveryDoc {
    fn from(d: &DeliveryRecord) -> Self {
        DeliveryDoc {
            id: d.id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            tenant_id: d.tenant_id.clone(),
            device_id: d.device_id.clone(),
            event: d.event.clone(),
            order_key: d.order_key.clone(),
            payload: d.payload.clone(),
            status_key: d.status_key.clone(),
            status_rank: d.status_rank,
            state: d.state.as_str().to_owned(),
            open: i64::from(is_open(d.state)),
            attempts: i64::from(d.attempts),
            next_at: d.next_at,
            owner: d.owner.clone(),
            lease_until: d.lease_until,
            last_error: d.last_error.clone(),
            last_code: d.last_code,
            last_latency_ms: d.last_latency_ms,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

fn record(d: DeliveryDoc) -> StoreResult<DeliveryRecord> {
    Ok(DeliveryRecord {
        state: DeliveryState::parse(&d.state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state {:?}", d.state)))?,
        id: d.id,
        endpoint_id: d.endpoint_id,
        tenant_id: d.tenant_id,
        device_id: d.device_id,
        event: d.event,
        order_key: d.order_key,
        payload: d.payload,
        status_key: d.status_key,
        status_rank: d.status_rank,
        attempts: u32::try_from(d.attempts.max(0)).unwrap_or(u32::MAX),
        next_at: d.next_at,
        owner: d.owner,
        lease_until: d.lease_until,
        last_error: d.last_error,
        last_code: d.last_code,
        last_latency_ms: d.last_latency_ms,
        created_at: d.created_at,
        updated_at: d.updated_at,
    })
}

pub(super) async fn create(s: &Inner, e: &EndpointRecord) -> StoreResult<()> {
    s.coll::<EndpointDoc>(coll::WEBHOOKS)
        .insert_one(EndpointDoc::from(e))
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn get(s: &Inner, id: &str) -> StoreResult<Option<EndpointRecord>> {
    Ok(s.coll::<EndpointDoc>(coll::WEBHOOKS)
        .find_one(doc! { "_id": id })
        .await
        .map_err(map_err)?
        .map(EndpointRecord::from))
}

pub(super) async fn list(s: &Inner, tenant_id: &str) -> StoreResult<Vec<EndpointRecord>> {
    let found = find_all(
        &s.coll::<EndpointDoc>(coll::WEBHOOKS),
        doc! { "tenant_id": tenant_id },
        Some(doc! { "_id": 1 }),
        None,
        None,
    )
    .await?;
    Ok(found.into_iter().map(EndpointRecord::from).collect())
}

pub(super) async fn update(s: &Inner, e: &EndpointRecord) -> StoreResult<bool> {
    let r = s
        .coll::<Document>(coll::WEBHOOKS)
        .update_one(
            doc! { "_id": e.id.as_str() },
            doc! { "$set": {
                "url": e.url.as_str(),
                "events": e.events.clone(),
                "secret": e.secret.as_str(),
                "description": e.description.as_deref().map_or(Bson::Null, Bson::from),
                "enabled": e.enabled,
                "updated_at": e.updated_at,
            }},
        )
        .await
        .map_err(map_err)?;
    Ok(r.matched_count > 0)
}

/// The endpoint goes first, then its deliveries: a failure in between leaves
/// deliveries of no endpoint, which the sender dead-letters and a retry deletes.
pub(super) async fn delete(s: &Inner, id: &str) -> StoreResult<bool> {
    let r = s
        .coll::<Document>(coll::WEBHOOKS)
        .delete_one(doc! { "_id": id })
        .await
        .map_err(map_err)?;
    s.coll::<Document>(coll::WEBHOOK_DELIVERIES)
        .delete_many(doc! { "endpoint_id": id })
        .await
        .map_err(map_err)?;
    Ok(r.deleted_count > 0)
}

/// One unordered insert; a delivery already stored (a retried call) is not an error.
pub(super) async fn enqueue(s: &Inner, deliveries: &[DeliveryRecord]) -> StoreResult<()> {
    let docs: Vec<DeliveryDoc> = deliveries.iter().map(DeliveryDoc::from).collect();
    match s
        .coll::<DeliveryDoc>(coll::WEBHOOK_DELIVERIES)
        .insert_many(docs)
        .ordered(false)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if only_duplicates(&e) => Ok(()),
        Err(e) => Err(map_err(e)),
    }
}

fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        mongodb::error::ErrorKind::InsertMany(f) => {
            f.write_concern_error.is_none()
                && f.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000))
        }
        _ => is_duplicate(e),
    }
}

pub(super) async fn claim(
    s: &Inner,
    now: i64,
    limit: usize,
    skip: &[String],
    claim: &JobClaim,
) -> StoreResult<Vec<DeliveryRecord>> {
    let deliveries = s.coll::<DeliveryDoc>(coll::WEBHOOK_DELIVERIES);
    let mut found = find_all(
        &deliveries,
        doc! { "state": "sending", "lease_until": { "$lt": now }, "endpoint_id": { "$nin": skip.to_vec() } },
        Some(doc! { "lease_until": 1 }),
        Some(SCAN),
        None,
    )
    .await?;
    found.extend(
        find_all(
            &deliveries,
            doc! { "state": "pending", "next_at": { "$lte": now }, "endpoint_id": { "$nin": skip.to_vec() } },
            Some(doc! { "next_at": 1 }),
            Some(SCAN),
            None,
        )
        .await?,
    );
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "_id")]
        id: String,
    }
    let heads = s.coll::<IdOnly>(coll::WEBHOOK_DELIVERIES);
    let mut claimed = Vec::new();
    // The head of each endpoint+device queue, read once per claim: the later
    // candidates of a queue compare with it instead of asking again.
    let mut heads_of: HashMap<(String, String), Option<String>> = HashMap::new();
    for c in found {
        if claimed.len() >= limit {
            break;
        }
        if skip.contains(&c.endpoint_id) {
            continue;
        }
        let queue = (c.endpoint_id.clone(), c.device_id.clone());
        let head = match heads_of.get(&queue) {
            Some(h) => h.clone(),
            None => {
                let h = heads
                    .find_one(doc! { "endpoint_id": c.endpoint_id.as_str(), "device_id": c.device_id.as_str(), "open": 1_i64 })
                    .sort(doc! { "order_key": 1 })
                    .projection(doc! { "_id": 1 })
                    .await
                    .map_err(map_err)?
                    .map(|h| h.id);
                heads_of.insert(queue.clone(), h.clone());
                h
            }
        };
        if head.as_deref() != Some(c.id.as_str()) {
            continue;
        }
        let mut guard = doc! { "_id": c.id.as_str(), "state": c.state.as_str() };
        if c.state == "sending" {
            guard.insert("lease_until", c.lease_until.map_or(Bson::Null, Bson::Int64));
        }
        if let Some(key) = &c.status_key {
            let higher = heads
                .find_one(doc! {
                    "endpoint_id": c.endpoint_id.as_str(),
                    "status_key": key.as_str(),
                    "status_rank": { "$gt": c.status_rank },
                    "state": { "$in": ["pending", "sending", "delivered"] },
                })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(map_err)?;
            if higher.is_some() {
                deliveries
                    .update_one(
                        guard,
                        doc! { "$set": { "state": "dropped", "open": 0_i64, "owner": Bson::Null,
                        "lease_until": Bson::Null, "updated_at": now } },
                    )
                    .await
                    .map_err(map_err)?;
                heads_of.remove(&queue);
                continue;
            }
        }
        let r = deliveries
            .update_one(
                guard,
                doc! { "$set": { "state": "sending", "open": 1_i64, "owner": claim.owner.as_str(),
                "lease_until": claim.lease_until, "updated_at": now } },
            )
            .await
            .map_err(map_err)?;
        if r.matched_count == 1 {
            let mut rec = record(c)?;
            rec.state = DeliveryState::Sending;
            rec.owner = Some(claim.owner.clone());
            rec.lease_until = Some(claim.lease_until);
            rec.updated_at = now;
            claimed.push(rec);
        }
    }
    Ok(claimed)
}

fn opt_i64(v: Option<i64>) -> Bson {
    v.map_or(Bson::Null, Bson::Int64)
}

pub(super) async fn finish(
    s: &Inner,
    outcomes: &[DeliveryOutcome],
    now: i64,
    owner: &str,
) -> StoreResult<u64> {
    let deliveries = s.coll::<Document>(coll::WEBHOOK_DELIVERIES);
    let mut applied = 0u64;
    for o in outcomes {
        let set = match o {
            DeliveryOutcome::Delivered {
                attempts,
                code,
                latency_ms,
                ..
            } => doc! { "state": "delivered", "open": 0_i64, "attempts": i64::from(*attempts),
            "last_code": *code, "last_latency_ms": *latency_ms,
            "last_error": Bson::Null },
            DeliveryOutcome::Retry {
                attempts,
                next_at,
                error,
                code,
                latency_ms,
                ..
            } => doc! { "state": "pending", "open": 1_i64, "attempts": i64::from(*attempts),
            "next_at": *next_at, "last_error": error.as_str(), "last_code": opt_i64(*code),
            "last_latency_ms": *latency_ms },
            DeliveryOutcome::Dead {
                attempts,
                error,
                code,
                latency_ms,
                ..
            } => doc! { "state": "dead", "open": 0_i64, "attempts": i64::from(*attempts),
            "last_error": error.as_str(), "last_code": opt_i64(*code),
            "last_latency_ms": *latency_ms },
            DeliveryOutcome::Release { next_at, .. } => {
                doc! { "state": "pending", "open": 1_i64, "next_at": *next_at }
            }
        };
        let mut set = set;
        set.insert("owner", Bson::Null);
        set.insert("lease_until", Bson::Null);
        set.insert("updated_at", now);
        let r = deliveries
            .update_one(
                doc! { "_id": o.id(), "state": "sending", "owner": owner },
                doc! { "$set": set },
            )
            .await
            .map_err(map_err)?;
        applied += r.matched_count;
    }
    Ok(applied)
}

pub(super) async fn log(
    s: &Inner,
    endpoint_id: &str,
    state: Option<DeliveryState>,
    before: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let mut filter = doc! { "endpoint_id": endpoint_id };
    if let Some(b) = before {
        filter.insert("_id", doc! { "$lt": b });
    }
    if let Some(st) = state {
        filter.insert("state", st.as_str());
    }
    let found = find_all(
        &s.coll::<DeliveryDoc>(coll::WEBHOOK_DELIVERIES),
        filter,
        // Ids are ULIDs: newest first is `_id` descending (`created_at` orders the
        // same, and leads the index).
        Some(doc! { "created_at": -1, "_id": -1 }),
        Some(i64::try_from(limit).unwrap_or(i64::MAX)),
        None,
    )
    .await?;
    found.into_iter().map(record).collect()
}

pub(super) async fn replay(
    s: &Inner,
    endpoint_id: &str,
    ids: Option<Vec<String>>,
    now: i64,
) -> StoreResult<u64> {
    let mut filter = doc! { "endpoint_id": endpoint_id, "state": "dead" };
    if let Some(ids) = ids {
        filter.insert("_id", doc! { "$in": ids });
    }
    let r = s
        .coll::<Document>(coll::WEBHOOK_DELIVERIES)
        .update_many(
            filter,
            doc! { "$set": { "state": "pending", "open": 1_i64, "attempts": 0_i64,
            "next_at": now, "owner": Bson::Null, "lease_until": Bson::Null,
            "updated_at": now } },
        )
        .await
        .map_err(map_err)?;
    Ok(r.modified_count)
}

pub(super) async fn depths(s: &Inner) -> StoreResult<Vec<(String, u64)>> {
    let rows = super::aggregate_all(
        &s.coll::<Document>(coll::WEBHOOK_DELIVERIES),
        vec![
            doc! { "$match": { "open": 1_i64 } },
            doc! { "$group": { "_id": "$endpoint_id", "n": { "$sum": 1 } } },
        ],
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|d| {
            let id = d.get_str("_id").ok()?.to_owned();
            let n = d.get("n").and_then(super::bson_i64)?;
            Some((id, n.max(0) as u64))
        })
        .collect())
}

pub(super) async fn prune(s: &Inner, before: i64, limit: usize) -> StoreResult<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "_id")]
        id: String,
    }
    let ids: Vec<String> = find_all(
        &s.coll::<IdOnly>(coll::WEBHOOK_DELIVERIES),
        doc! { "state": { "$in": ["delivered", "dropped"] }, "updated_at": { "$lt": before } },
        None,
        Some(i64::try_from(limit).unwrap_or(i64::MAX)),
        Some(doc! { "_id": 1 }),
    )
    .await?
    .into_iter()
    .map(|d| d.id)
    .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let r = s
        .coll::<Document>(coll::WEBHOOK_DELIVERIES)
        .delete_many(doc! { "_id": { "$in": ids } })
        .await
        .map_err(map_err)?;
    Ok(r.deleted_count)
}
