//! Message statistics per device and UTC day (`Store::message_stats`), as aggregations
//! on MongoDB: one `$match` + `$group` by day per device and figure, each served by an
//! index (`messages_sender_ts`, `inbox_device_kind_ts`, `jobs_device_created`). The
//! day is `floor(ts / 86 400 000)`; group keys are plain values (not every server
//! groups by a compound `_id`).

use std::collections::BTreeMap;

use actors::store::{DayStats, StoreResult};
use mongodb::bson::{doc, Document};
use serde::Deserialize;

use super::stats::KnownQuery;
use super::{aggregate_all, bson_i64, coll, find_all, to_u64, Inner};

const DAY_MS: i64 = 86_400_000;

/// A tenant's device ids.
pub(super) fn tenant_devices_query(tenant_id: &str) -> KnownQuery {
    KnownQuery::new(
        "message_stats",
        coll::DEVICES,
        doc! { "tenant_id": tenant_id },
    )
    .index("devices_tenant")
}

/// A device's messages sent in a range.
pub(super) fn sent_query(device_id: &str, from: i64, to: i64) -> KnownQuery {
    KnownQuery::new(
        "message_stats",
        coll::MESSAGES,
        doc! { "sender_device": device_id, "ts": { "$gte": from, "$lt": to } },
    )
    .index("messages_sender_ts")
}

/// The statuses of one kind a device got in a range.
pub(super) fn statuses_query(device_id: &str, kind: i64, from: i64, to: i64) -> KnownQuery {
    KnownQuery::new(
        "message_stats",
        coll::INBOX,
        doc! { "device_id": device_id, "kind": kind, "ts": { "$gte": from, "$lt": to } },
    )
    .index("inbox_device_kind_ts")
}

/// A device's jobs created in a range (all, or in one state).
pub(super) fn jobs_query(device_id: &str, from: i64, to: i64, state: Option<&str>) -> KnownQuery {
    let mut filter = doc! { "device_id": device_id, "created_at": { "$gte": from, "$lt": to } };
    let mut q =
        KnownQuery::new("message_stats", coll::JOBS, Document::new()).index("jobs_device_created");
    if let Some(state) = state {
        filter.insert("state", state);
        q = q.residual(&["state"]);
    }
    q.filter = filter;
    q
}

/// Counts per day of the documents `q` matches, by its `ts_field`.
async fn per_day(s: &Inner, q: KnownQuery, ts_field: &str) -> StoreResult<Vec<(i64, u64)>> {
    let rows = aggregate_all(
        &s.coll::<Document>(q.collection),
        vec![
            doc! { "$match": q.filter },
            doc! { "$group": {
                "_id": { "$floor": { "$divide": [format!("${ts_field}"), DAY_MS] } },
                "n": { "$sum": 1 },
            } },
        ],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let day = r.get("_id").and_then(bson_i64).unwrap_or_default();
        let n = r.get("n").and_then(bson_i64).unwrap_or_default();
        out.push((day, to_u64(n, "count")?));
    }
    Ok(out)
}

pub(super) async fn message_stats(
    s: &Inner,
    tenant_id: &str,
    device_id: Option<&str>,
    from: i64,
    to: i64,
) -> StoreResult<Vec<DayStats>> {
    #[derive(Deserialize)]
    struct IdRead {
        device_id: String,
    }
    let devices: Vec<String> = match device_id {
        Some(d) => vec![d.to_owned()],
        None => {
            let q = tenant_devices_query(tenant_id);
            find_all(
                &s.coll::<IdRead>(q.collection),
                q.filter,
                None,
                None,
                Some(doc! { "_id": 0, "device_id": 1 }),
            )
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect()
        }
    };
    let mut out: BTreeMap<(i64, String), DayStats> = BTreeMap::new();
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
        for (day, n) in per_day(s, sent_query(device, from, to), "ts").await? {
            entry(&mut out, device, day).sent = n;
        }
        for (day, n) in per_day(s, statuses_query(device, 1, from, to), "ts").await? {
            entry(&mut out, device, day).delivered = n;
        }
        for (day, n) in per_day(s, statuses_query(device, 2, from, to), "ts").await? {
            entry(&mut out, device, day).read = n;
        }
        for (day, n) in per_day(s, jobs_query(device, from, to, None), "created_at").await? {
            entry(&mut out, device, day).queued = n;
        }
        let failed = jobs_query(device, from, to, Some("failed"));
        for (day, n) in per_day(s, failed, "created_at").await? {
            entry(&mut out, device, day).failed = n;
        }
    }
    Ok(out.into_values().collect())
}
