//! What goes on the wire for one delivery: the JSON body and the signed headers, and
//! the one HTTP attempt (`reqwest`, with the connect and request timeouts).

use std::time::{Duration, Instant};

use actors::webhooks::DeliveryRecord;

/// The signature header: `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "Switchboard-Signature";
/// The event name header.
pub const EVENT_HEADER: &str = "Switchboard-Event";
/// The delivery id header: the same on every attempt, for the receiver to dedupe on.
pub const DELIVERY_HEADER: &str = "Switchboard-Delivery";
/// Most bytes of a receiver's error answer kept in the delivery log.
const ERROR_SNIPPET: usize = 200;

/// The body of a delivery: `{"delivery_id","event_id","event","tenant_id","device_id",
/// "created_at","attempt","data"}`.
pub fn body(d: &DeliveryRecord, attempt: u32) -> String {
    let data: serde_json::Value = serde_json::from_str(&d.payload)
        .unwrap_or_else(|_| serde_json::Value::String(d.payload.clone()));
    serde_json::json!({
        "delivery_id": d.id,
        "event_id": d.order_key,
        "event": d.event,
        "tenant_id": d.tenant_id,
        "device_id": d.device_id,
        "created_at": d.created_at,
        "attempt": attempt,
        "data": data,
    })
    .to_string()
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The receiver answered 2xx.
    pub ok: bool,
    /// Its HTTP status, if it answered.
    pub code: Option<u16>,
    /// Why it failed (timeout, connection refused, the status and the start of the
    /// answer).
    pub error: Option<String>,
    /// How long it took.
    pub latency: Duration,
}

/// Builds the HTTP client the sender uses (no redirects followed: a receiver that
/// moved must be updated, not chased).
pub fn client(connect_timeout: Duration, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Switchboard-Webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()
}

/// POSTs `body` to `url`, signed with `secret`.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    event: &str,
    delivery_id: &str,
    body: String,
) -> Attempt {
    let now_secs = actors::clock::now_ms() / 1000;
    let signature = credentials::webhook_signature(secret, now_secs, body.as_bytes());
    let started = Instant::now();
    let result = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_HEADER, event)
        .header(DELIVERY_HEADER, delivery_id)
        .body(body)
        .send()
        .await;
    match result {
        Ok(res) => {
            let status = res.status();
            if status.is_success() {
                // Read (and drop) the answer so the connection can be reused.
                let _ = res.bytes().await;
                Attempt {
                    ok: true,
                    code: Some(status.as_u16()),
                    error: None,
                    latency: started.elapsed(),
                }
            } else {
                let text = res.text().await.unwrap_or_default();
                let snippet: String = text.chars().take(ERROR_SNIPPET).collect();
                Attempt {
                    ok: false,
                    code: Some(status.as_u16()),
                    error: Some(format!("HTTP {}: {snippet}", status.as_u16())),
                    latency: started.elapsed(),
                }
            }
        }
        Err(e) => {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "could not connect".to_owned()
            } else {
                "request failed".to_owned()
            };
            Attempt {
                ok: false,
                code: None,
                error: Some(why),
                latency: started.elapsed(),
            }
        }
    }
}
