//! REST request and response bodies (`/admin/tenants` and the `/v1` API).

use serde::{Deserialize, Serialize};

use crate::frames::{MessageItem, Priority, ReceiptStatus};

/// `POST /admin/tenants` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTenant {
    /// Display name: 1 to 200 bytes after trimming.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
}

/// `POST /admin/tenants` answer; `api_key` is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantCreated {
    /// New tenant id.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// The tenant's API key (stored hashed; shown once).
    pub api_key: String,
}

/// `POST /v1/devices` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDevice {
    /// E.164 address, unique within the tenant.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^\+[1-9][0-9]{1,14}$", max_length = 16)
    )]
    pub address: String,
    /// Display name, at most 200 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub name: Option<String>,
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// E.164 address.
    pub address: String,
    /// Display name.
    pub name: Option<String>,
    /// Whether at least one client is connected now.
    pub connected: bool,
    /// When a client was last connected (Unix ms), if ever.
    pub last_seen: Option<i64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// `GET /v1/devices` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    /// One page of devices, ordered by id.
    pub devices: Vec<Device>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_after: Option<String>,
}

/// `POST /v1/devices/{id}/tokens` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateToken {
    /// Lifetime in seconds (default from configuration, at most 30 days).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_592_000))]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/devices/{id}/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// JWT for `GET /v1/ws?token=…`.
    pub token: String,
    /// Expiry (Unix ms).
    pub expires_at: i64,
}

/// One contact of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    /// E.164 address.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^\+[1-9][0-9]{1,14}$", max_length = 16)
    )]
    pub address: String,
    /// Display name, at most 200 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub name: Option<String>,
}

/// Contacts list, as body of `PUT` and answer of `GET /v1/devices/{id}/contacts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contacts {
    /// The contacts: up to 10,000 are upserted at once; more run as a background job
    /// (the body is bounded by `max_contacts_bytes`, 16 MiB by default).
    pub contacts: Vec<Contact>,
}

/// Most contacts one `PUT` may carry.
pub const MAX_CONTACTS_PER_CALL: usize = 10_000;

/// `PUT /v1/devices/{id}/contacts` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Upserted {
    /// How many contacts were inserted or updated.
    pub upserted: usize,
}

/// `POST /v1/groups` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateGroup {
    /// Display name: 1 to 200 bytes after trimming.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Member addresses (E.164), at most 1024 after removing duplicates.
    #[cfg_attr(feature = "openapi", schema(max_items = 1024))]
    pub members: Vec<String>,
}

/// A group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    /// Group id.
    pub group_id: String,
    /// Display name.
    pub name: String,
    /// Member addresses, sorted.
    pub members: Vec<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// `POST /v1/groups/{id}/members` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupMembers {
    /// Addresses (E.164) to add; the group has at most 1024 members.
    #[cfg_attr(feature = "openapi", schema(max_items = 1024))]
    pub members: Vec<String>,
}

/// Largest number of members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1024;

/// `POST /v1/devices/{id}/messages` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessage {
    /// Recipient address (or use `group`).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^\+[1-9][0-9]{1,14}$", max_length = 16)
    )]
    pub to: Option<String>,
    /// Recipient group (or use `to`).
    #[serde(default)]
    pub group: Option<String>,
    /// Message body: a JSON object of at most `max_message_bytes` (64 KiB by default),
    /// nested at most 64 levels, every number finite.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: Box<serde_json::value::RawValue>,
    /// Rate tier (default normal).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Optional idempotency key (same rules as the WebSocket `id`: at most 64 bytes).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub id: Option<String>,
}

/// Answer to a synchronous send, once durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageAccepted {
    /// Message id.
    pub message_id: String,
    /// Seq of the copy in the sender's inbox.
    pub seq: u64,
    /// Acceptance time (Unix ms).
    pub ts: i64,
}

/// `GET /v1/devices/{id}/messages` answer (and the shape of a WS `messages` page).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagePage {
    /// Messages (and, in the sender's inbox, statuses of its messages) in seq order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<PageEntry>))]
    pub items: Vec<MessageItem>,
    /// Pass as `after_seq` for the next page.
    pub next_after_seq: u64,
    /// Whether more follow.
    pub more: bool,
}

/// One entry of an inbox page (schema of [`MessagePage::items`]): a message, or a
/// status of a message the inbox owner sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PageEntry {
    /// A message sent or received.
    Message(MessageItem),
    /// A recipient's receipt for a message the owner sent.
    Status(StatusItem),
}

/// A stored status as an inbox page lists it (the same JSON as the WebSocket
/// `status` frame, with its `seq`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusItem {
    /// Always `"status"`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^status$"))]
    pub kind: String,
    /// The message reported on.
    pub message_id: String,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// Address of the recipient that reported it.
    pub by: String,
    /// When the server got the receipt (Unix ms).
    pub ts: i64,
    /// Position in the sender's inbox.
    pub seq: u64,
}

/// Where one recipient's copy of a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryStatus {
    /// Stored in the recipient's inbox.
    Sent,
    /// The recipient reported it delivered.
    Delivered,
    /// The recipient reported it read.
    Read,
}

/// One recipient of a message and how far the message got with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecipientStatus {
    /// The recipient device.
    pub device_id: String,
    /// Its address (absent if the device was deleted since).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    /// The copy's seq in the recipient's inbox.
    pub seq: u64,
    /// Sent, delivered or read (only ever forward).
    pub status: DeliveryStatus,
    /// When the recipient reported it delivered (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivered_at: Option<i64>,
    /// When the recipient reported it read (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub read_at: Option<i64>,
}

/// `GET /v1/devices/{id}/messages/{message_id}` answer: the message as it sits in that
/// device's inbox, and its status with each recipient (all of them when the device
/// sent it; the device itself when it received it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageStatus {
    /// The message.
    pub message: MessageItem,
    /// Per recipient, ordered by device id.
    pub recipients: Vec<RecipientStatus>,
}

/// Default page size for `sync` and history.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size for `sync` and history.
pub const MAX_PAGE: u32 = 1000;
