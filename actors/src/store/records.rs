//! The records the [`super::Store`] keeps.

use std::sync::Arc;

use protocol::ReceiptStatus;
use serde::{Deserialize, Serialize};

/// A tenant; its API key is kept only as a hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// SHA-256 (hex) of the API key.
    pub api_key_hash: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// A device: one phone-number endpoint of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// E.164 address, unique in the tenant.
    pub address: String,
    /// Display name.
    pub name: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last time a client was connected (Unix ms).
    pub last_seen: Option<i64>,
}

/// A group of addresses in one tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Group id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Member addresses, sorted and unique.
    pub members: Vec<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Bumped by every membership change, so a cache never replaces a newer copy with
    /// an older one.
    pub version: u64,
}

/// A message, stored once however many inboxes hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Message id (shared by every inbox row of the message).
    pub id: Arc<str>,
    /// The sending device (`None` only for messages migrated from a store that did not
    /// record it).
    pub sender_device: Option<Arc<str>>,
    /// Sender address.
    pub from: Arc<str>,
    /// Recipient address, for 1:1 messages.
    pub to: Option<Arc<str>>,
    /// Group id, for group messages.
    pub group: Option<Arc<str>>,
    /// Raw JSON body.
    pub body: Arc<str>,
    /// Acceptance time (Unix ms).
    pub ts: i64,
}

/// A recipient's report on a message the inbox owner sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// The message reported on.
    pub message_id: Arc<str>,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// The reporting recipient's address.
    pub by: Arc<str>,
}

/// What one inbox row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKind {
    /// A message the owner sent or received. On write, the message is stored too
    /// (once: a message already stored under its id is left as it is).
    Message(Arc<MessageRecord>),
    /// A status of a message the owner sent.
    Status(StatusRecord),
}

impl RowKind {
    /// The message this row is about.
    pub fn message_id(&self) -> &Arc<str> {
        match self {
            RowKind::Message(m) => &m.id,
            RowKind::Status(s) => &s.message_id,
        }
    }
}

/// One row of a device's inbox: a message or a status, at a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// Inbox owner.
    pub device_id: Arc<str>,
    /// Position in the owner's inbox.
    pub seq: u64,
    /// What the row holds.
    pub kind: RowKind,
    /// When the row was written: the message's time, or the receipt's.
    pub ts: i64,
    /// The sender's request id, on the sender's own copy only.
    pub client_id: Option<String>,
    /// Fencing epoch of the session that wrote it (its ownership of the device; 0 on
    /// one node). See `docs/cluster.md`.
    pub epoch: u64,
    /// The slot holds this epoch's fence row: the row replaces it (a write right after a
    /// takeover, see [`super::Store::fence_inbox`]).
    pub into_fence: bool,
}

/// A previously accepted send, found by its client request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSend {
    /// The sender's request id.
    pub client_id: String,
    /// Message id.
    pub message_id: String,
    /// Seq of the sender's copy.
    pub seq: u64,
    /// Acceptance time.
    pub ts: i64,
}

/// One inbox holding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageCopy {
    /// The inbox owner.
    pub device_id: String,
    /// The owner's address (`None` if the device is gone).
    pub address: Option<String>,
    /// The copy's seq in that inbox.
    pub seq: u64,
}

/// A status row as read back: who reported what, when, at which seq of the sender's
/// inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEntry {
    /// The reporting recipient's address.
    pub by: String,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// When it was reported (Unix ms).
    pub ts: i64,
    /// Seq of the status row in the sender's inbox.
    pub seq: u64,
}

/// One device's messages on one UTC day, for the message statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStats {
    /// The device.
    pub device_id: String,
    /// Start of the UTC day (Unix ms).
    pub day: i64,
    /// Messages the device sent.
    pub sent: u64,
    /// `delivered` statuses it got for them.
    pub delivered: u64,
    /// `read` statuses it got for them.
    pub read: u64,
    /// Its queued jobs created that day that failed.
    pub failed: u64,
    /// Its jobs created that day (queued sends and syncs).
    pub queued: u64,
}

/// A node of a cluster as registered in the store (`docs/cluster.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (`n_<ulid>`, new at every process start).
    pub id: String,
    /// Where its HTTP API listens (for operators).
    pub addr: String,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// Alive until then (Unix ms, its own clock); renewed every heartbeat.
    pub lease_until: i64,
    /// Draining: it takes no new connections and gives its devices up.
    pub draining: bool,
    /// Its open WebSocket connections, at its last heartbeat.
    pub connections: u64,
    /// Device sessions it runs, at its last heartbeat.
    pub sessions: u64,
}

/// Which node owns a device's session, and the fencing epoch of that ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The device.
    pub device_id: String,
    /// The owning (or last owning) node.
    pub node: String,
    /// Bumped by every claim; written on every inbox row of that ownership.
    pub epoch: u64,
    /// Released by its node after its last row was durable: a takeover needs no fence.
    pub clean: bool,
    /// When it was claimed or released (Unix ms).
    pub since: i64,
}
