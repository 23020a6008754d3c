//! `GET /v1/stats/messages`: per device and day, computed from the store, finished
//! days cached, today following new traffic.

use std::sync::Arc;
use std::time::Duration;

use actors::store::{InboxRow, MessageRecord, RowKind};
use serde_json::{json, Value};

use crate::bulk::{bulk, wait_jobs};
use crate::common::{Device, Tenant, TestServer};

const DAY_MS: i64 = 86_400_000;

async fn stats(t: &Tenant, query: &str) -> Value {
    let (status, body) = t
        .call("GET", &format!("/v1/stats/messages?{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn of<'a>(stats: &'a Value, device: &Device) -> Vec<&'a Value> {
    stats["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["device_id"] == device.id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_counts_follow_the_traffic() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let ack = wa
            .send_to(&format!("s{i}"), &b.address, json!({"i": i}))
            .await;
        ids.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    wb.send(json!({"type": "receipt", "message_ids": ids, "status": "delivered"}))
        .await;
    wb.send(json!({"type": "receipt", "message_ids": [ids[0]], "status": "read"}))
        .await;
    for _ in 0..3 {
        wa.recv_type("status").await;
    }
    // A queued job that fails (unknown recipient) and one that completes.
    let (status, res) = bulk(
        &t,
        json!({"device": a.id, "to": [b.address, "+19990000009"], "body": {"q": 1}}),
    )
    .await;
    assert_eq!(status, 202);
    let job_ids: Vec<String> = res["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    wait_jobs(&t, &job_ids, Duration::from_secs(30), |v| {
        v.iter()
            .all(|j| j["state"] == "completed" || j["state"] == "failed")
    })
    .await;
    let s = stats(&t, "").await;
    let mine = of(&s, &a);
    assert_eq!(mine.len(), 1, "{s}");
    let today = mine[0];
    assert_eq!(today["sent"], 4, "3 over the WebSocket, 1 queued: {s}");
    assert_eq!(today["delivered"], 3, "{s}");
    assert_eq!(today["read"], 1, "{s}");
    assert_eq!(today["queued"], 2, "{s}");
    assert_eq!(today["failed"], 1, "{s}");
    assert!(today["date"].as_str().unwrap().starts_with("20"), "{s}");
    // New traffic shows at once.
    wa.send_to("s9", &b.address, json!({})).await;
    let s = stats(&t, &format!("device={}", a.id)).await;
    assert_eq!(of(&s, &a)[0]["sent"], 5, "{s}");
    assert_eq!(s["totals"]["sent"], 5, "{s}");
    // Another tenant's device is refused; bad ranges too.
    let other = server.tenant().await;
    let (status, _) = other
        .call("GET", &format!("/v1/stats/messages?device={}", a.id), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = t.call("GET", "/v1/stats/messages?from=10&to=5", None).await;
    assert_eq!(status, 400);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/stats/messages?from=0&to={}", 200 * DAY_MS),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_day_is_cached() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let store = server.running.as_ref().unwrap().state.env.store.clone();
    let now = actors::clock::now_ms();
    let yesterday = (now / DAY_MS - 1) * DAY_MS;
    let sent = |n: u64| {
        let message = Arc::new(MessageRecord {
            id: format!("m_old{n}").into(),
            sender_device: Some(a.id.as_str().into()),
            from: a.address.as_str().into(),
            to: Some("+15550009999".into()),
            group: None,
            body: "{}".into(),
            ts: yesterday + 1000 + n as i64,
        });
        InboxRow {
            device_id: a.id.as_str().into(),
            seq: n,
            ts: message.ts,
            kind: RowKind::Message(message),
            client_id: None,
            epoch: 0,
            into_fence: false,
        }
    };
    store
        .commit_rows(Arc::new(vec![sent(1), sent(2)]))
        .await
        .unwrap();
    let range = format!("from={yesterday}&to={}", yesterday + DAY_MS);
    let s = stats(&t, &range).await;
    assert_eq!(of(&s, &a)[0]["sent"], 2, "{s}");
    assert_eq!(of(&s, &a)[0]["day"], yesterday);
    // Written behind the server's back: the cached day does not see it…
    store.commit_rows(Arc::new(vec![sent(3)])).await.unwrap();
    let s = stats(&t, &range).await;
    assert_eq!(of(&s, &a)[0]["sent"], 2, "{s}");
    // …until the statistics cache is cleared by hand.
    let (status, _) = server
        .call(
            "DELETE",
            "/admin/cache/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let s = stats(&t, &range).await;
    assert_eq!(of(&s, &a)[0]["sent"], 3, "{s}");
}
