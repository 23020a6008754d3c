//! Every index of the MongoDB store, in one list ([`INDEXES`]): ensured at start
//! (idempotently: `createIndexes` with the same specification is a no-op), reported by
//! `/admin/db/stats`, and checked against every query the store runs by the contract
//! suite (each query in `stats::known_queries` names the index that serves it).
//!
//! The replaced system's indexes (DESIGN.md) and where they went:
//!
//! | replaced system | here |
//! | --- | --- |
//! | messages `deviceId+messageId` | `inbox_device_message`: inbox `(device_id, message_id)` |
//! | messages `deviceId+chatId+timestamp` | `inbox_device_chat_ts`: inbox `(device_id, chat, ts)` |
//! | messages `deviceId+seq` unique (sync) | `inbox_seq`: inbox `(device_id, seq)` unique |
//! | contacts `deviceId+whatsappId` | `contacts_address`: contacts `(device_id, address)` unique |
//! | contacts `phoneNumber` | `contacts_by_address`: contacts `(address)` |
//! | groups `deviceId/tenantId+groupId` | `groups_tenant`: groups `(tenant_id, group_id)` |
//! | devices `deviceId` | the `_id` index (a device's id is its `_id`) |
//! | devices `userId+tenantId+isConnected` | none: there are no users, and connection state lives in the device session, not the store; `devices_tenant` `(tenant_id, device_id)` serves listing |
//! | users `email+tenantId`, `tenantId+isActive` | none: there is no users collection (tenants authenticate with an API key, `tenants_key`) |
//!
//! Devices and groups carry their id twice, as `_id` and as `device_id` / `group_id`:
//! the compound `(tenant_id, …)` keys use the ordinary field, since not every server
//! indexes `_id` inside a compound key (nx-27017 fails every insert then).
//!
//! The other indexes serve one query each (see `purpose`). Partial indexes cover only
//! the documents their query can match, so they stay small: the waiting jobs, the
//! delayed jobs, the active jobs, the sender's own rows that carry a request id.
//! `inbox_message_once` serves no query: it keeps an inbox from holding a message
//! twice (see `inbox.rs` for why its key is `message_key`). Nodes, owners and lanes
//! are read by `_id` only.

use std::collections::BTreeMap;

use actors::store::{StoreError, StoreResult};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::{coll, map_err};

/// The name of the index every collection has on `_id`.
pub const ID_INDEX: &str = "_id_";

/// The documents a partial index covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Those whose field equals a string (`{state: "waiting"}`).
    Equals(&'static str, &'static str),
    /// Those whose field equals a number (`{kind: 0}`).
    EqualsNumber(&'static str, i64),
    /// Those that have the field (`{client_id: {$exists: true}}`).
    Exists(&'static str),
}

impl Partial {
    /// The `partialFilterExpression`.
    pub fn filter(&self) -> Document {
        match self {
            Partial::Equals(field, value) => doc! { *field: *value },
            Partial::EqualsNumber(field, value) => doc! { *field: *value },
            Partial::Exists(field) => doc! { *field: { "$exists": true } },
        }
    }

    /// The field it filters on.
    pub fn field(&self) -> &'static str {
        match self {
            Partial::Equals(field, _)
            | Partial::EqualsNumber(field, _)
            | Partial::Exists(field) => field,
        }
    }

    /// Whether a query filter restricts its field exactly as this partial filter does,
    /// so the query may use the index (the condition adds nothing beyond the index).
    pub fn matches_condition(&self, condition: &Bson) -> bool {
        match (self, condition) {
            (Partial::Equals(_, value), Bson::String(s)) => s == value,
            (Partial::EqualsNumber(_, value), n) => super::bson_i64(n) == Some(*value),
            (Partial::Exists(_), Bson::Document(d)) => {
                d.len() == 1 && d.get_bool("$exists") == Ok(true)
            }
            _ => false,
        }
    }

    /// Whether a query filter implies this partial filter (needed to use the index).
    pub fn implied_by(&self, condition: &Bson) -> bool {
        match (self, condition) {
            (Partial::Exists(_), Bson::Document(d)) => d.get_bool("$exists") == Ok(true),
            _ => self.matches_condition(condition),
        }
    }
}

/// One index of [`INDEXES`].
#[derive(Debug, Clone, Copy)]
pub struct IndexDef {
    /// Collection.
    pub collection: &'static str,
    /// Index name.
    pub name: &'static str,
    /// Key fields and directions, in order.
    pub keys: &'static [(&'static str, i32)],
    /// Whether it enforces uniqueness.
    pub unique: bool,
    /// The documents it covers (`None`: all).
    pub partial: Option<Partial>,
    /// What it serves (or which index of the replaced system it is).
    pub purpose: &'static str,
}

impl IndexDef {
    /// The key specification (`{field: 1, …}`).
    pub fn key_document(&self) -> Document {
        let mut d = Document::new();
        for (field, dir) in self.keys {
            d.insert(*field, *dir);
        }
        d
    }

    /// Whether `keys` (as a server lists them) is this index's key, directions
    /// included (numbers compared whatever their BSON type).
    pub fn has_keys(&self, keys: &Document) -> bool {
        keys.len() == self.keys.len()
            && keys.iter().zip(self.keys).all(|((k, v), (field, dir))| {
                k == field && super::bson_i64(v) == Some(i64::from(*dir))
            })
    }

    fn model(&self) -> IndexModel {
        let options = IndexOptions::builder()
            .name(self.name.to_owned())
            .unique(self.unique.then_some(true))
            .partial_filter_expression(self.partial.map(|p| p.filter()))
            .build();
        IndexModel::builder()
            .keys(self.key_document())
            .options(options)
            .build()
    }
}

const fn index(
    collection: &'static str,
    name: &'static str,
    keys: &'static [(&'static str, i32)],
    purpose: &'static str,
) -> IndexDef {
    IndexDef {
        collection,
        name,
        keys,
        unique: false,
        partial: None,
        purpose,
    }
}

const fn unique(def: IndexDef) -> IndexDef {
    IndexDef {
        unique: true,
        ..def
    }
}

const fn partial(def: IndexDef, p: Partial) -> IndexDef {
    IndexDef {
        partial: Some(p),
        ..def
    }
}

/// Every index the store ensures (the `_id` index of each collection aside).
pub const INDEXES: &[IndexDef] = &[
    // tenants
    unique(index(
        coll::TENANTS,
        "tenants_key",
        &[("api_key_hash", 1)],
        "authentication: the tenant of an API key",
    )),
    // devices
    unique(index(
        coll::DEVICES,
        "devices_address",
        &[("tenant_id", 1), ("address", 1)],
        "an address is unique in its tenant; device by address (routing)",
    )),
    index(
        coll::DEVICES,
        "devices_tenant",
        &[("tenant_id", 1), ("device_id", 1)],
        "a tenant's devices page by page",
    ),
    // contacts
    unique(index(
        coll::CONTACTS,
        "contacts_address",
        &[("device_id", 1), ("address", 1)],
        "replaced system: contacts deviceId+whatsappId; upsert and list by device",
    )),
    index(
        coll::CONTACTS,
        "contacts_by_address",
        &[("address", 1)],
        "replaced system: contacts phoneNumber (who has this number)",
    ),
    // groups
    index(
        coll::GROUPS,
        "groups_tenant",
        &[("tenant_id", 1), ("group_id", 1)],
        "replaced system: groups tenantId+groupId",
    ),
    // inbox
    unique(index(
        coll::INBOX,
        "inbox_seq",
        &[("device_id", 1), ("seq", 1)],
        "replaced system: deviceId+seq unique; sync (read an inbox after a seq), last seq",
    )),
    index(
        coll::INBOX,
        "inbox_device_message",
        &[("device_id", 1), ("message_id", 1)],
        "replaced system: messages deviceId+messageId; a device's rows about a message",
    ),
    index(
        coll::INBOX,
        "inbox_device_chat_ts",
        &[("device_id", 1), ("chat", 1), ("ts", 1)],
        "replaced system: messages deviceId+chatId+timestamp (a conversation in time order)",
    ),
    index(
        coll::INBOX,
        "inbox_message",
        &[("message_id", 1)],
        "every copy of a message (receipts, deleting a device's messages)",
    ),
    partial(
        unique(index(
            coll::INBOX,
            "inbox_message_once",
            &[("device_id", 1), ("message_key", 1)],
            "an inbox holds a message once (a redelivered row finds it there)",
        )),
        Partial::EqualsNumber("kind", 0),
    ),
    partial(
        index(
            coll::INBOX,
            "inbox_sent",
            &[("device_id", 1), ("seq", -1)],
            "the idempotency window: a device's latest sends with a request id",
        ),
        Partial::Exists("client_id"),
    ),
    partial(
        index(
            coll::INBOX,
            "inbox_client",
            &[("device_id", 1), ("client_id", 1)],
            "a device's sends by request id (and its .N resends)",
        ),
        Partial::Exists("client_id"),
    ),
    // jobs
    partial(
        index(
            coll::JOBS,
            "jobs_waiting",
            &[("rank", 1)],
            "claims: the best waiting jobs",
        ),
        Partial::Equals("state", "waiting"),
    ),
    partial(
        index(
            coll::JOBS,
            "jobs_delayed",
            &[("not_before", 1)],
            "promotion: delayed jobs whose time came",
        ),
        Partial::Equals("state", "delayed"),
    ),
    index(
        coll::JOBS,
        "jobs_lane_state",
        &[("lane", 1), ("state", 1)],
        "lane depths every second, index-only",
    ),
    partial(
        index(
            coll::JOBS,
            "jobs_tail",
            &[("tenant_id", 1), ("lane", 1), ("rank", 1)],
            "a tenant's queue tail (fair ranks)",
        ),
        Partial::Equals("state", "waiting"),
    ),
    index(
        coll::JOBS,
        "jobs_device_state",
        &[("device_id", 1), ("state", 1)],
        "cancelling a deleted device's queued jobs",
    ),
    index(
        coll::JOBS,
        "jobs_state_updated",
        &[("state", 1), ("updated_at", 1)],
        "pruning finished jobs; requeueing active ones",
    ),
    index(
        coll::JOBS,
        "jobs_device_created",
        &[("device_id", 1), ("created_at", 1)],
        "message statistics: a device's jobs per day",
    ),
    index(
        coll::MESSAGES,
        "messages_sender_ts",
        &[("sender_device", 1), ("ts", 1)],
        "message statistics: a device's sent messages per day",
    ),
    index(
        coll::INBOX,
        "inbox_device_kind_ts",
        &[("device_id", 1), ("kind", 1), ("ts", 1)],
        "message statistics: the statuses a device got per day",
    ),
    index(
        coll::JOBS,
        "jobs_body_ref",
        &[("body_ref", 1)],
        "whether a shared body is still used",
    ),
    partial(
        index(
            coll::JOBS,
            "jobs_active_owner",
            &[("owner", 1)],
            "one node's claims: renewed every heartbeat, released when it drains",
        ),
        Partial::Equals("state", "active"),
    ),
    partial(
        index(
            coll::JOBS,
            "jobs_active_lease",
            &[("lease_until", 1)],
            "claims whose lease ran out (their node died), taken back",
        ),
        Partial::Equals("state", "active"),
    ),
    // webhooks and their outbox (`webhooks.rs`)
    index(
        coll::WEBHOOKS,
        "webhooks_tenant",
        &[("tenant_id", 1)],
        "a tenant's webhook endpoints (at most 20: sorted by id in memory)",
    ),
    partial(
        index(
            coll::WEBHOOK_DELIVERIES,
            "wd_due",
            &[("next_at", 1)],
            "pending deliveries that are due",
        ),
        Partial::Equals("state", "pending"),
    ),
    partial(
        index(
            coll::WEBHOOK_DELIVERIES,
            "wd_leased",
            &[("lease_until", 1)],
            "deliveries whose claim's lease ran out (their node died)",
        ),
        Partial::Equals("state", "sending"),
    ),
    partial(
        index(
            coll::WEBHOOK_DELIVERIES,
            "wd_queue",
            &[("endpoint_id", 1), ("device_id", 1), ("order_key", 1)],
            "the head of an endpoint+device queue (order per device); outbox depths",
        ),
        Partial::EqualsNumber("open", 1),
    ),
    partial(
        index(
            coll::WEBHOOK_DELIVERIES,
            "wd_status",
            &[("endpoint_id", 1), ("status_key", 1), ("status_rank", 1)],
            "a newer status of the same message (no status regression)",
        ),
        Partial::Exists("status_key"),
    ),
    index(
        coll::WEBHOOK_DELIVERIES,
        "wd_log",
        &[("endpoint_id", 1), ("created_at", -1)],
        "an endpoint's delivery log and dead letters (newest first)",
    ),
    index(
        coll::WEBHOOK_DELIVERIES,
        "wd_finished",
        &[("state", 1), ("updated_at", 1)],
        "pruning finished deliveries",
    ),
    // job_bodies, job_totals, lanes, nodes and owners are read by `_id` only; messages
    // by `_id`, and by sender for the statistics.
];

/// The index named `name` on `collection` (the `_id` index included).
pub fn find(collection: &str, name: &str) -> Option<IndexDef> {
    if name == ID_INDEX {
        return Some(index(
            coll::ALL
                .into_iter()
                .find(|c| *c == collection)
                .unwrap_or(coll::MESSAGES),
            ID_INDEX,
            &[("_id", 1)],
            "by id",
        ));
    }
    INDEXES
        .iter()
        .find(|d| d.collection == collection && d.name == name)
        .copied()
}

/// Creates every index of [`INDEXES`], one `createIndexes` per collection.
pub async fn ensure(db: &Database) -> StoreResult<()> {
    let mut by_collection: BTreeMap<&str, Vec<IndexModel>> = BTreeMap::new();
    for def in INDEXES {
        by_collection
            .entry(def.collection)
            .or_default()
            .push(def.model());
    }
    for (collection, models) in by_collection {
        db.collection::<Document>(collection)
            .create_indexes(models)
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Unavailable(m) | StoreError::Conflict(m) | StoreError::Corrupt(m) => {
                    StoreError::Unavailable(format!("ensuring the indexes of {collection}: {m}"))
                }
                other => other,
            })?;
    }
    tracing::debug!(indexes = INDEXES.len(), "MongoDB indexes ensured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_keys_distinct() {
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for d in INDEXES {
            assert!(names.insert((d.collection, d.name)), "{} twice", d.name);
            assert!(
                keys.insert((d.collection, format!("{:?}", d.keys))),
                "{}: same key as another index",
                d.name
            );
        }
    }
}
