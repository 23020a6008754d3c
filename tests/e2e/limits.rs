//! Size limits, one per concern and the same on every transport: a message body of
//! `max_message_bytes` (REST 413, WebSocket `error too_large`), request bodies bounded
//! in bytes per route, and a campaign stored once, whatever its fan-out.

use std::time::Duration;

use serde_json::{json, Value};

use crate::bulk::bulk;
use crate::common::{call, ChildServer, Tenant, TestServer};

fn body_of(bytes: usize) -> Value {
    json!({ "text": "x".repeat(bytes) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_body_limit_for_rest_and_websocket() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let path = format!("/v1/devices/{}/messages", a.id);
    // 3 MiB over REST: refused, not stored.
    let (status, answer) = t
        .call(
            "POST",
            &path,
            Some(json!({"to": b.address, "body": body_of(3 << 20)})),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    // Just over the body limit (64 KiB) but under the request limit: still refused.
    let (status, answer) = t
        .call(
            "POST",
            &path,
            Some(json!({"to": b.address, "body": body_of(65 * 1024)})),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65536"),
        "{answer}"
    );
    // Under the limit: sent.
    let (status, answer) = t
        .call(
            "POST",
            &path,
            Some(json!({"to": b.address, "body": body_of(60 * 1024)})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    // The same limit over the WebSocket: an error frame, the connection stays open.
    let mut wa = t.connect(&a).await;
    let answer = wa.send_to("big", &b.address, body_of(65 * 1024)).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "too_large", "{answer}");
    let ok = wa.send_to("fits", &b.address, body_of(60 * 1024)).await;
    assert_eq!(ok["type"], "ack", "{ok}");
    // Only the two that fit were stored.
    let (_, history) = t
        .call("GET", &format!("/v1/devices/{}/messages", b.id), None)
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_in_bytes() {
    let server = TestServer::start_with(|c| {
        c.max_bulk_bytes = 256 * 1024;
        c.max_contacts_bytes = 128 * 1024;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    // A bulk call under 10,000 messages but over its byte limit.
    let messages: Vec<Value> = (0..300)
        .map(|_| json!({"device": a.id, "to": "+15550000001", "body": body_of(1000)}))
        .collect();
    let (status, answer) = bulk(&t, json!({ "messages": messages })).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large");
    // A contact list under 10,000 entries but over its byte limit.
    let contacts: Vec<Value> = (0..2000)
        .map(|i| json!({"address": format!("+1555{i:07}"), "name": "n".repeat(100)}))
        .collect();
    let (status, answer) = t
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts", a.id),
            Some(json!({ "contacts": contacts })),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    // Every other body: 64 KiB by default.
    let (status, answer) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "n".repeat(100 * 1024), "members": []})),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    // The limits are stated in the API document.
    let (_, doc) = call(&t.http, &t.base, "GET", "/openapi.json", None, None).await;
    let bulk_doc = doc["paths"]["/v1/messages/bulk"]["post"].to_string();
    assert!(
        bulk_doc.contains("max_bulk_bytes") && bulk_doc.contains("16 MiB"),
        "{bulk_doc}"
    );
    assert!(bulk_doc.contains("413"), "{bulk_doc}");
    let contacts_doc = doc["paths"]["/v1/devices/{id}/contacts"]["put"].to_string();
    assert!(
        contacts_doc.contains("max_contacts_bytes"),
        "{contacts_doc}"
    );
    let send_doc = doc["paths"]["/v1/devices/{id}/messages"]["post"].to_string();
    assert!(
        send_doc.contains("64 KiB") && send_doc.contains("413"),
        "{send_doc}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A campaign of 100,000 recipients with a 20 KB body: the body is stored once and
/// the server grows by the jobs, not by 100,000 copies of the body (2 GB before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_body_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "campaign-admin";
    let server = ChildServer::spawn(dir.path(), admin, &[], None).await;
    let http = reqwest::Client::new();
    let (status, body) = call(
        &http,
        &server.base,
        "POST",
        "/admin/tenants",
        Some(admin),
        Some(json!({"name": "c"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let t = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http: http.clone(),
    };
    let a = t.device().await;
    // The jobs stay queued while we measure.
    let (status, _) = call(
        &http,
        &server.base,
        "POST",
        "/admin/queues/lanes/normal/pause",
        Some(admin),
        None,
    )
    .await;
    assert!(status < 300);
    let pid = server.child.id().unwrap();
    let before = rss_kib(pid);
    let to: Vec<String> = (0..100_000).map(|i| format!("+1666{i:07}")).collect();
    let res = http
        .post(format!("{}/v1/messages/bulk", server.base))
        .bearer_auth(&t.key)
        .json(&json!({"device": a.id, "to": to, "body": body_of(20_000)}))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(accepted["job_ids"].as_array().unwrap().len(), 100_000);
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("campaign of 100,000 × 20 KB: RSS {before} KiB → {after} KiB (+{grown_mib} MiB)");
    // The jobs themselves (100,000 rows and their ids, parsed and written once) and
    // SQLite's page cache account for the growth; 100,000 bodies would be 2,000 MiB.
    assert!(grown_mib < 200, "RSS grew by {grown_mib} MiB");
    // The body is one row, shared by every job.
    let job_id = accepted["job_ids"][0].as_str().unwrap();
    let (status, job) = t.call("GET", &format!("/v1/jobs/{job_id}"), None).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "waiting", "{job}");
}
