//! Message statistics per device and UTC day (`Store::message_stats`): sent messages
//! from `messages (sender_device, ts)`, statuses from the partial index
//! `inbox_status_time (device_id, ts) WHERE kind > 0`, jobs from
//! `jobs_device_created (device_id, created_at)`; the tenant's devices first, from the
//! `(tenant_id, address)` unique index.

use std::collections::BTreeMap;

use actors::store::{DayStats, StoreResult};
use rusqlite::{params, Connection};

use super::unavailable;

const DAY_MS: i64 = 86_400_000;

/// The tenant's device ids.
pub const TENANT_DEVICES: &str = "SELECT id FROM devices WHERE tenant_id = ?1";
/// Messages sent by a device, per day.
pub const SENT_PER_DAY: &str = "SELECT ts / 86400000, COUNT(*) FROM messages \
     WHERE sender_device = ?1 AND ts >= ?2 AND ts < ?3 GROUP BY 1";
/// Statuses a device got, per day and kind.
pub const STATUSES_PER_DAY: &str = "SELECT ts / 86400000, kind, COUNT(*) FROM inbox \
     INDEXED BY inbox_status_time WHERE kind > 0 AND device_id = ?1 AND ts >= ?2 AND ts < ?3 \
     GROUP BY 1, 2";
/// A device's jobs created per day, and how many failed.
pub const JOBS_PER_DAY: &str = "SELECT created_at / 86400000, COUNT(*), \
     SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) FROM jobs \
     WHERE device_id = ?1 AND created_at >= ?2 AND created_at < ?3 GROUP BY 1";

pub(super) fn message_stats(
    conn: &Connection,
    tenant_id: &str,
    device_id: Option<&str>,
    from: i64,
    to: i64,
) -> StoreResult<Vec<DayStats>> {
    let devices: Vec<String> = match device_id {
        Some(d) => vec![d.to_owned()],
        None => conn
            .prepare_cached(TENANT_DEVICES)
            .and_then(|mut st| st.query_map([tenant_id], |r| r.get(0))?.collect())
            .map_err(unavailable)?,
    };
    let mut sent = conn.prepare_cached(SENT_PER_DAY).map_err(unavailable)?;
    let mut statuses = conn.prepare_cached(STATUSES_PER_DAY).map_err(unavailable)?;
    let mut jobs = conn.prepare_cached(JOBS_PER_DAY).map_err(unavailable)?;
    let mut out: BTreeMap<(i64, String), DayStats> = BTreeMap::new();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    fn entry<'a>(
        out: &'a mut BTreeMap<(i64, String), DayStats>,
        device: &str,
        day: i64,
    ) -> &'a mut DayStats {
        out.entry((day, device.to_owned()))
            .or_insert_with(|| DayStats {
                device_id: device.to_owned(),
                day: day * DAY_MS,
                ..DayStats::default()
            })
    }
    for device in &devices {
        let rows = sent
            .query_map(params![device, from, to], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)?;
        for (day, n) in rows {
            entry(&mut out, device, day).sent = count(n);
        }
        let rows = statuses
            .query_map(params![device, from, to], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)?;
        for (day, kind, n) in rows {
            let e = entry(&mut out, device, day);
            if kind == 1 {
                e.delivered = count(n);
            } else {
                e.read = count(n);
            }
        }
        let rows = jobs
            .query_map(params![device, from, to], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)?;
        for (day, queued, failed) in rows {
            let e = entry(&mut out, device, day);
            e.queued = count(queued);
            e.failed = count(failed);
        }
    }
    Ok(out.into_values().collect())
}
