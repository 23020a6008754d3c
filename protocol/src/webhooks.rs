//! Webhook REST bodies (`/v1/webhooks…`) and the limits they are checked against.
//! Event names, payloads and the signature are described in `docs/webhooks.md`.

use serde::{Deserialize, Serialize};

/// Longest endpoint URL (bytes).
pub const MAX_URL_LEN: usize = 2048;
/// Longest description (characters).
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Most event names in one subscription.
pub const MAX_EVENTS: usize = 16;
/// Most ids in one replay call.
pub const MAX_REPLAY_IDS: usize = 1000;
/// Largest page of the delivery log.
pub const MAX_PAGE: usize = 200;

/// `POST /v1/webhooks` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: `http://` or `https://`, at most 2,048 bytes.
    pub url: String,
    /// Event names (`message.received`, `message.status`, `job.completed`, `job.failed`,
    /// `device.connected`, `device.disconnected`); at least one.
    pub events: Vec<String>,
    /// Free text, at most 256 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether deliveries are made (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /v1/webhooks/{id}` body: the fields to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    /// New URL.
    #[serde(default)]
    pub url: Option<String>,
    /// New event names (replaces the list).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// New description (`""` clears it).
    #[serde(default)]
    pub description: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A webhook endpoint as the API shows it (never with its secret, but on creation and
/// rotation: [`WebhookCreated`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// Endpoint id.
    pub webhook_id: String,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed events.
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// `POST /v1/webhooks` and `POST /v1/webhooks/{id}/rotate-secret` answer: the endpoint
/// and its signing secret, shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookCreated {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret (`whsec_…`): HMAC-SHA256 key of `Switchboard-Signature`.
    pub secret: String,
}

/// `GET /v1/webhooks` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookList {
    /// The tenant's endpoints, by id.
    pub webhooks: Vec<Webhook>,
}

/// One delivery in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// Delivery id (the `Switchboard-Delivery` header).
    pub delivery_id: String,
    /// The event's id (shared by its deliveries to every endpoint).
    pub event_id: String,
    /// Event name.
    pub event: String,
    /// The device the event is about.
    pub device_id: String,
    /// `pending`, `sending`, `delivered`, `dead` or `dropped`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt not before (Unix ms), while pending.
    pub next_at: i64,
    /// HTTP status of the last attempt, if the receiver answered.
    pub last_status_code: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Duration of the last attempt (ms).
    pub last_latency_ms: Option<i64>,
    /// The event's `data`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// A page of the delivery log (newest first).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryPage {
    /// Deliveries, newest first.
    pub items: Vec<WebhookDelivery>,
    /// Pass as `before` for the next page (`null` at the end).
    pub next_before: Option<String>,
}

/// `POST /v1/webhooks/{id}/dead-letters/replay` body: no `ids` replays every dead letter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplayDeadLetters {
    /// Delivery ids (at most 1,000).
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

/// `POST /v1/webhooks/{id}/dead-letters/replay` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replayed {
    /// Dead letters put back in the outbox.
    pub replayed: u64,
}

/// `POST /v1/webhooks/{id}/test` answer: one signed `webhook.test` delivery, made now
/// (outside the outbox: not retried, not logged).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookTestResult {
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// Its HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took (ms).
    pub latency_ms: u64,
    /// The delivery id sent.
    pub delivery_id: String,
}
