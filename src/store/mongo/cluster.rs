//! Node leases and device ownership in the MongoDB store (`docs/cluster.md`): the
//! `nodes` collection (`_id` = node id, its lease and figures) and `owners` (`_id` =
//! device id, the owning node, the fencing epoch, whether it was released cleanly).
//!
//! Every change is one single-document write read by `_id`. A claim is a
//! compare-and-set on the epoch read: the first claim is an insert (the `_id` index
//! lets one of two racing inserts through), every later one an update guarded by
//! `{_id, epoch: seen}`; a release is guarded by the node and the epoch it holds.

use actors::store::{NodeLoad, NodeRecord, OwnerRecord, StoreResult};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use super::stats::KnownQuery;
use super::{coll, de_flag, find_all, is_duplicate, map_err, to_i64, to_u64, Inner};

#[derive(Debug, Serialize, Deserialize)]
struct NodeDoc {
    #[serde(rename = "_id")]
    id: String,
    addr: String,
    started_at: i64,
    lease_until: i64,
    #[serde(deserialize_with = "de_flag")]
    draining: bool,
    connections: i64,
    sessions: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnerDoc {
    #[serde(rename = "_id")]
    device_id: String,
    node: String,
    epoch: i64,
    #[serde(deserialize_with = "de_flag")]
    clean: bool,
    since: i64,
}

fn node_doc(n: &NodeRecord) -> StoreResult<NodeDoc> {
    Ok(NodeDoc {
        id: n.id.clone(),
        addr: n.addr.clone(),
        started_at: n.started_at,
        lease_until: n.lease_until,
        draining: n.draining,
        connections: to_i64(n.connections, "connections")?,
        sessions: to_i64(n.sessions, "sessions")?,
    })
}

fn node_record(d: NodeDoc) -> StoreResult<NodeRecord> {
    Ok(NodeRecord {
        connections: to_u64(d.connections, "connections")?,
        sessions: to_u64(d.sessions, "sessions")?,
        id: d.id,
        addr: d.addr,
        started_at: d.started_at,
        lease_until: d.lease_until,
        draining: d.draining,
    })
}

fn owner_record(d: OwnerDoc) -> StoreResult<OwnerRecord> {
    Ok(OwnerRecord {
        epoch: to_u64(d.epoch, "epoch")?,
        device_id: d.device_id,
        node: d.node,
        clean: d.clean,
        since: d.since,
    })
}

// ---- the queries ----

/// A node by id (replacing, renewing or removing it).
pub(super) fn node_query(operation: &'static str, id: &str) -> KnownQuery {
    KnownQuery::new(operation, coll::NODES, doc! { "_id": id }).index("_id_")
}

/// Every node, by id (a handful).
pub(super) fn nodes_query() -> KnownQuery {
    KnownQuery::new("list_nodes", coll::NODES, doc! {})
        .sort(doc! { "_id": 1 })
        .index("_id_")
}

/// A device's owner record (reading it, or deleting it with the device).
pub(super) fn owner_query(operation: &'static str, device_id: &str) -> KnownQuery {
    KnownQuery::new(operation, coll::OWNERS, doc! { "_id": device_id }).index("_id_")
}

/// The owner record as read at `epoch` (the compare-and-set of a claim).
pub(super) fn owner_at_epoch_query(device_id: &str, epoch: i64) -> KnownQuery {
    KnownQuery::new(
        "claim_owner",
        coll::OWNERS,
        doc! { "_id": device_id, "epoch": epoch },
    )
    .index("_id_")
    .residual(&["epoch"])
}

/// The owner record if `node` holds it at `epoch` (a release).
pub(super) fn held_owner_query(device_id: &str, node: &str, epoch: i64) -> KnownQuery {
    KnownQuery::new(
        "release_owner",
        coll::OWNERS,
        doc! { "_id": device_id, "node": node, "epoch": epoch },
    )
    .index("_id_")
    .residual(&["node", "epoch"])
}

// ---- nodes ----
// Through the registry's own client (`Inner::control_coll`): a lease renewal never
// queues behind the store's other work.

pub(super) async fn put_node(s: &Inner, n: &NodeRecord) -> StoreResult<()> {
    let q = node_query("put_node", &n.id);
    s.control_coll::<NodeDoc>(q.collection)
        .replace_one(q.filter, node_doc(n)?)
        .upsert(true)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn renew_node(
    s: &Inner,
    id: &str,
    lease_until: i64,
    load: NodeLoad,
) -> StoreResult<bool> {
    let q = node_query("renew_node", id);
    let r = s
        .control_coll::<Document>(q.collection)
        .update_one(
            q.filter,
            doc! { "$set": {
                "lease_until": lease_until,
                "draining": load.draining,
                "connections": to_i64(load.connections, "connections")?,
                "sessions": to_i64(load.sessions, "sessions")?,
            } },
        )
        .await
        .map_err(map_err)?;
    Ok(r.matched_count > 0)
}

pub(super) async fn list_nodes(s: &Inner) -> StoreResult<Vec<NodeRecord>> {
    let q = nodes_query();
    find_all(
        &s.control_coll::<NodeDoc>(q.collection),
        q.filter,
        q.sort,
        None,
        None,
    )
    .await?
    .into_iter()
    .map(node_record)
    .collect()
}

pub(super) async fn remove_node(s: &Inner, id: &str) -> StoreResult<()> {
    let q = node_query("remove_node", id);
    s.control_coll::<Document>(q.collection)
        .delete_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(())
}

// ---- owners ----

pub(super) async fn get_owner(s: &Inner, device_id: &str) -> StoreResult<Option<OwnerRecord>> {
    let q = owner_query("get_owner", device_id);
    s.coll::<OwnerDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?
        .map(owner_record)
        .transpose()
}

pub(super) async fn claim_owner(
    s: &Inner,
    device_id: &str,
    node: &str,
    seen: Option<u64>,
    now: i64,
) -> StoreResult<Option<OwnerRecord>> {
    let claimed = |epoch: u64| OwnerRecord {
        device_id: device_id.to_owned(),
        node: node.to_owned(),
        epoch,
        clean: false,
        since: now,
    };
    let Some(seen) = seen else {
        let first = OwnerDoc {
            device_id: device_id.to_owned(),
            node: node.to_owned(),
            epoch: 1,
            clean: false,
            since: now,
        };
        return match s.coll::<OwnerDoc>(coll::OWNERS).insert_one(&first).await {
            Ok(_) => Ok(Some(claimed(1))),
            // Another node claimed the device first.
            Err(e) if is_duplicate(&e) => Ok(None),
            Err(e) => Err(map_err(e)),
        };
    };
    // The next epoch must fit an Int64 too.
    let next = to_i64(seen.saturating_add(1), "epoch")?;
    let q = owner_at_epoch_query(device_id, next - 1);
    let r = s
        .coll::<Document>(q.collection)
        .update_one(
            q.filter,
            doc! { "$set": { "node": node, "epoch": next, "clean": false, "since": now } },
        )
        .await
        .map_err(map_err)?;
    Ok((r.matched_count > 0).then(|| claimed(seen + 1)))
}

pub(super) async fn release_owner(
    s: &Inner,
    device_id: &str,
    node: &str,
    epoch: u64,
    now: i64,
) -> StoreResult<bool> {
    let q = held_owner_query(device_id, node, to_i64(epoch, "epoch")?);
    let r = s
        .coll::<Document>(q.collection)
        .update_one(q.filter, doc! { "$set": { "clean": true, "since": now } })
        .await
        .map_err(map_err)?;
    Ok(r.matched_count > 0)
}

/// Deleting a device: its owner record.
pub(super) async fn delete_owner(s: &Inner, device_id: &str) -> StoreResult<()> {
    let q = owner_query("delete_device", device_id);
    s.coll::<Document>(q.collection)
        .delete_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(())
}
