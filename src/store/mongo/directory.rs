//! Tenants, devices, contacts and groups in the MongoDB store. Each query's filter is
//! built by one function, used by the store and listed for `/admin/db/stats` and the
//! index tests (see `stats.rs`).
//!
//! Group membership changes are single-document updates guarded by the group's
//! `version` (compare and swap): the change is computed from the group as read, and
//! applied only if no other change came in between, else read again. That makes a
//! concurrent change impossible to lose and the member limit exact on any server
//! (an array-position `$exists` guard would need no retry, but not every server
//! evaluates array positions in a filter).

use std::collections::{BTreeSet, HashMap, HashSet};

use actors::store::{DeviceRecord, GroupRecord, StoreError, StoreResult, TenantRecord};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ReturnDocument;
use protocol::rest::Contact;
use serde::{Deserialize, Serialize};

use super::stats::KnownQuery;
use super::{
    aggregate_all, bson_i64, coll, find_all, limit_i64, map_err, now_ms, to_u64, Inner, CHUNK,
    DUPLICATE_KEY,
};

/// How often a membership change is tried against concurrent changes before giving up.
const CAS_ATTEMPTS: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct TenantDoc {
    #[serde(rename = "_id")]
    id: String,
    name: String,
    api_key_hash: String,
    created_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeviceDoc {
    #[serde(rename = "_id")]
    id: String,
    /// The id again, as an ordinary field for the `(tenant_id, device_id)` index: not
    /// every server indexes `_id` inside a compound key.
    device_id: String,
    tenant_id: String,
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ContactDoc {
    address: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GroupDoc {
    #[serde(rename = "_id")]
    id: String,
    /// The id again, for the `(tenant_id, group_id)` index (see [`DeviceDoc`]).
    group_id: String,
    tenant_id: String,
    name: String,
    members: Vec<String>,
    created_at: i64,
    version: i64,
}

impl From<TenantDoc> for TenantRecord {
    fn from(d: TenantDoc) -> Self {
        TenantRecord {
            id: d.id,
            name: d.name,
            api_key_hash: d.api_key_hash,
            created_at: d.created_at,
        }
    }
}

impl From<DeviceDoc> for DeviceRecord {
    fn from(d: DeviceDoc) -> Self {
        DeviceRecord {
            id: d.id,
            tenant_id: d.tenant_id,
            address: d.address,
            name: d.name,
            created_at: d.created_at,
            last_seen: d.last_seen,
        }
    }
}

impl GroupDoc {
    fn into_record(self) -> StoreResult<GroupRecord> {
        let mut members = self.members;
        members.sort();
        members.dedup();
        Ok(GroupRecord {
            version: to_u64(self.version, "group version")?,
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            members,
            created_at: self.created_at,
        })
    }
}

// ---- the queries ----

/// Tenant by API key hash.
pub(super) fn tenant_by_key_query(hash: &str) -> KnownQuery {
    KnownQuery::new(
        "tenant_by_key_hash",
        coll::TENANTS,
        doc! { "api_key_hash": hash },
    )
    .index("tenants_key")
}

/// Every tenant (a handful: no index).
pub(super) fn list_tenants_query() -> KnownQuery {
    KnownQuery::new("list_tenants", coll::TENANTS, doc! {}).sort(doc! { "created_at": 1, "_id": 1 })
}

/// Device by id (reading, updating or deleting it).
pub(super) fn device_query(operation: &'static str, id: &str) -> KnownQuery {
    KnownQuery::new(operation, coll::DEVICES, doc! { "_id": id }).index("_id_")
}

/// Device by tenant and address.
pub(super) fn device_by_address_query(tenant_id: &str, address: &str) -> KnownQuery {
    KnownQuery::new(
        "device_by_address",
        coll::DEVICES,
        doc! { "tenant_id": tenant_id, "address": address },
    )
    .index("devices_address")
}

/// A page of a tenant's devices, by id.
pub(super) fn list_devices_query(tenant_id: &str, after: &str) -> KnownQuery {
    KnownQuery::new(
        "list_devices",
        coll::DEVICES,
        doc! { "tenant_id": tenant_id, "device_id": { "$gt": after } },
    )
    .sort(doc! { "device_id": 1 })
    .index("devices_tenant")
}

/// Devices per tenant: counts every device (a scan by design, as in SQLite).
pub(super) fn device_counts_query() -> KnownQuery {
    KnownQuery::new("device_counts", coll::DEVICES, doc! {})
}

/// Contacts of a device, by address (also deletes them with the device).
pub(super) fn contacts_query(operation: &'static str, device_id: &str) -> KnownQuery {
    KnownQuery::new(operation, coll::CONTACTS, doc! { "device_id": device_id })
        .sort(doc! { "address": 1 })
        .index("contacts_address")
}

/// Which of some addresses a device has as contacts.
pub(super) fn contacts_in_query(device_id: &str, addresses: &[&str]) -> KnownQuery {
    KnownQuery::new(
        "upsert_contacts",
        coll::CONTACTS,
        doc! { "device_id": device_id, "address": { "$in": addresses } },
    )
    .index("contacts_address")
}

/// One contact (the upsert's filter).
pub(super) fn contact_query(device_id: &str, address: &str) -> KnownQuery {
    KnownQuery::new(
        "upsert_contacts",
        coll::CONTACTS,
        doc! { "device_id": device_id, "address": address },
    )
    .index("contacts_address")
}

/// Group by id.
pub(super) fn get_group_query(id: &str) -> KnownQuery {
    KnownQuery::new("get_group", coll::GROUPS, doc! { "_id": id }).index("_id_")
}

/// The group as read at `version` (the compare-and-swap of a membership change).
pub(super) fn group_at_version_query(id: &str, version: i64) -> KnownQuery {
    KnownQuery::new(
        "add_group_members",
        coll::GROUPS,
        doc! { "_id": id, "version": version },
    )
    .index("_id_")
    .residual(&["version"])
}

/// A tenant's group by id (the replace of a group sync).
pub(super) fn tenant_group_query(id: &str, tenant_id: &str) -> KnownQuery {
    KnownQuery::new(
        "upsert_groups",
        coll::GROUPS,
        doc! { "_id": id, "tenant_id": tenant_id },
    )
    .index("_id_")
    .residual(&["tenant_id"])
}

/// The group if `address` is a member.
pub(super) fn group_member_query(id: &str, address: &str) -> KnownQuery {
    KnownQuery::new(
        "remove_group_member",
        coll::GROUPS,
        doc! { "_id": id, "members": address },
    )
    .index("_id_")
    .residual(&["members"])
}

// ---- tenants ----

pub(super) async fn create_tenant(s: &Inner, t: &TenantRecord) -> StoreResult<()> {
    let d = TenantDoc {
        id: t.id.clone(),
        name: t.name.clone(),
        api_key_hash: t.api_key_hash.clone(),
        created_at: t.created_at,
    };
    s.coll::<TenantDoc>(coll::TENANTS)
        .insert_one(&d)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn tenant_by_key(s: &Inner, hash: &str) -> StoreResult<Option<TenantRecord>> {
    let q = tenant_by_key_query(hash);
    let found = s
        .coll::<TenantDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(found.map(Into::into))
}

pub(super) async fn list_tenants(s: &Inner) -> StoreResult<Vec<TenantRecord>> {
    let q = list_tenants_query();
    let docs = find_all(
        &s.coll::<TenantDoc>(q.collection),
        q.filter,
        q.sort,
        None,
        None,
    )
    .await?;
    Ok(docs.into_iter().map(Into::into).collect())
}

// ---- devices ----

pub(super) async fn create_device(s: &Inner, d: &DeviceRecord) -> StoreResult<()> {
    let doc = DeviceDoc {
        id: d.id.clone(),
        device_id: d.id.clone(),
        tenant_id: d.tenant_id.clone(),
        address: d.address.clone(),
        name: d.name.clone(),
        created_at: d.created_at,
        last_seen: d.last_seen,
    };
    s.coll::<DeviceDoc>(coll::DEVICES)
        .insert_one(&doc)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn get_device(s: &Inner, id: &str) -> StoreResult<Option<DeviceRecord>> {
    let q = device_query("get_device", id);
    let found = s
        .coll::<DeviceDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(found.map(Into::into))
}

pub(super) async fn device_by_address(
    s: &Inner,
    tenant_id: &str,
    address: &str,
) -> StoreResult<Option<DeviceRecord>> {
    let q = device_by_address_query(tenant_id, address);
    let found = s
        .coll::<DeviceDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(found.map(Into::into))
}

pub(super) async fn list_devices(
    s: &Inner,
    tenant_id: &str,
    after: &str,
    limit: usize,
) -> StoreResult<Vec<DeviceRecord>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let q = list_devices_query(tenant_id, after);
    let docs = find_all(
        &s.coll::<DeviceDoc>(q.collection),
        q.filter,
        q.sort,
        Some(limit_i64(limit)),
        None,
    )
    .await?;
    Ok(docs.into_iter().map(Into::into).collect())
}

pub(super) async fn device_counts(s: &Inner) -> StoreResult<HashMap<String, u64>> {
    let q = device_counts_query();
    let rows = aggregate_all(
        &s.coll::<Document>(q.collection),
        vec![
            doc! { "$match": q.filter },
            doc! { "$group": { "_id": "$tenant_id", "n": { "$sum": 1 } } },
        ],
    )
    .await?;
    let mut out = HashMap::new();
    for r in rows {
        let tenant = match r.get("_id") {
            Some(Bson::String(t)) => t.clone(),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "device without a tenant id: {other:?}"
                )))
            }
        };
        let n = r.get("n").and_then(bson_i64).unwrap_or(0);
        out.insert(tenant, to_u64(n, "device count")?);
    }
    Ok(out)
}

pub(super) async fn set_last_seen(s: &Inner, id: &str, ts: i64) -> StoreResult<()> {
    let q = device_query("set_last_seen", id);
    s.coll::<Document>(q.collection)
        .update_one(q.filter, doc! { "$set": { "last_seen": ts } })
        .await
        .map_err(map_err)?;
    Ok(())
}

/// The device document itself (last step of deleting a device).
pub(super) async fn delete_device(s: &Inner, id: &str) -> StoreResult<bool> {
    let q = device_query("delete_device", id);
    let r = s
        .coll::<Document>(q.collection)
        .delete_one(q.filter)
        .await
        .map_err(map_err)?;
    Ok(r.deleted_count > 0)
}

// ---- contacts ----

/// New contacts in one unordered `insert_many`, known ones in one `update` command
/// (per chunk of 10,000): far cheaper than an upsert per contact on any server. The
/// last entry for an address wins, as in SQLite.
pub(super) async fn upsert_contacts(
    s: &Inner,
    device_id: &str,
    contacts: &[Contact],
) -> StoreResult<usize> {
    #[derive(Deserialize)]
    struct AddressRead {
        address: String,
    }
    #[derive(Serialize)]
    struct ContactWrite<'a> {
        device_id: &'a str,
        address: &'a str,
        name: Option<&'a str>,
        updated_at: i64,
    }
    let now = now_ms();
    let mut latest: HashMap<&str, Option<&str>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for c in contacts {
        if latest.insert(&c.address, c.name.as_deref()).is_none() {
            order.push(&c.address);
        }
    }
    let mut existing: HashSet<String> = HashSet::new();
    for chunk in order.chunks(CHUNK) {
        let q = contacts_in_query(device_id, chunk);
        let found = find_all(
            &s.coll::<AddressRead>(q.collection),
            q.filter,
            None,
            None,
            Some(doc! { "_id": 0, "address": 1 }),
        )
        .await?;
        existing.extend(found.into_iter().map(|a| a.address));
    }
    let name_of = |a: &str| latest.get(a).copied().flatten();
    let fresh: Vec<ContactWrite<'_>> = order
        .iter()
        .filter(|a| !existing.contains(**a))
        .map(|a| ContactWrite {
            device_id,
            address: a,
            name: name_of(a),
            updated_at: now,
        })
        .collect();
    let mut known: Vec<&str> = order
        .iter()
        .copied()
        .filter(|a| existing.contains(*a))
        .collect();
    if !fresh.is_empty() {
        let result = s
            .coll::<ContactWrite<'_>>(coll::CONTACTS)
            .insert_many(&fresh)
            .ordered(false)
            .await;
        if let Err(e) = result {
            match *e.kind {
                // Stored meanwhile by a concurrent call: updated below instead.
                ErrorKind::InsertMany(ref f)
                    if f.write_concern_error.is_none()
                        && f.write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == DUPLICATE_KEY) =>
                {
                    known.extend(
                        f.write_errors
                            .iter()
                            .flatten()
                            .filter_map(|w| fresh.get(w.index).map(|c| c.address)),
                    );
                }
                _ => return Err(map_err(e)),
            }
        }
    }
    let statements: Vec<Document> = known
        .iter()
        .map(|a| {
            let name = name_of(a).map_or(Bson::Null, |n| Bson::String(n.to_owned()));
            doc! {
                "q": contact_query(device_id, a).filter,
                "u": { "$set": { "name": name, "updated_at": now } },
                "upsert": true,
            }
        })
        .collect();
    s.update_statements(coll::CONTACTS, statements, false)
        .await?;
    Ok(contacts.len())
}

pub(super) async fn list_contacts(s: &Inner, device_id: &str) -> StoreResult<Vec<Contact>> {
    let q = contacts_query("list_contacts", device_id);
    let docs = find_all(
        &s.coll::<ContactDoc>(q.collection),
        q.filter,
        q.sort,
        None,
        Some(doc! { "_id": 0, "address": 1, "name": 1 }),
    )
    .await?;
    Ok(docs
        .into_iter()
        .map(|d| Contact {
            address: d.address,
            name: d.name,
        })
        .collect())
}

pub(super) async fn delete_contacts(s: &Inner, device_id: &str) -> StoreResult<()> {
    let q = contacts_query("delete_device", device_id);
    s.coll::<Document>(q.collection)
        .delete_many(q.filter)
        .await
        .map_err(map_err)?;
    Ok(())
}

// ---- groups ----

pub(super) async fn create_group(s: &Inner, g: &GroupRecord) -> StoreResult<()> {
    let d = GroupDoc {
        id: g.id.clone(),
        group_id: g.id.clone(),
        tenant_id: g.tenant_id.clone(),
        name: g.name.clone(),
        members: g.members.clone(),
        created_at: g.created_at,
        version: i64::try_from(g.version).unwrap_or(i64::MAX),
    };
    s.coll::<GroupDoc>(coll::GROUPS)
        .insert_one(&d)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn read_group(s: &Inner, id: &str) -> StoreResult<Option<GroupDoc>> {
    let q = get_group_query(id);
    s.coll::<GroupDoc>(q.collection)
        .find_one(q.filter)
        .await
        .map_err(map_err)
}

pub(super) async fn get_group(s: &Inner, id: &str) -> StoreResult<Option<GroupRecord>> {
    read_group(s, id)
        .await?
        .map(GroupDoc::into_record)
        .transpose()
}

pub(super) async fn add_group_members(
    s: &Inner,
    id: &str,
    added: &[String],
    max_members: usize,
) -> StoreResult<Option<GroupRecord>> {
    let groups = s.coll::<GroupDoc>(coll::GROUPS);
    for _ in 0..CAS_ATTEMPTS {
        let Some(group) = read_group(s, id).await? else {
            return Ok(None);
        };
        let current: BTreeSet<&str> = group.members.iter().map(String::as_str).collect();
        let mut new: Vec<&str> = added
            .iter()
            .map(String::as_str)
            .filter(|a| !current.contains(a))
            .collect();
        new.sort_unstable();
        new.dedup();
        if current.len() + new.len() > max_members {
            return Err(StoreError::Limit(format!(
                "a group has at most {max_members} members"
            )));
        }
        if new.is_empty() {
            return group.into_record().map(Some);
        }
        let q = group_at_version_query(id, group.version);
        let updated = groups
            .find_one_and_update(
                q.filter,
                doc! {
                    "$addToSet": { "members": { "$each": new } },
                    "$inc": { "version": 1_i64 },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?;
        if let Some(g) = updated {
            return g.into_record().map(Some);
        }
        // Another change came in between: read it and try again.
        tokio::task::yield_now().await;
    }
    Err(StoreError::Unavailable(format!(
        "group {id}: too many concurrent membership changes"
    )))
}

pub(super) async fn remove_group_member(
    s: &Inner,
    id: &str,
    address: &str,
) -> StoreResult<Option<(GroupRecord, bool)>> {
    // One conditional update: it matches only if the address is a member, so the
    // version is bumped only then.
    let q = group_member_query(id, address);
    let updated = s
        .coll::<GroupDoc>(q.collection)
        .find_one_and_update(
            q.filter,
            doc! { "$pull": { "members": address }, "$inc": { "version": 1_i64 } },
        )
        .return_document(ReturnDocument::After)
        .await
        .map_err(map_err)?;
    if let Some(g) = updated {
        return Ok(Some((g.into_record()?, true)));
    }
    Ok(read_group(s, id)
        .await?
        .map(GroupDoc::into_record)
        .transpose()?
        .map(|g| (g, false)))
}

/// Creates or replaces groups one by one (see `Store::upsert_groups`): a replace is
/// one conditional update within the tenant; when it matches nothing the insert
/// creates the group, or fails on the taken id of another tenant's group.
pub(super) async fn upsert_groups(
    s: &Inner,
    groups: Vec<GroupRecord>,
) -> StoreResult<Vec<GroupRecord>> {
    let coll = s.coll::<GroupDoc>(coll::GROUPS);
    let mut stored = Vec::with_capacity(groups.len());
    for g in groups {
        let q = tenant_group_query(&g.id, &g.tenant_id);
        let replaced = coll
            .find_one_and_update(
                q.filter,
                doc! {
                    "$set": { "name": g.name.clone(), "members": g.members.clone() },
                    "$inc": { "version": 1_i64 },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?;
        match replaced {
            Some(d) => stored.push(d.into_record()?),
            None => {
                create_group(s, &g).await?;
                stored.push(g);
            }
        }
    }
    Ok(stored)
}
