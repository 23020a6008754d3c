//! Node leases and device ownership in the SQLite store (`docs/cluster.md`): the
//! `nodes` and `owners` tables. One process runs on SQLite, so nothing here races
//! another node; the tables give the embedded store the same contract as MongoDB's
//! (one owner per device, fencing epochs bumped by compare-and-set), and each change
//! is one statement on the single writer connection.

use actors::store::{NodeLoad, NodeRecord, OwnerRecord, StoreResult};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::inbox::read_error;
use super::{to_i64, unavailable};

/// Registers a node or replaces its record.
const PUT_NODE: &str = "INSERT INTO nodes \
     (id, addr, started_at, lease_until, draining, connections, sessions) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, started_at = excluded.started_at, \
     lease_until = excluded.lease_until, draining = excluded.draining, \
     connections = excluded.connections, sessions = excluded.sessions";
/// A node's heartbeat.
pub const RENEW_NODE: &str = "UPDATE nodes SET lease_until = ?2, draining = ?3, \
     connections = ?4, sessions = ?5 WHERE id = ?1";
/// Every node, by id.
pub const LIST_NODES: &str = "SELECT id, addr, started_at, lease_until, draining, connections, \
     sessions FROM nodes ORDER BY id";
/// Deregistering a node.
pub const REMOVE_NODE: &str = "DELETE FROM nodes WHERE id = ?1";

/// A device's owner record.
pub const GET_OWNER: &str =
    "SELECT device_id, node, epoch, clean, since FROM owners WHERE device_id = ?1";
/// The first claim of a device (epoch 1); a record already there is left alone.
const FIRST_CLAIM: &str = "INSERT OR IGNORE INTO owners (device_id, node, epoch, clean, since) \
     VALUES (?1, ?2, 1, 0, ?3)";
/// A claim over the epoch read (compare-and-set).
pub const CLAIM_OWNER: &str = "UPDATE owners SET node = ?2, epoch = ?3 + 1, clean = 0, \
     since = ?4 WHERE device_id = ?1 AND epoch = ?3";
/// A release by the owner of that epoch.
pub const RELEASE_OWNER: &str = "UPDATE owners SET clean = 1, since = ?4 \
     WHERE device_id = ?1 AND node = ?2 AND epoch = ?3";
/// Deleting a device: its owner record.
pub const DELETE_OWNER: &str = "DELETE FROM owners WHERE device_id = ?1";

fn node_from_row(r: &Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        id: r.get(0)?,
        addr: r.get(1)?,
        started_at: r.get(2)?,
        lease_until: r.get(3)?,
        draining: r.get(4)?,
        connections: r.get(5)?,
        sessions: r.get(6)?,
    })
}

fn owner_from_row(r: &Row<'_>) -> rusqlite::Result<OwnerRecord> {
    Ok(OwnerRecord {
        device_id: r.get(0)?,
        node: r.get(1)?,
        epoch: r.get(2)?,
        clean: r.get(3)?,
        since: r.get(4)?,
    })
}

pub(super) fn put_node(conn: &Connection, n: &NodeRecord) -> StoreResult<()> {
    let connections = to_i64(n.connections, "connections")?;
    let sessions = to_i64(n.sessions, "sessions")?;
    conn.prepare_cached(PUT_NODE)
        .and_then(|mut st| {
            st.execute(params![
                n.id,
                n.addr,
                n.started_at,
                n.lease_until,
                n.draining,
                connections,
                sessions
            ])
        })
        .map(|_| ())
        .map_err(unavailable)
}

pub(super) fn renew_node(
    conn: &Connection,
    id: &str,
    lease_until: i64,
    load: NodeLoad,
) -> StoreResult<bool> {
    let connections = to_i64(load.connections, "connections")?;
    let sessions = to_i64(load.sessions, "sessions")?;
    conn.prepare_cached(RENEW_NODE)
        .and_then(|mut st| {
            st.execute(params![
                id,
                lease_until,
                load.draining,
                connections,
                sessions
            ])
        })
        .map(|n| n > 0)
        .map_err(unavailable)
}

pub(super) fn list_nodes(conn: &Connection) -> StoreResult<Vec<NodeRecord>> {
    conn.prepare_cached(LIST_NODES)
        .and_then(|mut st| st.query_map([], node_from_row)?.collect())
        .map_err(read_error)
}

pub(super) fn remove_node(conn: &Connection, id: &str) -> StoreResult<()> {
    conn.prepare_cached(REMOVE_NODE)
        .and_then(|mut st| st.execute([id]))
        .map(|_| ())
        .map_err(unavailable)
}

pub(super) fn get_owner(conn: &Connection, device_id: &str) -> StoreResult<Option<OwnerRecord>> {
    conn.prepare_cached(GET_OWNER)
        .and_then(|mut st| st.query_row([device_id], owner_from_row).optional())
        .map_err(read_error)
}

pub(super) fn claim_owner(
    conn: &Connection,
    device_id: &str,
    node: &str,
    seen: Option<u64>,
    now: i64,
) -> StoreResult<Option<OwnerRecord>> {
    let (changed, epoch) = match seen {
        None => {
            let n = conn
                .prepare_cached(FIRST_CLAIM)
                .and_then(|mut st| st.execute(params![device_id, node, now]))
                .map_err(unavailable)?;
            (n, 1)
        }
        Some(seen) => {
            // The next epoch must fit the column too.
            let next = to_i64(seen.saturating_add(1), "epoch")?;
            let n = conn
                .prepare_cached(CLAIM_OWNER)
                .and_then(|mut st| st.execute(params![device_id, node, next - 1, now]))
                .map_err(unavailable)?;
            (n, seen + 1)
        }
    };
    Ok((changed > 0).then(|| OwnerRecord {
        device_id: device_id.to_owned(),
        node: node.to_owned(),
        epoch,
        clean: false,
        since: now,
    }))
}

pub(super) fn release_owner(
    conn: &Connection,
    device_id: &str,
    node: &str,
    epoch: u64,
    now: i64,
) -> StoreResult<bool> {
    let epoch = to_i64(epoch, "epoch")?;
    conn.prepare_cached(RELEASE_OWNER)
        .and_then(|mut st| st.execute(params![device_id, node, epoch, now]))
        .map(|n| n > 0)
        .map_err(unavailable)
}
