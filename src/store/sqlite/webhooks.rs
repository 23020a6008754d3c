//! The `webhooks` and `webhook_deliveries` tables of the SQLite store: endpoints and
//! the outbox of deliveries (`docs/webhooks.md`).
//!
//! A claim runs in one transaction on the single writer connection, so its three steps
//! (pick due candidates by `webhook_due` / `webhook_leased`, check each is the head of
//! its endpoint+device queue by `webhook_queue`, check no higher status of its message
//! exists by `webhook_status`) see one state and no other claim interleaves.

use actors::store::{JobClaim, StoreError, StoreResult};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{conflict_or_unavailable, limit_i64, unavailable};

/// Most candidates one claim looks at (some are not the head of their queue).
const SCAN: usize = 1000;

const ENDPOINT_COLUMNS: &str =
    "id, tenant_id, url, events, secret, description, enabled, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, tenant_id, device_id, event, order_key, \
     payload, status_key, status_rank, state, attempts, next_at, owner, lease_until, \
     last_error, last_code, last_latency_ms, created_at, updated_at";

/// A tenant's endpoints.
pub const LIST_WEBHOOKS: &str = "SELECT id, tenant_id, url, events, secret, description, \
     enabled, created_at, updated_at FROM webhooks WHERE tenant_id = ?1 ORDER BY id";
/// Pending deliveries that are due and first in their endpoint+device queue (a
/// delivery waiting behind another never takes a place of the scan).
pub const DUE: &str = "SELECT id, endpoint_id, device_id, order_key, status_key, status_rank, \
     state FROM webhook_deliveries AS d INDEXED BY webhook_due \
     WHERE state = 'pending' AND next_at <= ?1 AND NOT EXISTS (SELECT 1 FROM \
     webhook_deliveries AS e INDEXED BY webhook_queue WHERE e.endpoint_id = d.endpoint_id \
     AND e.device_id = d.device_id AND e.state IN ('pending', 'sending') \
     AND e.order_key < d.order_key) ORDER BY next_at LIMIT ?2";
/// Sending deliveries whose lease ran out.
pub const LAPSED: &str = "SELECT id, endpoint_id, device_id, order_key, status_key, \
     status_rank, state FROM webhook_deliveries INDEXED BY webhook_leased \
     WHERE state = 'sending' AND lease_until < ?1 ORDER BY lease_until LIMIT ?2";
/// The head of an endpoint+device queue.
pub const HEAD: &str = "SELECT id FROM webhook_deliveries INDEXED BY webhook_queue \
     WHERE endpoint_id = ?1 AND device_id = ?2 AND state IN ('pending', 'sending') \
     ORDER BY order_key, id LIMIT 1";
/// Whether a higher status of the same message exists for the endpoint.
pub const HIGHER_STATUS: &str = "SELECT 1 FROM webhook_deliveries INDEXED BY webhook_status \
     WHERE endpoint_id = ?1 AND status_key = ?2 AND status_rank > ?3 \
     AND state IN ('pending', 'sending', 'delivered') LIMIT 1";
/// An endpoint's log, newest first.
pub const LOG: &str = "SELECT id, endpoint_id, tenant_id, device_id, event, order_key, \
     payload, status_key, status_rank, state, attempts, next_at, owner, lease_until, \
     last_error, last_code, last_latency_ms, created_at, updated_at \
     FROM webhook_deliveries INDEXED BY webhook_log \
     WHERE endpoint_id = ?1 AND id < ?2 AND (?3 IS NULL OR state = ?3) ORDER BY id DESC LIMIT ?4";
/// Open deliveries per endpoint.
pub const DEPTHS: &str = "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries \
     INDEXED BY webhook_queue WHERE state IN ('pending', 'sending') GROUP BY endpoint_id";
/// Finished deliveries past their retention.
pub const PRUNE: &str = "DELETE FROM webhook_deliveries WHERE rowid IN \
     (SELECT rowid FROM webhook_deliveries INDEXED BY webhook_finished \
      WHERE state IN ('delivered', 'dropped') AND updated_at < ?1 LIMIT ?2)";

fn corrupt(what: &str, v: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what}: {v}").into(),
    )
}

fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<EndpointRecord> {
    let events: String = row.get(3)?;
    let events: Vec<String> =
        serde_json::from_str(&events).map_err(|_| corrupt("webhook events", &events))?;
    Ok(EndpointRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        url: row.get(2)?,
        events,
        secret: row.get(4)?,
        description: row.get(5)?,
        enabled: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let state: String = row.get(9)?;
    Ok(DeliveryRecord {
        id: row.get(0)?,
        endpoint_id: row.get(1)?,
        tenant_id: row.get(2)?,
        device_id: row.get(3)?,
        event: row.get(4)?,
        order_key: row.get(5)?,
        payload: row.get(6)?,
        status_key: row.get(7)?,
        status_rank: row.get(8)?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("delivery state", &state))?,
        attempts: row.get(10)?,
        next_at: row.get(11)?,
        owner: row.get(12)?,
        lease_until: row.get(13)?,
        last_error: row.get(14)?,
        last_code: row.get(15)?,
        last_latency_ms: row.get(16)?,
        created_at: row.get(17)?,
        updated_at: row.get(18)?,
    })
}

fn read_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..) => StoreError::Corrupt(e.to_string()),
        e => unavailable(e),
    }
}

fn events_json(e: &EndpointRecord) -> StoreResult<String> {
    serde_json::to_string(&e.events).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn create(conn: &Connection, e: &EndpointRecord) -> StoreResult<()> {
    conn.execute(
        &format!(
            "INSERT INTO webhooks ({ENDPOINT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            e.id,
            e.tenant_id,
            e.url,
            events_json(e)?,
            e.secret,
            e.description,
            e.enabled,
            e.created_at,
            e.updated_at
        ],
    )
    .map_err(conflict_or_unavailable)?;
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> StoreResult<Option<EndpointRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhooks WHERE id = ?1"
    ))
    .map_err(unavailable)?
    .query_row([id], endpoint_from_row)
    .optional()
    .map_err(read_error)
}

pub(super) fn list(conn: &Connection, tenant_id: &str) -> StoreResult<Vec<EndpointRecord>> {
    let mut st = conn.prepare_cached(LIST_WEBHOOKS).map_err(unavailable)?;
    let rows = st
        .query_map([tenant_id], endpoint_from_row)
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(read_error)
}

pub(super) fn update(conn: &Connection, e: &EndpointRecord) -> StoreResult<bool> {
    let n = conn
        .execute(
            "UPDATE webhooks SET url = ?2, events = ?3, secret = ?4, description = ?5, \
             enabled = ?6, updated_at = ?7 WHERE id = ?1",
            params![
                e.id,
                e.url,
                events_json(e)?,
                e.secret,
                e.description,
                e.enabled,
                e.updated_at
            ],
        )
        .map_err(unavailable)?;
    Ok(n > 0)
}

pub(super) fn delete(conn: &mut Connection, id: &str) -> StoreResult<bool> {
    let tx = conn.transaction().map_err(unavailable)?;
    let n = tx
        .execute("DELETE FROM webhooks WHERE id = ?1", [id])
        .map_err(unavailable)?;
    tx.execute(
        "DELETE FROM webhook_deliveries WHERE endpoint_id = ?1",
        [id],
    )
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    Ok(n > 0)
}

pub(super) fn enqueue(conn: &mut Connection, deliveries: &[DeliveryRecord]) -> StoreResult<()> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut st = tx
            .prepare_cached(&format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ))
            .map_err(unavailable)?;
        for d in deliveries {
            st.execute(params![
                d.id,
                d.endpoint_id,
                d.tenant_id,
                d.device_id,
                d.event,
                d.order_key,
                d.payload,
                d.status_key,
                d.status_rank,
                d.state.as_str(),
                d.attempts,
                d.next_at,
                d.owner,
                d.lease_until,
                d.last_error,
                d.last_code,
                d.last_latency_ms,
                d.created_at,
                d.updated_at
            ])
            .map_err(conflict_or_unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

/// A candidate of a claim: what the checks need.
struct Candidate {
    id: String,
    endpoint_id: String,
    device_id: String,
    status_key: Option<String>,
    status_rank: i64,
}

fn candidates(
    tx: &Connection,
    sql: &str,
    now: i64,
    skip: &[String],
) -> StoreResult<Vec<Candidate>> {
    // The skipped endpoints (open breakers) are left out by the query, so a dead
    // receiver's backlog never fills the scan.
    let sql = if skip.is_empty() {
        sql.to_owned()
    } else {
        // Numbered after `?1` (now) and `?2` (the limit), which the query holds.
        let marks: Vec<String> = (0..skip.len()).map(|i| format!("?{}", i + 3)).collect();
        let marks = marks.join(", ");
        sql.replacen(
            " ORDER BY",
            &format!(" AND endpoint_id NOT IN ({marks}) ORDER BY"),
            1,
        )
    };
    let mut st = tx.prepare_cached(&sql).map_err(unavailable)?;
    let mut args: Vec<rusqlite::types::Value> = vec![now.into(), limit_i64(SCAN).into()];
    args.extend(skip.iter().map(|s| rusqlite::types::Value::Text(s.clone())));
    let rows = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(Candidate {
                id: r.get(0)?,
                endpoint_id: r.get(1)?,
                device_id: r.get(2)?,
                status_key: r.get(4)?,
                status_rank: r.get(5)?,
            })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(read_error)
}

pub(super) fn claim(
    conn: &mut Connection,
    now: i64,
    limit: usize,
    skip: &[String],
    claim: &JobClaim,
) -> StoreResult<Vec<DeliveryRecord>> {
    let tx = conn.transaction().map_err(unavailable)?;
    let mut found = candidates(&tx, LAPSED, now, skip)?;
    found.extend(candidates(&tx, DUE, now, skip)?);
    let mut claimed_ids = Vec::new();
    for c in found {
        if claimed_ids.len() >= limit {
            break;
        }
        let head: Option<String> = tx
            .prepare_cached(HEAD)
            .map_err(unavailable)?
            .query_row(params![c.endpoint_id, c.device_id], |r| r.get(0))
            .optional()
            .map_err(unavailable)?;
        if head.as_deref() != Some(c.id.as_str()) {
            continue;
        }
        if let Some(key) = &c.status_key {
            let higher = tx
                .prepare_cached(HIGHER_STATUS)
                .map_err(unavailable)?
                .exists(params![c.endpoint_id, key, c.status_rank])
                .map_err(unavailable)?;
            if higher {
                tx.execute(
                    "UPDATE webhook_deliveries SET state = 'dropped', owner = NULL, \
                     lease_until = NULL, updated_at = ?2 WHERE id = ?1",
                    params![c.id, now],
                )
                .map_err(unavailable)?;
                continue;
            }
        }
        tx.execute(
            "UPDATE webhook_deliveries SET state = 'sending', owner = ?2, lease_until = ?3, \
             updated_at = ?4 WHERE id = ?1",
            params![c.id, claim.owner, claim.lease_until, now],
        )
        .map_err(unavailable)?;
        claimed_ids.push(c.id);
    }
    let mut out = Vec::with_capacity(claimed_ids.len());
    {
        let mut st = tx
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?1"
            ))
            .map_err(unavailable)?;
        for id in &claimed_ids {
            out.push(st.query_row([id], delivery_from_row).map_err(read_error)?);
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(out)
}

pub(super) fn finish(
    conn: &mut Connection,
    outcomes: &[DeliveryOutcome],
    now: i64,
    owner: &str,
) -> StoreResult<u64> {
    const GUARD: &str = "WHERE id = ?1 AND state = 'sending' AND owner = ?2";
    let tx = conn.transaction().map_err(unavailable)?;
    let mut applied = 0u64;
    for o in outcomes {
        let n = match o {
            DeliveryOutcome::Delivered {
                id,
                attempts,
                code,
                latency_ms,
            } => tx.execute(
                &format!(
                    "UPDATE webhook_deliveries SET state = 'delivered', attempts = ?3, \
                     last_code = ?4, last_latency_ms = ?5, last_error = NULL, owner = NULL, \
                     lease_until = NULL, updated_at = ?6 {GUARD}"
                ),
                params![id, owner, attempts, code, latency_ms, now],
            ),
            DeliveryOutcome::Retry {
                id,
                attempts,
                next_at,
                error,
                code,
                latency_ms,
            } => tx.execute(
                &format!(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = ?3, \
                     next_at = ?4, last_error = ?5, last_code = ?6, last_latency_ms = ?7, \
                     owner = NULL, lease_until = NULL, updated_at = ?8 {GUARD}"
                ),
                params![id, owner, attempts, next_at, error, code, latency_ms, now],
            ),
            DeliveryOutcome::Dead {
                id,
                attempts,
                error,
                code,
                latency_ms,
            } => tx.execute(
                &format!(
                    "UPDATE webhook_deliveries SET state = 'dead', attempts = ?3, \
                     last_error = ?4, last_code = ?5, last_latency_ms = ?6, owner = NULL, \
                     lease_until = NULL, updated_at = ?7 {GUARD}"
                ),
                params![id, owner, attempts, error, code, latency_ms, now],
            ),
            DeliveryOutcome::Release { id, next_at } => tx.execute(
                &format!(
                    "UPDATE webhook_deliveries SET state = 'pending', next_at = ?3, \
                     owner = NULL, lease_until = NULL, updated_at = ?4 {GUARD}"
                ),
                params![id, owner, next_at, now],
            ),
        }
        .map_err(unavailable)?;
        applied += n as u64;
    }
    tx.commit().map_err(unavailable)?;
    Ok(applied)
}

pub(super) fn log(
    conn: &Connection,
    endpoint_id: &str,
    state: Option<DeliveryState>,
    before: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    // Ids are `wd_` and lowercase base32: "wd_~" sorts after every one of them.
    let before = before.unwrap_or("wd_~");
    let mut st = conn.prepare_cached(LOG).map_err(unavailable)?;
    let rows = st
        .query_map(
            params![
                endpoint_id,
                before,
                state.map(|s| s.as_str()),
                limit_i64(limit)
            ],
            delivery_from_row,
        )
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(read_error)
}

pub(super) fn replay(
    conn: &mut Connection,
    endpoint_id: &str,
    ids: Option<&[String]>,
    now: i64,
) -> StoreResult<u64> {
    const SET: &str = "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
         next_at = ?2, owner = NULL, lease_until = NULL, updated_at = ?2 \
         WHERE endpoint_id = ?1 AND state = 'dead'";
    let tx = conn.transaction().map_err(unavailable)?;
    let mut n = 0u64;
    match ids {
        None => {
            n += tx
                .execute(SET, params![endpoint_id, now])
                .map_err(unavailable)? as u64
        }
        Some(ids) => {
            for id in ids {
                n += tx
                    .execute(&format!("{SET} AND id = ?3"), params![endpoint_id, now, id])
                    .map_err(unavailable)? as u64;
            }
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(n)
}

pub(super) fn depths(conn: &Connection) -> StoreResult<Vec<(String, u64)>> {
    let mut st = conn.prepare_cached(DEPTHS).map_err(unavailable)?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(read_error)
}

pub(super) fn prune(conn: &Connection, before: i64, limit: usize) -> StoreResult<u64> {
    let n = conn
        .execute(PRUNE, params![before, limit_i64(limit)])
        .map_err(unavailable)?;
    Ok(n as u64)
}
