//! Tenants, devices, contacts and groups in the SQLite store. Each query is one
//! constant, used by the store and listed for `/admin/db/stats` (see `stats.rs`).

use std::collections::HashMap;

use actors::store::{DeviceRecord, GroupRecord, StoreError, StoreResult, TenantRecord};
use protocol::rest::Contact;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{conflict_or_unavailable, limit_i64, now_ms, unavailable};

/// Tenant by API key hash.
pub const TENANT_BY_KEY: &str =
    "SELECT id, name, api_key_hash, created_at FROM tenants WHERE api_key_hash = ?1";
/// Every tenant.
pub const LIST_TENANTS: &str =
    "SELECT id, name, api_key_hash, created_at FROM tenants ORDER BY created_at, id";
const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, name, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4)";

const DEVICE_COLUMNS: &str = "id, tenant_id, address, name, created_at, last_seen";
/// Device by id.
pub const GET_DEVICE: &str =
    "SELECT id, tenant_id, address, name, created_at, last_seen FROM devices WHERE id = ?1";
/// Device by tenant and address.
pub const DEVICE_BY_ADDRESS: &str = "SELECT id, tenant_id, address, name, created_at, last_seen \
     FROM devices WHERE tenant_id = ?1 AND address = ?2";
/// A page of a tenant's devices.
pub const LIST_DEVICES: &str = "SELECT id, tenant_id, address, name, created_at, last_seen \
     FROM devices WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
/// Devices per tenant.
pub const DEVICE_COUNTS: &str = "SELECT tenant_id, COUNT(*) FROM devices GROUP BY tenant_id";
/// Last seen of a device.
pub const SET_LAST_SEEN: &str = "UPDATE devices SET last_seen = ?2 WHERE id = ?1";

/// A device's contacts.
pub const LIST_CONTACTS: &str =
    "SELECT address, name FROM contacts WHERE device_id = ?1 ORDER BY address";
const UPSERT_CONTACT: &str = "INSERT INTO contacts (device_id, address, name, updated_at) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (device_id, address) DO UPDATE SET \
     name = excluded.name, updated_at = excluded.updated_at";

/// Group by id.
pub const GET_GROUP: &str =
    "SELECT id, tenant_id, name, members, created_at, version FROM groups WHERE id = ?1";
const INSERT_GROUP: &str =
    "INSERT INTO groups (id, tenant_id, name, members, created_at, version) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SET_MEMBERS: &str = "UPDATE groups SET members = ?2, version = version + 1 WHERE id = ?1";
/// A group sync's replace: name and members, version bumped, within its tenant.
const REPLACE_GROUP: &str = "UPDATE groups SET name = ?3, members = ?4, version = version + 1 \
     WHERE id = ?1 AND tenant_id = ?2 RETURNING created_at, version";

/// Deleting a device: its rows in each table (inbox and jobs in `inbox.rs`, `jobs.rs`).
pub const DELETE_DEVICE: &str = "DELETE FROM devices WHERE id = ?1";
/// Its contacts.
pub const DELETE_CONTACTS: &str = "DELETE FROM contacts WHERE device_id = ?1";

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    Ok(TenantRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        api_key_hash: row.get(2)?,
        created_at: row.get(3)?,
    })
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        address: row.get(2)?,
        name: row.get(3)?,
        created_at: row.get(4)?,
        last_seen: row.get(5)?,
    })
}

pub(super) fn create_tenant(conn: &Connection, t: &TenantRecord) -> StoreResult<()> {
    conn.prepare_cached(INSERT_TENANT)
        .and_then(|mut st| st.execute(params![t.id, t.name, t.api_key_hash, t.created_at]))
        .map_err(conflict_or_unavailable)?;
    Ok(())
}

pub(super) fn tenant_by_key(conn: &Connection, hash: &str) -> StoreResult<Option<TenantRecord>> {
    conn.prepare_cached(TENANT_BY_KEY)
        .and_then(|mut st| st.query_row([hash], tenant_from_row).optional())
        .map_err(unavailable)
}

pub(super) fn list_tenants(conn: &Connection) -> StoreResult<Vec<TenantRecord>> {
    conn.prepare_cached(LIST_TENANTS)
        .and_then(|mut st| st.query_map([], tenant_from_row)?.collect())
        .map_err(unavailable)
}

pub(super) fn create_device(conn: &Connection, d: &DeviceRecord) -> StoreResult<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            d.id,
            d.tenant_id,
            d.address,
            d.name,
            d.created_at,
            d.last_seen
        ])
    })
    .map_err(conflict_or_unavailable)?;
    Ok(())
}

pub(super) fn get_device(conn: &Connection, id: &str) -> StoreResult<Option<DeviceRecord>> {
    conn.prepare_cached(GET_DEVICE)
        .and_then(|mut st| st.query_row([id], device_from_row).optional())
        .map_err(unavailable)
}

pub(super) fn device_by_address(
    conn: &Connection,
    tenant_id: &str,
    address: &str,
) -> StoreResult<Option<DeviceRecord>> {
    conn.prepare_cached(DEVICE_BY_ADDRESS)
        .and_then(|mut st| {
            st.query_row([tenant_id, address], device_from_row)
                .optional()
        })
        .map_err(unavailable)
}

pub(super) fn list_devices(
    conn: &Connection,
    tenant_id: &str,
    after: &str,
    limit: usize,
) -> StoreResult<Vec<DeviceRecord>> {
    conn.prepare_cached(LIST_DEVICES)
        .and_then(|mut st| {
            st.query_map(params![tenant_id, after, limit_i64(limit)], device_from_row)?
                .collect()
        })
        .map_err(unavailable)
}

pub(super) fn device_counts(conn: &Connection) -> StoreResult<HashMap<String, u64>> {
    conn.prepare_cached(DEVICE_COUNTS)
        .and_then(|mut st| {
            st.query_map([], |r| {
                let n: i64 = r.get(1)?;
                Ok((r.get::<_, String>(0)?, u64::try_from(n).unwrap_or(0)))
            })?
            .collect()
        })
        .map_err(unavailable)
}

pub(super) fn set_last_seen(conn: &Connection, id: &str, ts: i64) -> StoreResult<()> {
    conn.prepare_cached(SET_LAST_SEEN)
        .and_then(|mut st| st.execute(params![id, ts]))
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn upsert_contacts(
    conn: &mut Connection,
    device_id: &str,
    contacts: &[Contact],
) -> StoreResult<usize> {
    let now = now_ms();
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut st = tx.prepare_cached(UPSERT_CONTACT).map_err(unavailable)?;
        for c in contacts {
            st.execute(params![device_id, c.address, c.name, now])
                .map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(contacts.len())
}

pub(super) fn list_contacts(conn: &Connection, device_id: &str) -> StoreResult<Vec<Contact>> {
    conn.prepare_cached(LIST_CONTACTS)
        .and_then(|mut st| {
            st.query_map([device_id], |r| {
                Ok(Contact {
                    address: r.get(0)?,
                    name: r.get(1)?,
                })
            })?
            .collect()
        })
        .map_err(unavailable)
}

fn encode_members(members: &[String]) -> StoreResult<String> {
    serde_json::to_string(members)
        .map_err(|e| StoreError::Corrupt(format!("encoding group members: {e}")))
}

fn group_from_row(row: &Row<'_>) -> rusqlite::Result<(GroupRecord, String)> {
    let version: i64 = row.get(5)?;
    Ok((
        GroupRecord {
            id: row.get(0)?,
            tenant_id: row.get(1)?,
            name: row.get(2)?,
            members: Vec::new(),
            created_at: row.get(4)?,
            version: u64::try_from(version).unwrap_or(0),
        },
        row.get(3)?,
    ))
}

pub(super) fn create_group(conn: &Connection, g: &GroupRecord) -> StoreResult<()> {
    let members = encode_members(&g.members)?;
    conn.prepare_cached(INSERT_GROUP)
        .and_then(|mut st| {
            st.execute(params![
                g.id,
                g.tenant_id,
                g.name,
                members,
                g.created_at,
                i64::try_from(g.version).unwrap_or(0)
            ])
        })
        .map_err(conflict_or_unavailable)?;
    Ok(())
}

pub(super) fn get_group(conn: &Connection, id: &str) -> StoreResult<Option<GroupRecord>> {
    let found = conn
        .prepare_cached(GET_GROUP)
        .and_then(|mut st| st.query_row([id], group_from_row).optional())
        .map_err(unavailable)?;
    match found {
        None => Ok(None),
        Some((mut group, members)) => {
            group.members = serde_json::from_str(&members)
                .map_err(|e| StoreError::Corrupt(format!("group {id}: members: {e}")))?;
            Ok(Some(group))
        }
    }
}

/// Read-modify-write of a group's members inside one transaction on the single writer
/// connection: atomic, so concurrent changes are never lost. `change` answers whether
/// it changed anything.
pub(super) fn change_members(
    conn: &mut Connection,
    id: &str,
    change: impl FnOnce(&mut Vec<String>) -> StoreResult<bool>,
) -> StoreResult<Option<(GroupRecord, bool)>> {
    let tx = conn.transaction().map_err(unavailable)?;
    let Some(mut group) = get_group(&tx, id)? else {
        return Ok(None);
    };
    let changed = change(&mut group.members)?;
    if changed {
        let members = encode_members(&group.members)?;
        tx.prepare_cached(SET_MEMBERS)
            .and_then(|mut st| st.execute(params![id, members]))
            .map_err(unavailable)?;
        group.version += 1;
    }
    tx.commit().map_err(unavailable)?;
    Ok(Some((group, changed)))
}

/// Creates or replaces groups in one transaction (see `Store::upsert_groups`).
pub(super) fn upsert_groups(
    conn: &mut Connection,
    groups: Vec<GroupRecord>,
) -> StoreResult<Vec<GroupRecord>> {
    let tx = conn.transaction().map_err(unavailable)?;
    let mut stored = Vec::with_capacity(groups.len());
    for mut g in groups {
        let members = encode_members(&g.members)?;
        let replaced = tx
            .prepare_cached(REPLACE_GROUP)
            .and_then(|mut st| {
                st.query_row(params![g.id, g.tenant_id, g.name, members], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
            })
            .map_err(unavailable)?;
        match replaced {
            Some((created_at, version)) => {
                g.created_at = created_at;
                g.version = u64::try_from(version).unwrap_or(0);
            }
            // Absent, or another tenant's: the insert tells them apart (the id is taken).
            None => create_group(&tx, &g)?,
        }
        stored.push(g);
    }
    tx.commit().map_err(unavailable)?;
    Ok(stored)
}
