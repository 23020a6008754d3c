//! Outbound webhooks, the part the actor tree owns: the event names, the records the
//! [`Store`] keeps (endpoints, and the outbox of deliveries), and [`Webhooks`], which
//! turns an event into one durable delivery per subscribed endpoint.
//!
//! Events are recorded where they happen: the persistence writers record
//! `message.received` and `message.status` once the inbox rows are durable and before
//! their senders are answered (an acknowledged message has its event in the outbox);
//! the queue dispatcher records `job.completed` / `job.failed` once the outcome is
//! durable; a device session records `device.connected` / `device.disconnected` when its
//! first client comes or its last goes. The sending (HTTP, signing, retries, the circuit
//! breaker) is the server's (`src/webhooks/`): this crate names no network client.
//!
//! Ordering: every event gets an `order_key` (a ULID from one monotonic generator), so
//! the events of one device are ordered as they were recorded on its node; the store
//! sends a delivery only when no earlier one of the same endpoint and device is still
//! open ([`Store::claim_webhook_deliveries`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{InboxRow, RowKind, Store, StoreResult};

/// Most endpoints a tenant may have.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 20;
/// Most tenants whose endpoint lists are cached at once (the cache is cleared when full).
const CACHE_TENANTS: usize = 10_000;

/// What an endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A message landed in a device's inbox (the recipient's copy).
    MessageReceived,
    /// A recipient reported `delivered` or `read` on a message the device sent.
    MessageStatus,
    /// A queued job (bulk send, contact sync) completed.
    JobCompleted,
    /// A queued job failed for good.
    JobFailed,
    /// A device's first client connected.
    DeviceConnected,
    /// A device's last client went away.
    DeviceDisconnected,
}

impl EventKind {
    /// Every event, in the documented order.
    pub const ALL: [EventKind; 6] = [
        EventKind::MessageReceived,
        EventKind::MessageStatus,
        EventKind::JobCompleted,
        EventKind::JobFailed,
        EventKind::DeviceConnected,
        EventKind::DeviceDisconnected,
    ];

    /// The event's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageReceived => "message.received",
            EventKind::MessageStatus => "message.status",
            EventKind::JobCompleted => "job.completed",
            EventKind::JobFailed => "job.failed",
            EventKind::DeviceConnected => "device.connected",
            EventKind::DeviceDisconnected => "device.disconnected",
        }
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A tenant's webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Endpoint id (`wh_<ulid>`).
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// Subscribed event names.
    pub events: Vec<String>,
    /// Signing secret (`whsec_…`), kept so signing works after a restart; shown to the
    /// tenant once, at creation (and on rotation).
    pub secret: String,
    /// Free text for people.
    pub description: Option<String>,
    /// A disabled endpoint gets no new deliveries; its queued ones wait.
    pub enabled: bool,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

impl EndpointRecord {
    /// Whether the endpoint takes `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.enabled && self.events.iter().any(|e| e == kind.as_str())
    }
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its time (`next_at`) and its turn (earlier ones of its device).
    Pending,
    /// Claimed by a node, which is sending it (until `lease_until`).
    Sending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed: a dead letter, until replayed.
    Dead,
    /// Not sent: a newer status of the same message was already queued or sent.
    Dropped,
}

impl DeliveryState {
    /// The state's name (stored, and shown in the delivery log).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Dropped => "dropped",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Sending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
            DeliveryState::Dropped,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One event for one endpoint: a row of the outbox, and its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Delivery id (`wd_<ulid>`), the same on every attempt (receivers dedupe on it).
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The endpoint's tenant.
    pub tenant_id: String,
    /// The device the event is about (the ordering key with the endpoint).
    pub device_id: String,
    /// Event name.
    pub event: String,
    /// The event's id (`ev_<ulid>`), shared by its deliveries to every endpoint; orders
    /// the deliveries of one endpoint and device.
    pub order_key: String,
    /// The event's `data` (JSON).
    pub payload: String,
    /// For statuses: `<message id>|<reporting address>`; a delivery is dropped when one
    /// with the same key and a higher rank exists for its endpoint.
    pub status_key: Option<String>,
    /// For statuses: 1 delivered, 2 read; 0 otherwise.
    pub status_rank: i64,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// Not tried before this time (Unix ms).
    pub next_at: i64,
    /// The node sending it (while `Sending`).
    pub owner: Option<String>,
    /// The claim holds until then (Unix ms); another node takes it back after.
    pub lease_until: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// HTTP status of the last attempt, if the receiver answered.
    pub last_code: Option<i64>,
    /// Duration of the last attempt (ms).
    pub last_latency_ms: Option<i64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// The outcome of a claimed delivery, applied only while it is still claimed by the
/// node reporting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered {
        /// Delivery id.
        id: String,
        /// Attempts made, this one included.
        attempts: u32,
        /// HTTP status.
        code: i64,
        /// Duration (ms).
        latency_ms: i64,
    },
    /// Failed; tried again at `next_at`.
    Retry {
        /// Delivery id.
        id: String,
        /// Attempts made, this one included.
        attempts: u32,
        /// When to try again (Unix ms).
        next_at: i64,
        /// Why it failed.
        error: String,
        /// HTTP status, if the receiver answered.
        code: Option<i64>,
        /// Duration (ms).
        latency_ms: i64,
    },
    /// Failed on its last attempt: a dead letter.
    Dead {
        /// Delivery id.
        id: String,
        /// Attempts made, this one included.
        attempts: u32,
        /// Why it failed.
        error: String,
        /// HTTP status, if the receiver answered.
        code: Option<i64>,
        /// Duration (ms).
        latency_ms: i64,
    },
    /// Not attempted (the endpoint's breaker is open, or it is disabled): back to
    /// pending until `next_at`, no attempt counted.
    Release {
        /// Delivery id.
        id: String,
        /// When it may be claimed again (Unix ms).
        next_at: i64,
    },
}

impl DeliveryOutcome {
    /// The delivery this is about.
    pub fn id(&self) -> &str {
        match self {
            DeliveryOutcome::Delivered { id, .. }
            | DeliveryOutcome::Retry { id, .. }
            | DeliveryOutcome::Dead { id, .. }
            | DeliveryOutcome::Release { id, .. } => id,
        }
    }
}

/// An event as it happens, before it is fanned out to endpoints.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// The event's id (`ev_<ulid>`, monotonic in this process).
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The device it is about.
    pub device_id: String,
    /// What happened.
    pub kind: EventKind,
    /// `data` (JSON).
    pub data: serde_json::Value,
    /// See [`DeliveryRecord::status_key`].
    pub status_key: Option<String>,
    /// See [`DeliveryRecord::status_rank`].
    pub status_rank: i64,
}

/// A tenant's endpoints as cached, with when they were read.
type CachedEndpoints = (Instant, Arc<Vec<EndpointRecord>>);

/// Records events as deliveries, with a short-lived cache of each tenant's endpoints.
pub struct Webhooks {
    store: Arc<dyn Store>,
    ttl: Duration,
    endpoints: Mutex<HashMap<String, CachedEndpoints>>,
    ids: Mutex<ulid::Generator>,
    wake: tokio::sync::Notify,
}

impl Webhooks {
    /// Records through `store`; an endpoint change made on another node is seen after
    /// at most `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Webhooks {
            store,
            ttl,
            endpoints: Mutex::new(HashMap::new()),
            ids: Mutex::new(ulid::Generator::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A new id with `prefix`, ordered after every id this process made before.
    pub fn next_id(&self, prefix: &str) -> String {
        let id = match self.ids.lock() {
            Ok(mut g) => g.generate().unwrap_or_else(|_| ulid::Ulid::new()),
            Err(_) => ulid::Ulid::new(),
        };
        format!("{prefix}_{}", id.to_string().to_lowercase())
    }

    /// A new event of `kind` about `device_id`.
    pub fn event(
        &self,
        tenant_id: &str,
        device_id: &str,
        kind: EventKind,
        data: serde_json::Value,
    ) -> WebhookEvent {
        WebhookEvent {
            id: self.next_id("ev"),
            tenant_id: tenant_id.to_owned(),
            device_id: device_id.to_owned(),
            kind,
            data,
            status_key: None,
            status_rank: 0,
        }
    }

    /// The tenant's endpoints (cached for the TTL).
    pub async fn endpoints(&self, tenant_id: &str) -> StoreResult<Arc<Vec<EndpointRecord>>> {
        if let Ok(cache) = self.endpoints.lock() {
            if let Some((at, list)) = cache.get(tenant_id) {
                if at.elapsed() < self.ttl {
                    return Ok(list.clone());
                }
            }
        }
        let list = Arc::new(self.store.list_webhooks(tenant_id).await?);
        if let Ok(mut cache) = self.endpoints.lock() {
            if cache.len() >= CACHE_TENANTS {
                cache.clear();
            }
            cache.insert(tenant_id.to_owned(), (Instant::now(), list.clone()));
        }
        Ok(list)
    }

    /// Whether the tenant has an endpoint taking any of `kinds` (cached).
    pub async fn wants_any(&self, tenant_id: &str, kinds: &[EventKind]) -> bool {
        match self.endpoints(tenant_id).await {
            Ok(list) => list.iter().any(|e| kinds.iter().any(|k| e.wants(*k))),
            // Cannot tell: record (the store call will say whether it works).
            Err(_) => true,
        }
    }

    /// Forgets the cached endpoints of a tenant (after a change on this node).
    pub fn invalidate(&self, tenant_id: &str) {
        if let Ok(mut cache) = self.endpoints.lock() {
            cache.remove(tenant_id);
        }
    }

    /// Records `events` as one pending delivery per subscribed endpoint, retrying a
    /// store that fails for a moment; answers how many deliveries were written.
    pub async fn record(&self, events: Vec<WebhookEvent>) -> StoreResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let now = crate::clock::now_ms();
        let mut deliveries = Vec::new();
        let mut by_tenant: HashMap<&str, Arc<Vec<EndpointRecord>>> = HashMap::new();
        for event in &events {
            let endpoints = match by_tenant.get(event.tenant_id.as_str()) {
                Some(e) => e.clone(),
                None => {
                    let e = self.endpoints(&event.tenant_id).await?;
                    by_tenant.insert(&event.tenant_id, e.clone());
                    e
                }
            };
            for endpoint in endpoints.iter().filter(|e| e.wants(event.kind)) {
                deliveries.push(DeliveryRecord {
                    id: self.next_id("wd"),
                    endpoint_id: endpoint.id.clone(),
                    tenant_id: event.tenant_id.clone(),
                    device_id: event.device_id.clone(),
                    event: event.kind.as_str().to_owned(),
                    order_key: event.id.clone(),
                    payload: event.data.to_string(),
                    status_key: event.status_key.clone(),
                    status_rank: event.status_rank,
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_at: now,
                    owner: None,
                    lease_until: None,
                    last_error: None,
                    last_code: None,
                    last_latency_ms: None,
                    created_at: now,
                    updated_at: now,
                });
            }
        }
        if deliveries.is_empty() {
            return Ok(0);
        }
        let n = deliveries.len();
        let mut last = None;
        for attempt in 0..4u32 {
            match self
                .store
                .enqueue_webhook_deliveries(deliveries.clone())
                .await
            {
                Ok(()) => {
                    self.wake.notify_one();
                    return Ok(n);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, attempt, "recording webhook deliveries failed, retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| crate::store::StoreError::Unavailable("not tried".into())))
    }

    /// Records events and logs (does not return) a failure: for callers that cannot
    /// undo what happened.
    pub async fn record_or_log(&self, events: Vec<WebhookEvent>) {
        let n = events.len();
        if let Err(e) = self.record(events).await {
            tracing::error!(error = %e, events = n, "webhook events not recorded");
        }
    }

    /// Wakes the sender (new deliveries, a replay).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Webhooks::wake`] is called (or was since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The `message.received` and `message.status` events of durable inbox rows
    /// (`tenant_of` names each row's tenant; rows of unknown devices are skipped).
    pub fn row_events(
        &self,
        rows: &[&InboxRow],
        tenant_of: &HashMap<Arc<str>, String>,
    ) -> Vec<WebhookEvent> {
        let mut events = Vec::new();
        for row in rows {
            let Some(tenant) = tenant_of.get(&row.device_id) else {
                continue;
            };
            match &row.kind {
                RowKind::Message(m) if m.sender_device.as_deref() != Some(&*row.device_id) => {
                    let mut data = serde_json::json!({
                        "message_id": &*m.id,
                        "seq": row.seq,
                        "from": &*m.from,
                        "ts": m.ts,
                    });
                    if let Some(to) = &m.to {
                        data["to"] = serde_json::json!(&**to);
                    }
                    if let Some(g) = &m.group {
                        data["group"] = serde_json::json!(&**g);
                    }
                    data["body"] = serde_json::from_str(&m.body)
                        .unwrap_or_else(|_| serde_json::Value::String(m.body.to_string()));
                    events.push(self.event(
                        tenant,
                        &row.device_id,
                        EventKind::MessageReceived,
                        data,
                    ));
                }
                RowKind::Message(_) => {}
                RowKind::Status(s) => {
                    let status = match s.status {
                        protocol::ReceiptStatus::Delivered => "delivered",
                        protocol::ReceiptStatus::Read => "read",
                    };
                    let mut e = self.event(
                        tenant,
                        &row.device_id,
                        EventKind::MessageStatus,
                        serde_json::json!({
                            "message_id": &*s.message_id,
                            "status": status,
                            "by": &*s.by,
                            "seq": row.seq,
                            "ts": row.ts,
                        }),
                    );
                    e.status_key = Some(format!("{}|{}", s.message_id, s.by));
                    e.status_rank = match s.status {
                        protocol::ReceiptStatus::Delivered => 1,
                        protocol::ReceiptStatus::Read => 2,
                    };
                    events.push(e);
                }
            }
        }
        events
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_and_state_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("message.deleted"), None);
        for s in ["pending", "sending", "delivered", "dead", "dropped"] {
            assert_eq!(DeliveryState::parse(s).unwrap().as_str(), s);
        }
    }
}
