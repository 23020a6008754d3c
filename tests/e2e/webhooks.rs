//! Outbound webhooks end to end, against a real HTTP receiver on 127.0.0.1 that can be
//! told to answer 200, answer 500, hang past the sender's timeout, or drop the
//! connection: signatures, every event kind, retries and backoff, order per device,
//! no status regression, the circuit breaker, dead letters and replay, CRUD with
//! validation and tenant isolation, the delivery log, and a SIGKILL of the server with
//! events in the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{call, ChildServer, Device, Tenant, TestServer};

/// Every test finishes within this (each wait is bounded by it).
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200.
    Ok,
    /// 500.
    Fail,
    /// Read the request, answer nothing for 30 s (past the sender's timeout).
    Hang,
    /// Close the connection without answering.
    Drop,
}

/// One request the receiver answered 200.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
    at: Instant,
}

#[derive(Debug)]
struct ReceiverState {
    mode: Mode,
    /// Every request, whatever it was answered.
    attempts: Vec<Instant>,
    /// The requests answered 200, in arrival order.
    received: Vec<Received>,
}

/// A tiny HTTP/1.1 receiver (one request per connection).
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ReceiverState {
            mode,
            attempts: Vec::new(),
            received: Vec::new(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(socket, st.clone()));
            }
        });
        Receiver { url, state, task }
    }

    fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts.len()
    }

    fn attempt_times(&self) -> Vec<Instant> {
        self.state.lock().unwrap().attempts.clone()
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The received bodies of `event`, in arrival order.
    fn of(&self, event: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.body["event"] == event)
            .map(|r| r.body)
            .collect()
    }
}

async fn serve(mut socket: tokio::net::TcpStream, state: Arc<Mutex<ReceiverState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut headers = HashMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let raw = buf[head_end..head_end + len].to_vec();
    let mode = {
        let mut s = state.lock().unwrap();
        s.attempts.push(Instant::now());
        s.mode
    };
    let answer: &[u8] = match mode {
        Mode::Ok => {
            let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            state.lock().unwrap().received.push(Received {
                headers,
                raw,
                body,
                at: Instant::now(),
            });
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        }
        Mode::Fail => {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        Mode::Drop => return,
    };
    let _ = socket.write_all(answer).await;
    let _ = socket.shutdown().await;
}

/// Waits until `cond` holds (polling), failing after [`LIMIT`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fast retries for tests; the breaker out of the way unless a test sets it.
fn fast(cfg: &mut Config) {
    cfg.webhook_backoff_base_ms = 30;
    cfg.webhook_backoff_max_ms = 120;
    cfg.webhook_timeout_ms = 400;
    cfg.webhook_connect_timeout_ms = 300;
    cfg.webhook_poll_ms = 20;
    cfg.webhook_breaker_failures = 1000;
    cfg.webhook_breaker_cooldown_ms = 500;
    cfg.webhook_max_attempts = 100;
    cfg.webhook_endpoint_cache_ms = 100;
    cfg.rate_limit_normal = 100_000;
}

const ALL_EVENTS: [&str; 6] = [
    "message.received",
    "message.status",
    "job.completed",
    "job.failed",
    "device.connected",
    "device.disconnected",
];

/// Creates a webhook; answers its id and secret.
async fn webhook(t: &Tenant, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) = t
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": events})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["webhook_id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

/// Sends a message over REST; answers its id.
async fn send(t: &Tenant, from: &Device, to: &Device, n: u64) -> String {
    let (status, body) = t
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", from.id),
            Some(json!({"to": to.address, "body": {"n": n}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["message_id"].as_str().unwrap().to_owned()
}

/// Every received delivery is signed with `secret` and its headers match its body.
fn assert_signed(r: &Received, secret: &str) {
    let sig = r
        .headers
        .get("switchboard-signature")
        .expect("signature header");
    let now = actors::clock::now_ms() / 1000;
    assert!(
        credentials::verify_webhook_signature(secret, sig, &r.raw, now, 300),
        "bad signature {sig} on {}",
        r.body
    );
    assert!(!credentials::verify_webhook_signature(
        "whsec_wrong",
        sig,
        &r.raw,
        now,
        300
    ));
    assert_eq!(
        r.headers.get("switchboard-event").map(String::as_str),
        r.body["event"].as_str()
    );
    assert_eq!(
        r.headers.get("switchboard-delivery").map(String::as_str),
        r.body["delivery_id"].as_str()
    );
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

/// The log once it holds `n` deliveries and none is pending or sending (outcomes are
/// written right after the receiver answers).
async fn settled_log(t: &Tenant, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let entries = log(t, id, "").await;
        if entries.len() >= n
            && entries
                .iter()
                .all(|e| e["state"] != "pending" && e["state"] != "sending")
        {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not settle: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn log(t: &Tenant, id: &str, query: &str) -> Vec<Value> {
    let (status, body) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=200{query}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_crud_validation_and_tenant_isolation() {
    let server = TestServer::start_with(fast).await;
    let t = server.tenant().await;
    let other = server.tenant().await;
    let receiver = Receiver::start(Mode::Ok).await;

    let (status, created) = t
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": receiver.url, "events": ["message.received", "message.received", "job.failed"], "description": "crm"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["webhook_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"), "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{secret}"
    );
    assert_eq!(created["events"], json!(["message.received", "job.failed"]));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["description"], "crm");

    // Read back: never the secret.
    let (status, got) = t.call("GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 200, "{got}");
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], receiver.url.as_str());
    let (_, list) = t.call("GET", "/v1/webhooks", None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(list["webhooks"][0].get("secret").is_none());
    assert!(!list.to_string().contains(&secret));

    // Validation: each with its code from the error table.
    let long_url = format!("http://127.0.0.1/{}", "a".repeat(2100));
    let long_description = "d".repeat(257);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"url": "ftp://127.0.0.1/x", "events": ["job.failed"]}),
            400,
            "bad_request",
        ),
        (
            json!({"url": "not a url", "events": ["job.failed"]}),
            400,
            "bad_request",
        ),
        (
            json!({"url": "http://u:p@127.0.0.1/x", "events": ["job.failed"]}),
            400,
            "bad_request",
        ),
        (
            json!({"url": receiver.url, "events": []}),
            400,
            "bad_request",
        ),
        (
            json!({"url": receiver.url, "events": ["message.deleted"]}),
            400,
            "bad_request",
        ),
        (json!({"url": receiver.url}), 400, "bad_request"),
        (
            json!({"url": receiver.url, "events": ["job.failed"], "secret": "mine"}),
            400,
            "bad_request",
        ),
        (
            json!({"url": long_url, "events": ["job.failed"]}),
            413,
            "too_large",
        ),
        (
            json!({"url": receiver.url, "events": ["job.failed"], "description": long_description}),
            413,
            "too_large",
        ),
    ];
    for (body, want, code) in cases {
        let (status, err) = t.call("POST", "/v1/webhooks", Some(body.clone())).await;
        assert_eq!(status, want, "{body} → {err}");
        assert_eq!(err["error"]["code"], code, "{body} → {err}");
    }
    let (status, err) = t
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "ftp://x/y", "events": ["job.failed"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("http"),
        "{err}"
    );
    let (status, err) = t
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": receiver.url, "events": ["nope"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("message.received"),
        "{err}"
    );

    // Patch: fields change, validation holds, unknown fields are refused.
    let (status, patched) = t
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"events": ["device.connected"], "enabled": false, "description": ""})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["events"], json!(["device.connected"]));
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["description"], Value::Null);
    let (status, _) = t
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"url": "gopher://x"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"colour": "red"})),
        )
        .await;
    assert_eq!(status, 400);

    // Rotation: a new secret, shown once, different.
    let (status, rotated) = t
        .call("POST", &format!("/v1/webhooks/{id}/rotate-secret"), None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);

    // The test call: one signed `webhook.test`, made now with the current secret.
    let (status, tested) = t
        .call("POST", &format!("/v1/webhooks/{id}/test"), None)
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["delivered"], true, "{tested}");
    assert_eq!(tested["status_code"], 200);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_signed(&got[0], new_secret);
    assert_eq!(got[0].body["event"], "webhook.test");
    assert_eq!(got[0].body["delivery_id"], tested["delivery_id"]);
    receiver.set(Mode::Fail);
    let (_, tested) = t
        .call("POST", &format!("/v1/webhooks/{id}/test"), None)
        .await;
    assert_eq!(
        (tested["delivered"].clone(), tested["status_code"].clone()),
        (json!(false), json!(500))
    );

    // Another tenant sees none of it and can change none of it.
    let (_, theirs) = other.call("GET", "/v1/webhooks", None).await;
    assert_eq!(theirs["webhooks"], json!([]));
    for (method, path, body) in [
        ("GET", format!("/v1/webhooks/{id}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": true})),
        ),
        ("DELETE", format!("/v1/webhooks/{id}"), None),
        ("POST", format!("/v1/webhooks/{id}/test"), None),
        ("POST", format!("/v1/webhooks/{id}/rotate-secret"), None),
        ("GET", format!("/v1/webhooks/{id}/deliveries"), None),
        ("GET", format!("/v1/webhooks/{id}/dead-letters"), None),
        (
            "POST",
            format!("/v1/webhooks/{id}/dead-letters/replay"),
            Some(json!({})),
        ),
    ] {
        let (status, err) = other.call(method, &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], "forbidden");
    }
    let (status, _) = call(&t.http, &t.base, "GET", "/v1/webhooks", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = t.call("GET", "/v1/webhooks/wh_nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?state=lost"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=0"),
            None,
        )
        .await;
    assert_eq!(status, 400);

    let (status, _) = t.call("DELETE", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = t.call("GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 404);

    // Every route is in the OpenAPI document, with its error answers.
    let (_, doc) = server.call("GET", "/openapi.json", None, None).await;
    for (path, method) in [
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "patch"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/rotate-secret", "post"),
        ("/v1/webhooks/{id}/test", "post"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/webhooks/{id}/dead-letters", "get"),
        ("/v1/webhooks/{id}/dead-letters/replay", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} not documented");
        assert!(
            op["responses"]["401"].is_object(),
            "{method} {path}: no 401"
        );
        assert!(
            op["responses"]["503"].is_object(),
            "{method} {path}: no 503"
        );
    }
    assert!(doc["components"]["schemas"]["WebhookCreated"].is_object());
    assert!(doc["components"]["schemas"]["WebhookDelivery"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_logged() {
    let server = TestServer::start_with(fast).await;
    let t = server.tenant().await;
    let receiver = Receiver::start(Mode::Ok).await;
    let (id, secret) = webhook(&t, &receiver.url, &ALL_EVENTS).await;
    let a = t.device().await;
    let b = t.device().await;

    // device.connected for B, then a message to B, then B reads it.
    let mut wb = t.connect(&b).await;
    wait_for("device.connected", || {
        !receiver.of("device.connected").is_empty()
    })
    .await;
    let message_id = send(&t, &a, &b, 1).await;
    wait_for("message.received", || {
        !receiver.of("message.received").is_empty()
    })
    .await;
    wb.send(json!({"type": "receipt", "message_ids": [message_id], "status": "read"}))
        .await;
    wait_for("message.status", || {
        !receiver.of("message.status").is_empty()
    })
    .await;
    // A queued job completes; B's last client goes.
    let (status, jobs) = t
        .call(
            "POST",
            "/v1/messages/bulk",
            Some(json!({"messages": [{"device": a.id, "to": b.address, "body": {"n": 2}}]})),
        )
        .await;
    assert_eq!(status, 202, "{jobs}");
    let job_id = jobs["job_ids"][0].as_str().unwrap().to_owned();
    wait_for("job.completed", || !receiver.of("job.completed").is_empty()).await;
    // A job to an address nobody has fails for good.
    let (status, failing) = t
        .call(
            "POST",
            "/v1/messages/bulk",
            Some(json!({"messages": [{"device": a.id, "to": crate::common::address(), "body": {"n": 3}}]})),
        )
        .await;
    assert_eq!(status, 202, "{failing}");
    let failed_job = failing["job_ids"][0].as_str().unwrap().to_owned();
    wait_for("job.failed", || !receiver.of("job.failed").is_empty()).await;
    drop(wb);
    wait_for("device.disconnected", || {
        !receiver.of("device.disconnected").is_empty()
    })
    .await;

    for r in receiver.received() {
        assert_signed(&r, &secret);
        assert_eq!(r.body["tenant_id"], t.id.as_str());
        assert!(r.body["delivery_id"].as_str().unwrap().starts_with("wd_"));
        assert!(r.body["event_id"].as_str().unwrap().starts_with("ev_"));
    }
    let connected = &receiver.of("device.connected")[0];
    assert_eq!(connected["device_id"], b.id.as_str());
    assert_eq!(connected["data"]["address"], b.address.as_str());
    let received = receiver
        .of("message.received")
        .into_iter()
        .find(|r| r["data"]["message_id"] == message_id.as_str())
        .unwrap();
    assert_eq!(received["device_id"], b.id.as_str());
    assert_eq!(received["data"]["from"], a.address.as_str());
    assert_eq!(received["data"]["to"], b.address.as_str());
    assert_eq!(received["data"]["body"], json!({"n": 1}));
    assert!(received["data"]["seq"].as_u64().unwrap() >= 1);
    // The sender's own copy is not a `message.received`.
    assert!(receiver
        .of("message.received")
        .iter()
        .all(|r| r["device_id"] == b.id.as_str()));
    let status_event = &receiver.of("message.status")[0];
    assert_eq!(status_event["device_id"], a.id.as_str());
    assert_eq!(status_event["data"]["message_id"], message_id.as_str());
    assert_eq!(status_event["data"]["status"], "read");
    assert_eq!(status_event["data"]["by"], b.address.as_str());
    let job = &receiver.of("job.completed")[0];
    assert_eq!(job["device_id"], a.id.as_str());
    assert_eq!(job["data"]["job_id"], job_id.as_str());
    assert!(job["data"]["message_id"]
        .as_str()
        .unwrap()
        .starts_with("m_"));
    let failed = &receiver.of("job.failed")[0];
    assert_eq!(failed["device_id"], a.id.as_str());
    assert_eq!(failed["data"]["job_id"], failed_job.as_str());
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .starts_with("not_found"),
        "{failed}"
    );
    let disconnected = &receiver.of("device.disconnected")[0];
    assert_eq!(disconnected["device_id"], b.id.as_str());
    assert_eq!(disconnected["data"]["connections"], 0);

    // The log holds every delivery, delivered on the first attempt, with its status
    // code and data.
    let entries = settled_log(&t, &id, receiver.received().len()).await;
    assert_eq!(entries.len(), receiver.received().len(), "{entries:?}");
    for e in &entries {
        assert_eq!(e["state"], "delivered", "{e}");
        assert_eq!(e["attempts"], 1, "{e}");
        assert_eq!(e["last_status_code"], 200, "{e}");
        assert!(e["last_latency_ms"].as_i64().is_some(), "{e}");
    }
    let logged: HashSet<&str> = entries
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap())
        .collect();
    let got: Vec<Received> = receiver.received();
    for r in &got {
        assert!(logged.contains(r.body["delivery_id"].as_str().unwrap()));
    }
    let (_, page) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=2&state=delivered"),
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_str().unwrap();
    let (_, rest) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=200&before={before}"),
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), entries.len() - 2);

    // Metrics per endpoint.
    let res = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        text.contains(&format!(
            "switchboard_webhook_deliveries_total{{endpoint=\"{id}\",result=\"delivered\"}}"
        )),
        "no delivery counter for {id}"
    );
    assert!(text.contains("switchboard_webhook_attempt_seconds_bucket"));
    // Nothing left in the outbox: depth 0 (set at scrape time).
    assert!(
        !text.contains(&format!(
            "switchboard_webhook_outbox_depth{{endpoint=\"{id}\"}} 1"
        )),
        "outbox not empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_timeouts_are_retried_in_order_per_device() {
    let server = TestServer::start_with(fast).await;
    let t = server.tenant().await;
    let receiver = Receiver::start(Mode::Fail).await;
    let (id, secret) = webhook(&t, &receiver.url, &["message.received"]).await;
    let a = t.device().await;
    let b = t.device().await;
    let c = t.device().await;
    let mut sent = Vec::new();
    for n in 0..6 {
        sent.push(send(&t, &a, &b, n).await);
    }
    for n in 0..3 {
        send(&t, &a, &c, 100 + n).await;
    }
    // 500s, then timeouts, then dropped connections, then it recovers.
    wait_for("three failed attempts", || receiver.attempts() >= 3).await;
    receiver.set(Mode::Hang);
    let before = receiver.attempts();
    wait_for("two timed-out attempts", || {
        receiver.attempts() >= before + 2
    })
    .await;
    receiver.set(Mode::Drop);
    let before = receiver.attempts();
    wait_for("two dropped attempts", || receiver.attempts() >= before + 2).await;
    // Nothing is delivered out of order while the first of each device fails.
    receiver.set(Mode::Ok);
    wait_for("every message", || {
        receiver.of("message.received").len() >= 9
    })
    .await;

    let got = receiver.of("message.received");
    let to_b: Vec<&Value> = got
        .iter()
        .filter(|r| r["device_id"] == b.id.as_str())
        .collect();
    let ids: Vec<&str> = to_b
        .iter()
        .map(|r| r["data"]["message_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 6, "{ids:?}");
    // In seq order, each once (the receiver answered every success).
    let seqs: Vec<u64> = to_b
        .iter()
        .map(|r| r["data"]["seq"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted, "out of order for B: {seqs:?}");
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    let to_c: Vec<u64> = got
        .iter()
        .filter(|r| r["device_id"] == c.id.as_str())
        .map(|r| r["data"]["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(to_c, [100, 101, 102]);
    for r in receiver.received() {
        assert_signed(&r, &secret);
    }
    // The log: the first deliveries needed several attempts, all are delivered.
    let entries = settled_log(&t, &id, 9).await;
    assert_eq!(entries.len(), 9);
    assert!(
        entries.iter().all(|e| e["state"] == "delivered"),
        "{entries:?}"
    );
    let retried: Vec<&Value> = entries
        .iter()
        .filter(|e| e["attempts"].as_u64().unwrap() > 1)
        .collect();
    assert!(!retried.is_empty(), "{entries:?}");
    // The body says which attempt it is.
    assert!(got.iter().any(|r| r["attempt"].as_u64().unwrap() > 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_never_regresses() {
    let server = TestServer::start_with(fast).await;
    let t = server.tenant().await;
    let receiver = Receiver::start(Mode::Fail).await;
    let (id, _) = webhook(&t, &receiver.url, &["message.status"]).await;
    let a = t.device().await;
    let b = t.device().await;
    let m1 = send(&t, &a, &b, 1).await;
    let m2 = send(&t, &a, &b, 2).await;
    let mut wb = t.connect(&b).await;
    // m1: delivered then read while the receiver fails; m2: delivered only.
    wb.send(json!({"type": "receipt", "message_ids": [m1, m2], "status": "delivered"}))
        .await;
    wait_for("a failed status delivery", || receiver.attempts() >= 1).await;
    wb.send(json!({"type": "receipt", "message_ids": [m1], "status": "read"}))
        .await;
    // Both statuses are in the outbox before the receiver recovers.
    let deadline = Instant::now() + LIMIT;
    loop {
        let entries = log(&t, &id, "").await;
        if entries.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statuses not recorded: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.set(Mode::Ok);
    wait_for("m1 read and m2 delivered", || {
        let got = receiver.of("message.status");
        got.iter()
            .any(|r| r["data"]["message_id"] == m1.as_str() && r["data"]["status"] == "read")
            && got.iter().any(|r| {
                r["data"]["message_id"] == m2.as_str() && r["data"]["status"] == "delivered"
            })
    })
    .await;
    let entries = settled_log(&t, &id, 3).await;
    // At the receiver, m1 never goes from read back to delivered.
    let m1_statuses: Vec<String> = receiver
        .of("message.status")
        .iter()
        .filter(|r| r["data"]["message_id"] == m1.as_str())
        .map(|r| r["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    let read_at = m1_statuses.iter().position(|s| s == "read").unwrap();
    assert!(
        m1_statuses[read_at..].iter().all(|s| s == "read"),
        "{m1_statuses:?}"
    );
    // The `delivered` of m1 was dropped in the outbox (the receiver failed it first).
    let m1_delivered: Vec<&Value> = entries
        .iter()
        .filter(|e| e["data"]["message_id"] == m1.as_str() && e["data"]["status"] == "delivered")
        .collect();
    assert_eq!(m1_delivered.len(), 1, "{entries:?}");
    assert_eq!(m1_delivered[0]["state"], "dropped", "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_dead_receiver_and_closes_after_it_recovers() {
    const COOLDOWN_MS: u64 = 800;
    let server = TestServer::start_with(|cfg| {
        fast(cfg);
        cfg.webhook_backoff_base_ms = 10;
        cfg.webhook_backoff_max_ms = 20;
        cfg.webhook_breaker_failures = 3;
        cfg.webhook_breaker_cooldown_ms = COOLDOWN_MS;
    })
    .await;
    let t = server.tenant().await;
    let receiver = Receiver::start(Mode::Fail).await;
    let (id, _) = webhook(&t, &receiver.url, &["message.received"]).await;
    let a = t.device().await;
    let devices = [t.device().await, t.device().await, t.device().await];
    for (i, d) in devices.iter().enumerate() {
        for n in 0..3 {
            send(&t, &a, d, (i * 10 + n) as u64).await;
        }
    }
    // Three failures open it; then one probe per cooldown, however many are due.
    let probe_gap = Duration::from_millis(COOLDOWN_MS * 9 / 10);
    let big_gaps = |times: &[Instant]| -> Vec<usize> {
        (1..times.len())
            .filter(|&i| times[i] - times[i - 1] >= probe_gap)
            .collect()
    };
    wait_for("two probes of the open breaker", || {
        big_gaps(&receiver.attempt_times()).len() >= 2
    })
    .await;
    let times = receiver.attempt_times();
    let gaps = big_gaps(&times);
    // Before it opened: the three failures, and at most one attempt per device that
    // was already out (without the breaker, retries come every 10–20 ms).
    assert!(
        gaps[0] <= 3 + devices.len(),
        "{} attempts before the breaker opened",
        gaps[0]
    );
    // After: every attempt is a probe, a full cooldown after the one before.
    for i in gaps[0]..times.len() {
        assert!(
            times[i] - times[i - 1] >= probe_gap,
            "attempt {i} came {:?} after the one before",
            times[i] - times[i - 1]
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = format!("switchboard_webhook_breaker_state{{endpoint=\"{id}\"}} 1");
    assert!(metrics.contains(&open), "breaker not open in /metrics");
    let (_, page) = t
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?state=pending"),
            None,
        )
        .await;
    assert!(!page["items"].as_array().unwrap().is_empty());
    // Nine events wait in the outbox (one of them may be out as a probe).
    assert!(
        metrics.contains(&format!(
            "switchboard_webhook_outbox_depth{{endpoint=\"{id}\"}} 9"
        )),
        "outbox depth not 9 in /metrics"
    );

    // It recovers: the next probe succeeds, the breaker closes, everything goes.
    receiver.set(Mode::Ok);
    wait_for("all nine", || receiver.of("message.received").len() >= 9).await;
    let first_ok = receiver.received()[0].at;
    let last_ok = receiver.received()[8].at;
    assert!(
        last_ok - first_ok < Duration::from_millis(COOLDOWN_MS * 3),
        "closed breaker should not pace deliveries"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "switchboard_webhook_breaker_state{{endpoint=\"{id}\"}} 0"
        )),
        "breaker not closed in /metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_after_the_last_attempt_and_replay() {
    let server = TestServer::start_with(|cfg| {
        fast(cfg);
        cfg.webhook_max_attempts = 3;
    })
    .await;
    let t = server.tenant().await;
    let receiver = Receiver::start(Mode::Fail).await;
    let (id, secret) = webhook(&t, &receiver.url, &["message.received"]).await;
    let a = t.device().await;
    let b = t.device().await;
    let m1 = send(&t, &a, &b, 1).await;
    let m2 = send(&t, &a, &b, 2).await;
    let deadline = Instant::now() + LIMIT;
    let dead = loop {
        let (status, page) = t
            .call("GET", &format!("/v1/webhooks/{id}/dead-letters"), None)
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() == 2 {
            break items;
        }
        assert!(Instant::now() < deadline, "no dead letters: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(receiver.attempts(), 6, "three attempts each");
    for d in &dead {
        assert_eq!(d["state"], "dead");
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["last_status_code"], 500);
        assert!(d["last_error"].as_str().unwrap().contains("500"), "{d}");
    }
    // Newest first.
    assert_eq!(dead[0]["data"]["message_id"], m2.as_str());
    assert_eq!(dead[1]["data"]["message_id"], m1.as_str());

    receiver.set(Mode::Ok);
    let (status, err) = t
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/dead-letters/replay"),
            Some(json!({"ids": []})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let first = dead[1]["delivery_id"].as_str().unwrap();
    let (status, replayed) = t
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/dead-letters/replay"),
            Some(json!({"ids": [first]})),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 1);
    wait_for("the replayed delivery", || {
        receiver.of("message.received").len() == 1
    })
    .await;
    let got = receiver.received();
    assert_eq!(got[0].body["delivery_id"], first);
    assert_signed(&got[0], &secret);
    let (_, replayed) = t
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/dead-letters/replay"),
            Some(json!({})),
        )
        .await;
    assert_eq!(replayed["replayed"], 1);
    wait_for("the other one", || {
        receiver.of("message.received").len() == 2
    })
    .await;
    assert_eq!(
        receiver.of("message.received")[1]["data"]["message_id"],
        m2.as_str()
    );
    let (_, page) = t
        .call("GET", &format!("/v1/webhooks/{id}/dead-letters"), None)
        .await;
    assert_eq!(page["items"], json!([]));
    let entries = log(&t, &id, "&state=delivered").await;
    assert_eq!(entries.len(), 2);
}

const ADMIN: &str = "webhook-process-admin-token";

fn child_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RATE_LIMIT_NORMAL", "1000000"),
        ("SWITCHBOARD_WEBHOOK_BACKOFF_BASE_MS", "50"),
        ("SWITCHBOARD_WEBHOOK_BACKOFF_MAX_MS", "200"),
        ("SWITCHBOARD_WEBHOOK_TIMEOUT_MS", "1000"),
        ("SWITCHBOARD_WEBHOOK_POLL_MS", "20"),
        ("SWITCHBOARD_WEBHOOK_MAX_ATTEMPTS", "1000"),
        ("SWITCHBOARD_WEBHOOK_BREAKER_FAILURES", "1000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_the_outbox_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let env = child_env();
    let mut server = ChildServer::spawn(dir.path(), ADMIN, &env, None).await;
    let http = reqwest::Client::new();
    let (status, body) = call(
        &http,
        &server.base,
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(json!({"name": "w"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let t = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http,
    };
    let receiver = Receiver::start(Mode::Drop).await;
    let (webhook_id, secret) = webhook(&t, &receiver.url, &["message.received"]).await;
    let a = t.device().await;
    let devices = [t.device().await, t.device().await];
    const PER_DEVICE: u64 = 15;
    let mut sent = HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        for n in 0..PER_DEVICE {
            sent.insert(send(&t, &a, d, i as u64 * 100 + n).await);
        }
    }
    // Every message was acknowledged, so its event is in the outbox; the receiver is
    // down and the sender is retrying. Then the receiver hangs, so the server is killed
    // with attempts in flight (claimed, leased): those come back when the lease runs
    // out, the rest at once.
    wait_for("attempts against the dead receiver", || {
        receiver.attempts() >= 4
    })
    .await;
    receiver.set(Mode::Hang);
    let before = receiver.attempts();
    wait_for("an attempt in flight", || receiver.attempts() > before).await;
    server.child.start_kill().unwrap();
    let status = server.child.wait().await.unwrap();
    assert!(!status.success(), "the server was killed");

    receiver.set(Mode::Ok);
    let _server = ChildServer::spawn(dir.path(), ADMIN, &env, None).await;
    // The attempt that was in flight is still claimed by the dead node.
    let t2 = Tenant {
        base: _server.base.clone(),
        ..t.clone()
    };
    let entries = log(&t2, &webhook_id, "&state=sending").await;
    assert!(!entries.is_empty(), "no claim left by the killed node");
    wait_for("every event after the restart", || {
        let got: HashSet<String> = receiver
            .of("message.received")
            .iter()
            .map(|r| r["data"]["message_id"].as_str().unwrap().to_owned())
            .collect();
        got.len() >= sent.len()
    })
    .await;
    let got = receiver.of("message.received");
    let messages: HashSet<&str> = got
        .iter()
        .map(|r| r["data"]["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), sent.len());
    assert!(sent.iter().all(|m| messages.contains(m.as_str())));
    // At least once; after dedupe on the delivery id, once each, one per event.
    let deliveries: HashSet<&str> = got
        .iter()
        .map(|r| r["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(deliveries.len(), sent.len());
    for r in receiver.received() {
        assert_signed(&r, &secret);
    }
    // Each device's events in order (first arrival of each delivery).
    for (i, d) in devices.iter().enumerate() {
        let mut seen = HashSet::new();
        let ns: Vec<u64> = got
            .iter()
            .filter(|r| r["device_id"] == d.id.as_str())
            .filter(|r| seen.insert(r["delivery_id"].as_str().unwrap().to_owned()))
            .map(|r| r["data"]["body"]["n"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (0..PER_DEVICE).map(|n| i as u64 * 100 + n).collect();
        assert_eq!(ns, want, "device {i} out of order");
    }
}
