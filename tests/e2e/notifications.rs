//! System notifications (`POST /v1/notifications`): one background job that delivers
//! a message from the tenant's reserved `system` device to every device (or a list),
//! live and in `sync`, exactly once each, paced by the budgets, with progress.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Device, Tenant, TestServer};
use crate::group_sync::{finished, finished_within};

async fn notify(tenant: &Tenant, body: Value) -> (u16, Value) {
    tenant.call("POST", "/v1/notifications", Some(body)).await
}

/// The notifications (messages from `system`) in a device's inbox.
async fn notifications(tenant: &Tenant, device: &Device) -> Vec<Value> {
    crate::bulk::inbox(tenant, device)
        .await
        .into_iter()
        .filter(|m| m["from"] == "system")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reaches_every_device_once_live_and_in_sync() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let devices = [
        tenant.device().await,
        tenant.device().await,
        tenant.device().await,
    ];
    let mut live = tenant.connect(&devices[0]).await;
    let (s, answer) = notify(&tenant, json!({"body": {"text": "maintenance at 22:00"}})).await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(
        answer["total"], 3,
        "every device but the system one: {answer}"
    );
    let got = live.recv_type("message").await;
    assert_eq!(
        (got["from"].clone(), got["body"].clone()),
        (json!("system"), json!({"text": "maintenance at 22:00"})),
        "{got}"
    );
    let view = finished(&tenant, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(
        (view["state"].clone(), view["kind"].clone()),
        (json!("completed"), json!("notification")),
        "{view}"
    );
    assert_eq!(view["progress"], json!({"done": 3, "total": 3}), "{view}");
    for d in &devices {
        let got = notifications(&tenant, d).await;
        assert_eq!(got.len(), 1, "{}: {got:?}", d.address);
        assert_eq!(got[0]["to"], d.address.as_str());
    }
    // A device that connects later gets it in `sync`.
    let mut later = tenant.connect(&devices[2]).await;
    let items = later.sync_all(0, 100).await;
    let from_system: Vec<&Value> = items.iter().filter(|i| i["from"] == "system").collect();
    assert_eq!(from_system.len(), 1, "{items:?}");

    // A second notification is a second message; the system device is not a
    // recipient, and takes no tokens.
    let (s, again) = notify(
        &tenant,
        json!({"body": {"text": "done"}, "priority": "high"}),
    )
    .await;
    assert_eq!((s, again["total"].clone()), (202, json!(3)), "{again}");
    let view = finished(&tenant, again["job_id"].as_str().unwrap()).await;
    assert_eq!(
        (view["state"].clone(), view["priority"].clone()),
        (json!("completed"), json!("high"))
    );
    assert_eq!(notifications(&tenant, &devices[1]).await.len(), 2);
    let system = view["device"].as_str().unwrap().to_owned();
    let (s, e) = tenant
        .call("POST", &format!("/v1/devices/{system}/tokens"), None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (403, json!("forbidden")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_a_list_skips_addresses_without_a_device() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let (a, b) = (tenant.device().await, tenant.device().await);
    let nobody = crate::common::address();
    let (s, answer) = notify(
        &tenant,
        json!({"body": {"text": "only you"}, "to": [b.address, nobody, b.address]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(answer["total"], 2, "repeats dropped: {answer}");
    let view = finished(&tenant, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["progress"], json!({"done": 2, "total": 2}), "{view}");
    assert_eq!(notifications(&tenant, &b).await.len(), 1);
    assert!(notifications(&tenant, &a).await.is_empty());
    // Another tenant's devices are never reached.
    let other = server.tenant().await;
    let theirs = other.device().await;
    let (s, _) = notify(
        &tenant,
        json!({"body": {"text": "x"}, "to": [theirs.address]}),
    )
    .await;
    assert_eq!(s, 202);
    let (_, answer) = notify(
        &tenant,
        json!({"body": {"text": "y"}, "to": [theirs.address]}),
    )
    .await;
    finished(&tenant, answer["job_id"].as_str().unwrap()).await;
    assert!(notifications(&other, &theirs).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_paced_by_the_tenant_budget_and_sent_once_each() {
    // 60 a minute: a burst of 60, then one a second (in-process token bucket), or the
    // first unit back a minute after it was spent (the shared budget on Redis, a
    // strict sliding window).
    let wait = if crate::common::on_redis() {
        Duration::from_secs(100)
    } else {
        Duration::from_secs(30)
    };
    let server = TestServer::start_with(|c| c.tenant_rate_per_minute = 60).await;
    let tenant = server.tenant().await;
    let mut devices = Vec::new();
    for _ in 0..64 {
        devices.push(tenant.device().await);
    }
    let (s, answer) = notify(&tenant, json!({"body": {"text": "paced"}})).await;
    assert_eq!((s, answer["total"].clone()), (202, json!(64)), "{answer}");
    let view = finished_within(&tenant, answer["job_id"].as_str().unwrap(), wait).await;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["progress"], json!({"done": 64, "total": 64}), "{view}");
    // It waited for the budget at least once (a delay moves `not_before`), and it was
    // never an attempt's failure.
    assert!(
        view["not_before"].as_i64() > view["created_at"].as_i64(),
        "never delayed: {view}"
    );
    assert_eq!(view["attempts"], 1, "{view}");
    let mut per_device: HashMap<String, usize> = HashMap::new();
    for d in &devices {
        per_device.insert(d.address.clone(), notifications(&tenant, d).await.len());
    }
    assert!(per_device.values().all(|n| *n == 1), "{per_device:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_checked_before_it_is_queued() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    for (body, needle) in [
        (json!({"body": [1, 2]}), "JSON object"),
        (json!({"body": {"t": 1}, "to": []}), "must not be empty"),
        (json!({"body": {"t": 1}, "to": ["+15550001", "x"]}), "to[1]"),
        (json!({"body": {"t": 1}, "priority": "urgent"}), "priority"),
        (json!({"body": {"t": 1}, "extra": true}), "extra"),
        (json!({"to": ["+15550001"]}), "body"),
    ] {
        let (s, e) = notify(&tenant, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let big = "x".repeat(70 * 1024);
    let (s, e) = notify(&tenant, json!({"body": {"text": big}})).await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (413, json!("too_large")),
        "{e}"
    );
    let (s, _) = server
        .call("POST", "/v1/notifications", None, Some(json!({"body": {}})))
        .await;
    assert_eq!(s, 401);
}

const ADMIN: &str = "notifications-test-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_killed_part_way_resumes_and_reaches_each_device_once() {
    use crate::common::{call, ChildServer};
    let dir = tempfile::tempdir().unwrap();
    // 60 a minute for the tenant: the job stops part way for the budget, and is
    // killed there with sends past its recorded progress already made.
    let env = [("SWITCHBOARD_TENANT_RATE_PER_MINUTE", "60")];
    let mut server = ChildServer::spawn(dir.path(), ADMIN, &env, None).await;
    let http = reqwest::Client::new();
    let (s, body) = call(
        &http,
        &server.base,
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(json!({"name": "n"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let tenant = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http: http.clone(),
    };
    let mut devices = Vec::new();
    for _ in 0..80 {
        devices.push(tenant.device().await);
    }
    let (s, answer) = notify(&tenant, json!({"body": {"text": "resumed"}})).await;
    assert_eq!((s, answer["total"].clone()), (202, json!(80)), "{answer}");
    let id = answer["job_id"].as_str().unwrap().to_owned();
    // Wait until it is held by the budget, then kill -9.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let v = crate::bulk::job(&tenant, &id).await;
        if v["state"] == "delayed" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never held: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.child.start_kill().unwrap();
    assert!(!server.child.wait().await.unwrap().success());
    let done_before = before["progress"]["done"].as_u64().unwrap();
    assert!(done_before < 80, "{before}");

    let server = ChildServer::spawn(dir.path(), ADMIN, &env, None).await;
    let tenant = Tenant {
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        ..tenant
    };
    let wait = if crate::common::on_redis() { 100 } else { 60 };
    let view = finished_within(&tenant, &id, Duration::from_secs(wait)).await;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["progress"], json!({"done": 80, "total": 80}), "{view}");
    for d in &devices {
        let got = notifications(&tenant, d).await;
        assert_eq!(
            got.len(),
            1,
            "{} got {} (progress {done_before} at the kill)",
            d.address,
            got.len()
        );
    }
    eprintln!(
        "progress {done_before} of 80 at the kill; each device got it once after the restart"
    );
}
