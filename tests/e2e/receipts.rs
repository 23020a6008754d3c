//! Receipts are durable statuses: stored in the sender's inbox (forward-only, never
//! twice), pushed live with their seq, caught up by `sync` after a reconnect, and
//! readable per recipient over REST.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{TestServer, Ws};

/// Nothing but `pong` comes back before `ping` is answered.
async fn assert_nothing_before_pong(ws: &mut Ws, id: &str) {
    ws.send(json!({"type": "ping", "id": id})).await;
    let next = ws.recv().await;
    assert_eq!(
        next["type"], "pong",
        "expected nothing before the pong: {next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_an_offline_sender_is_caught_up_by_sync() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let ack = wa
        .send_to("m1", &b.address, json!({"text": "read me"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    let sent_seq = ack["seq"].as_u64().unwrap();
    // The sender goes offline before the recipient reads.
    drop(wa);
    assert!(t.wait_connected(&a, false, Duration::from_secs(5)).await);
    let mut wb = t.connect(&b).await;
    for status in ["delivered", "read"] {
        wb.send(json!({"type": "receipt", "message_ids": [message_id], "status": status}))
            .await;
    }
    // The statuses land in A's inbox: wait until both are there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let items = loop {
        let (_, page) = t
            .call("GET", &format!("/v1/devices/{}/messages", a.id), None)
            .await;
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= 3 || tokio::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The reconnecting sender: `ready` counts them, `sync` returns them in seq order
    // after its message, as `status` entries.
    let mut wa = t.connect(&a).await;
    assert_eq!(wa.ready["last_seq"], sent_seq + 2, "{}", wa.ready);
    let synced = wa.sync_all(0, 100).await;
    assert_eq!(synced, items);
    assert_eq!(synced.len(), 3, "{synced:?}");
    assert_eq!(synced[0]["type"], "message");
    for (item, status) in synced[1..].iter().zip(["delivered", "read"]) {
        assert_eq!(item["type"], "status", "{item}");
        assert_eq!(item["message_id"], message_id.as_str());
        assert_eq!(item["status"], status);
        assert_eq!(item["by"], b.address.as_str());
        assert!(item["ts"].as_i64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_move_forward_only_and_are_never_stored_twice() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let ack = wa.send_to("m1", &b.address, json!({"n": 1})).await;
    let mid = ack["message_id"].as_str().unwrap().to_owned();
    wb.recv_type("message").await;
    // Read first: the live status carries its seq in A's inbox.
    wb.send(json!({"type": "receipt", "message_ids": [mid], "status": "read"}))
        .await;
    let status = wa.recv_type("status").await;
    assert_eq!(status["status"], "read", "{status}");
    assert_eq!(status["seq"], ack["seq"].as_u64().unwrap() + 1, "{status}");
    // A late `delivered` and a repeated `read` change nothing.
    wb.send(json!({"type": "receipt", "message_ids": [mid], "status": "delivered"}))
        .await;
    wb.send(json!({"type": "receipt", "message_ids": [mid, mid], "status": "read"}))
        .await;
    // The receipts are handled in order: a ping after them answers after them.
    assert_nothing_before_pong(&mut wb, "after-receipts").await;
    // …and the sender saw nothing more: once its session handled something sent
    // after the receipts (a send of its own), nothing else is pending.
    let ack2 = wa.send_to("m2", &b.address, json!({"n": 2})).await;
    assert_eq!(ack2["type"], "ack", "{ack2}");
    assert_eq!(
        ack2["seq"],
        status["seq"].as_u64().unwrap() + 1,
        "no status row was added"
    );
    let (_, page) = t
        .call("GET", &format!("/v1/devices/{}/messages", a.id), None)
        .await;
    let statuses: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "status")
        .collect();
    assert_eq!(statuses.len(), 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_shows_its_status_per_recipient() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let c = t.device().await;
    let (status, group) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address, c.address]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["group_id"].as_str().unwrap();
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let mut wc = t.connect(&c).await;
    wa.send(json!({"type": "send", "id": "g1", "group": gid, "body": {"hi": 1}}))
        .await;
    let ack = wa.answer("g1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mid = ack["message_id"].as_str().unwrap().to_owned();
    wb.recv_type("message").await;
    wc.recv_type("message").await;
    wb.send(json!({"type": "receipt", "message_ids": [mid], "status": "read"}))
        .await;
    wc.send(json!({"type": "receipt", "message_ids": [mid], "status": "delivered"}))
        .await;
    wa.recv_type("status").await;
    wa.recv_type("status").await;
    let (status, view) = t
        .call("GET", &format!("/v1/devices/{}/messages/{mid}", a.id), None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["message"]["message_id"], mid.as_str());
    assert_eq!(view["message"]["body"], json!({"hi": 1}));
    assert_eq!(view["message"]["group"], gid);
    let recipients = view["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2, "{view}");
    let of = |addr: &str| {
        recipients
            .iter()
            .find(|r| r["address"] == addr)
            .unwrap_or_else(|| panic!("{addr} missing in {view}"))
    };
    assert_eq!(of(&b.address)["status"], "read");
    assert!(of(&b.address)["read_at"].as_i64().is_some());
    assert_eq!(of(&c.address)["status"], "delivered");
    assert!(of(&c.address)["read_at"].is_null());
    // The same by the sender's request id.
    let (status, by_id) = t
        .call(
            "GET",
            &format!("/v1/devices/{}/messages/by-client-id/g1", a.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{by_id}");
    assert_eq!(by_id, view);
    // A recipient sees its own copy and status only.
    let (status, own) = t
        .call("GET", &format!("/v1/devices/{}/messages/{mid}", c.id), None)
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["recipients"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["recipients"][0]["device_id"], c.id.as_str());
    // Unknown ids: 404.
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/devices/{}/messages/m_nope", a.id),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(
            "GET",
            &format!("/v1/devices/{}/messages/by-client-id/nope", a.id),
            None,
        )
        .await;
    assert_eq!(status, 404);
}
