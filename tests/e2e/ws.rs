//! WebSocket happy paths: ready, send/ack/message, multi-connection echo, groups,
//! receipts, sync paging, typing, ping, idempotent resends, reconnect-then-sync.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Device, Tenant, TestServer, Ws};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Asserts `ack` is an ack for request `id` and returns (message_id, seq, ts).
fn check_ack(ack: &Value, id: &str) -> (String, u64, i64) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], id, "{ack}");
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    assert!(!message_id.is_empty(), "{ack}");
    let seq = ack["seq"].as_u64().unwrap();
    let ts = ack["ts"].as_i64().unwrap();
    assert!((ts - now_ms()).abs() < 60_000, "ts is not Unix ms: {ack}");
    (message_id, seq, ts)
}

/// The next `message` frame; fails on anything else but pings/pongs.
async fn next_message(ws: &mut Ws) -> Value {
    let v = ws.recv().await;
    assert_eq!(v["type"], "message", "expected a message, got {v}");
    v
}

/// Asserts nothing but (optionally) nothing at all arrives within `QUIET`.
async fn assert_quiet(ws: &mut Ws, what: &str) {
    if let Some(v) = ws.try_recv(QUIET).await {
        panic!("{what}: unexpected frame {v}");
    }
}

/// Sends over REST as `from` (sync send; 201 once durable).
async fn rest_send(t: &Tenant, from: &Device, to: &Device, body: Value) -> Value {
    let (status, v) = t
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", from.id),
            Some(json!({"to": to.address, "body": body})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_frame_has_identity_last_seq_and_heartbeat() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 12_345).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;

    let mut wb = t.connect(&b).await;
    let r = &wb.ready;
    assert_eq!(r["type"], "ready");
    assert_eq!(r["device_id"], b.id.as_str(), "{r}");
    assert_eq!(r["tenant_id"], t.id.as_str(), "{r}");
    assert_eq!(r["address"], b.address.as_str(), "{r}");
    assert_eq!(r["last_seq"], 0, "new device: {r}");
    assert_eq!(r["heartbeat_ms"], 12_345, "{r}");
    wb.stream.close(None).await.unwrap();

    for n in 0..4 {
        rest_send(&t, &a, &b, json!({ "n": n })).await;
    }
    let wb = t.connect(&b).await;
    assert_eq!(wb.ready["last_seq"], 4, "{}", wb.ready);
    // The sender's inbox holds its own copies too.
    let wa = t.connect(&a).await;
    assert_eq!(wa.ready["last_seq"], 4, "{}", wa.ready);
    assert_eq!(wa.ready["device_id"], a.id.as_str());
    assert_eq!(wa.ready["address"], a.address.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_acks_and_delivers_with_per_inbox_seqs() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    let mut acks = Vec::new();
    for i in 0..3 {
        let id = format!("s{i}");
        let body = json!({"text": format!("hello {i}"), "nested": {"k": [1, 2, i]}});
        let ack = wa.send_to(&id, &b.address, body.clone()).await;
        let (mid, seq, ts) = check_ack(&ack, &id);
        // A's own copy occupies A's inbox seq.
        assert_eq!(seq, i + 1, "{ack}");
        let m = next_message(&mut wb).await;
        assert_eq!(m["message_id"], mid.as_str(), "{m}");
        assert_eq!(m["seq"], i + 1, "B's inbox seq: {m}");
        assert_eq!(m["ts"], ts, "{m}");
        assert_eq!(m["from"], a.address.as_str(), "{m}");
        assert_eq!(m["to"], b.address.as_str(), "{m}");
        assert_eq!(m["body"], body, "{m}");
        assert!(m.get("group").is_none(), "{m}");
        acks.push(mid);
    }
    let ids: std::collections::HashSet<_> = acks.iter().collect();
    assert_eq!(ids.len(), 3, "message ids are unique");

    // B answers: B's inbox already holds 3 messages, so B's copy is seq 4; A's inbox
    // holds A's 3 sent copies, so the received message is seq 4 there too.
    let ack = wb.send_to("r1", &a.address, json!({"text": "back"})).await;
    let (mid, seq, _) = check_ack(&ack, "r1");
    assert_eq!(seq, 4, "{ack}");
    let m = next_message(&mut wa).await;
    assert_eq!(m["message_id"], mid.as_str());
    assert_eq!(m["seq"], 4, "{m}");
    assert_eq!(m["from"], b.address.as_str());

    // A's inbox over REST: its 3 sent copies then the reply, seq 1..4.
    let (status, page) = t
        .call("GET", &format!("/v1/devices/{}/messages", a.id), None)
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    let seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    for (i, mid) in acks.iter().enumerate() {
        assert_eq!(items[i]["message_id"], mid.as_str());
        assert_eq!(items[i]["from"], a.address.as_str());
    }
    assert_quiet(&mut wb, "B after its ack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_of_a_device_both_receive_and_see_own_sends() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut a1 = t.connect(&a).await;
    let mut a2 = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    assert!(t.is_connected(&a).await);

    // Live message to A reaches both connections.
    let ack = wb.send_to("in1", &a.address, json!({"x": 1})).await;
    let (mid, _, _) = check_ack(&ack, "in1");
    for ws in [&mut a1, &mut a2] {
        let m = next_message(ws).await;
        assert_eq!(m["message_id"], mid.as_str(), "{m}");
        assert_eq!(m["seq"], 1, "{m}");
        assert_eq!(m["from"], b.address.as_str(), "{m}");
    }

    // A sends from a1: a1 gets the ack (no echo), a2 gets the sender's copy.
    let body = json!({"x": 2});
    a1.send(json!({"type": "send", "id": "out1", "to": b.address, "body": body}))
        .await;
    let ack = a1.recv().await;
    let (mid, seq, ts) = check_ack(&ack, "out1");
    assert_eq!(seq, 2, "{ack}");
    let echo = next_message(&mut a2).await;
    assert_eq!(echo["message_id"], mid.as_str(), "{echo}");
    assert_eq!(
        echo["seq"], seq,
        "echo carries the sender's own seq: {echo}"
    );
    assert_eq!(echo["ts"], ts, "{echo}");
    assert_eq!(echo["from"], a.address.as_str(), "{echo}");
    assert_eq!(echo["to"], b.address.as_str(), "{echo}");
    assert_eq!(echo["body"], body, "{echo}");
    let m = next_message(&mut wb).await;
    assert_eq!(m["message_id"], mid.as_str());
    assert_eq!(m["seq"], 2, "B's inbox: 1 sent + this one: {m}");

    // The sending connection gets no echo; the other gets no ack.
    assert_quiet(&mut a1, "sending connection").await;
    assert_quiet(&mut a2, "other connection").await;

    // And the other way round: a2 sends, a1 sees the echo.
    let ack = a2.send_to("out2", &b.address, json!({"x": 3})).await;
    let (mid, seq, _) = check_ack(&ack, "out2");
    let echo = next_message(&mut a1).await;
    assert_eq!(echo["message_id"], mid.as_str());
    assert_eq!(echo["seq"], seq);
    assert_quiet(&mut a2, "sending connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_reaches_every_other_member() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let c = t.device().await;
    let outsider = t.device().await;
    let (status, g) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "team", "members": [a.address, b.address, c.address]})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let gid = g["group_id"].as_str().unwrap().to_owned();

    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let mut wc = t.connect(&c).await;
    let mut wo = t.connect(&outsider).await;

    let body = json!({"text": "hi team"});
    wa.send(json!({"type": "send", "id": "g1", "group": gid, "body": body}))
        .await;
    let ack = wa.recv().await;
    let (mid, seq, _) = check_ack(&ack, "g1");
    assert_eq!(seq, 1);
    for ws in [&mut wb, &mut wc] {
        let m = next_message(ws).await;
        assert_eq!(m["message_id"], mid.as_str(), "{m}");
        assert_eq!(m["group"], gid.as_str(), "{m}");
        assert_eq!(m["from"], a.address.as_str(), "{m}");
        assert_eq!(m["body"], body, "{m}");
        assert_eq!(m["seq"], 1, "{m}");
        assert!(m.get("to").is_none() || m["to"].is_null(), "{m}");
    }
    assert_quiet(&mut wa, "sender (no echo of its own group send)").await;
    assert_quiet(&mut wo, "non-member").await;

    // Members answer in the group; the sender receives it.
    let ack = wb
        .send_and_answer(json!({"type": "send", "id": "g2", "group": gid, "body": {"re": 1}}))
        .await;
    let (mid2, _, _) = check_ack(&ack, "g2");
    let m = next_message(&mut wa).await;
    assert_eq!(m["message_id"], mid2.as_str());
    assert_eq!(m["group"], gid.as_str());
    let m = next_message(&mut wc).await;
    assert_eq!(m["message_id"], mid2.as_str());

    // A non-member may not send to the group.
    let err = wo
        .send_and_answer(json!({"type": "send", "id": "g3", "group": gid, "body": {}}))
        .await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(err["id"], "g3", "{err}");
    for ws in [&mut wa, &mut wb, &mut wc] {
        assert_quiet(ws, "member after a refused send").await;
    }

    // An unknown group is not found.
    let err = wa
        .send_and_answer(json!({"type": "send", "id": "g4", "group": "g_nope", "body": {}}))
        .await;
    assert_eq!(err["code"], "not_found", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sender_as_status() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut a2 = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    let ack = wa.send_to("m1", &b.address, json!({"t": 1})).await;
    let (mid, _, _) = check_ack(&ack, "m1");
    let m = next_message(&mut wb).await;
    assert_eq!(m["message_id"], mid.as_str());
    let _echo = next_message(&mut a2).await;

    for status in ["delivered", "read"] {
        let before = now_ms();
        wb.send(json!({"type": "receipt", "message_ids": [mid], "status": status}))
            .await;
        for ws in [&mut wa, &mut a2] {
            let s = ws.recv().await;
            assert_eq!(s["type"], "status", "{s}");
            assert_eq!(s["message_id"], mid.as_str(), "{s}");
            assert_eq!(s["status"], status, "{s}");
            assert_eq!(s["by"], b.address.as_str(), "{s}");
            let ts = s["ts"].as_i64().unwrap();
            assert!(ts >= before - 1000 && ts <= now_ms() + 1000, "{s}");
        }
    }
    // The reader itself gets nothing back.
    assert_quiet(&mut wb, "receipt sender").await;

    // A receipt for an id the reader does not hold is ignored.
    wb.send(json!({"type": "receipt", "message_ids": ["m_unknown"], "status": "read"}))
        .await;
    assert_quiet(&mut wa, "sender after a receipt for an unknown id").await;
    // A receipt for the reader's own sent message does not come back to itself.
    let ack = wb.send_to("m2", &a.address, json!({"t": 2})).await;
    let (own, _, _) = check_ack(&ack, "m2");
    wb.send(json!({"type": "receipt", "message_ids": [own], "status": "read"}))
        .await;
    assert_quiet(&mut wb, "receipt for own message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pages_an_offline_inbox_in_order() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;

    let mut sent = Vec::new();
    for i in 0..25 {
        let id = format!("q{i}");
        let ack = wa.send_to(&id, &b.address, json!({ "i": i })).await;
        sent.push(check_ack(&ack, &id).0);
    }

    let mut wb = t.connect(&b).await;
    assert_eq!(wb.ready["last_seq"], 25, "{}", wb.ready);

    let mut got: Vec<Value> = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let id = if pages == 0 {
            "s1".to_owned()
        } else {
            format!("s{}", pages + 1)
        };
        wb.send(json!({"type": "sync", "id": id, "after_seq": after, "limit": 10}))
            .await;
        let page = wb.recv().await;
        assert_eq!(page["type"], "messages", "{page}");
        assert_eq!(page["id"], id.as_str(), "{page}");
        let items = page["items"].as_array().unwrap().clone();
        let expect_len = (25 - after).min(10) as usize;
        assert_eq!(items.len(), expect_len, "{page}");
        for item in &items {
            assert_eq!(item["type"], "message", "{item}");
            assert_eq!(item["seq"], after + 1, "{item}");
            after += 1;
        }
        assert_eq!(page["next_after_seq"], after, "{page}");
        pages += 1;
        got.extend(items);
        if after < 25 {
            assert_eq!(page["more"], true, "{page}");
        } else {
            assert_eq!(page["more"], false, "{page}");
            break;
        }
        assert!(pages < 10, "too many pages");
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = got
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["body"], json!({ "i": i }), "{m}");
        assert_eq!(m["from"], a.address.as_str());
        assert_eq!(m["to"], b.address.as_str());
    }

    // Past the end: empty page, cursor unchanged.
    let page = wb.sync_page("end", 25, 10).await;
    assert_eq!(page["items"], json!([]), "{page}");
    assert_eq!(page["next_after_seq"], 25, "{page}");
    assert_eq!(page["more"], false, "{page}");
    // Default limit covers everything here.
    wb.send(json!({"type": "sync", "id": "all", "after_seq": 20}))
        .await;
    let page = wb.recv().await;
    assert_eq!(page["id"], "all");
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_forwarded_and_never_stored() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    for state in ["composing", "paused"] {
        wa.send(json!({"type": "typing", "to": b.address, "state": state}))
            .await;
        let v = wb.recv().await;
        assert_eq!(v["type"], "typing", "{v}");
        assert_eq!(v["from"], a.address.as_str(), "{v}");
        assert_eq!(v["state"], state, "{v}");
        assert!(v.get("group").is_none(), "{v}");
    }
    assert_quiet(&mut wa, "typing sender").await;

    for ws in [&mut wa, &mut wb] {
        let page = ws.sync_page("s", 0, 100).await;
        assert_eq!(page["items"], json!([]), "typing was stored: {page}");
        assert_eq!(page["next_after_seq"], 0);
    }
    let wb2 = t.connect(&b).await;
    assert_eq!(wb2.ready["last_seq"], 0);

    // Typing in a group carries the group.
    let (status, g) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address]})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let gid = g["group_id"].as_str().unwrap();
    wa.send(json!({"type": "typing", "group": gid, "state": "composing"}))
        .await;
    let v = wb.recv().await;
    assert_eq!(v["type"], "typing", "{v}");
    assert_eq!(v["group"], gid, "{v}");
    assert_eq!(v["from"], a.address.as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_id() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let mut wa = t.connect(&a).await;
    wa.send(json!({"type": "ping", "id": "p1"})).await;
    let v = wa.recv().await;
    assert_eq!(v, json!({"type": "pong", "id": "p1"}));
    wa.send(json!({"type": "ping"})).await;
    let v = wa.recv().await;
    assert_eq!(v["type"], "pong", "{v}");
    assert!(v.get("id").is_none() || v["id"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_an_id_returns_the_first_answer_and_no_second_message() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    // Sequential resend.
    let first = wa.send_to("dup", &b.address, json!({"n": 1})).await;
    check_ack(&first, "dup");
    let m = next_message(&mut wb).await;
    assert_eq!(m["message_id"], first["message_id"]);
    let second = wa.send_to("dup", &b.address, json!({"n": 1})).await;
    assert_eq!(second, first, "a resend answers the first ack again");
    assert_quiet(&mut wb, "recipient after a resend").await;

    // Back-to-back resend, the second before the first is acked.
    let frame = json!({"type": "send", "id": "dup2", "to": b.address, "body": {"n": 2}});
    wa.send(frame.clone()).await;
    wa.send(frame).await;
    let x = wa.answer("dup2").await;
    let y = wa.answer("dup2").await;
    check_ack(&x, "dup2");
    assert_eq!(x, y, "both answers are the same ack");
    assert_ne!(x["message_id"], first["message_id"]);
    let m = next_message(&mut wb).await;
    assert_eq!(m["message_id"], x["message_id"]);
    assert_quiet(&mut wb, "recipient after a back-to-back resend").await;
    assert_quiet(&mut wa, "sender after two answers").await;

    // Neither inbox holds a second copy.
    for (ws, who) in [(&mut wa, "sender"), (&mut wb, "recipient")] {
        let items = ws.sync_all(0, 100).await;
        assert_eq!(items.len(), 2, "{who}: {items:?}");
    }
    // A resend from another connection of the same device is also deduplicated.
    let mut a2 = t.connect(&a).await;
    let third = a2.send_to("dup", &b.address, json!({"n": 1})).await;
    assert_eq!(third, first);
    assert_quiet(&mut wb, "recipient after a resend from another connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_then_sync_returns_exactly_the_missed_messages() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    let mut last_seen = 0;
    for i in 0..3 {
        let id = format!("live{i}");
        let ack = wa.send_to(&id, &b.address, json!({ "i": i })).await;
        check_ack(&ack, &id);
        let m = next_message(&mut wb).await;
        last_seen = m["seq"].as_u64().unwrap();
    }
    assert_eq!(last_seen, 3);
    wb.stream.close(None).await.unwrap();
    drop(wb);
    assert!(
        t.wait_connected(&b, false, Duration::from_secs(5)).await,
        "B still shown connected after closing"
    );

    let mut missed = Vec::new();
    for i in 0..5 {
        let id = format!("off{i}");
        let ack = wa.send_to(&id, &b.address, json!({ "off": i })).await;
        missed.push(check_ack(&ack, &id).0);
    }

    let mut wb = t.connect(&b).await;
    assert_eq!(wb.ready["last_seq"], last_seen + 5, "{}", wb.ready);
    let items = wb.sync_all(last_seen, 100).await;
    let ids: Vec<&str> = items
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, missed.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(items[0]["seq"], last_seen + 1);
    // The missed messages are not pushed live again after reconnecting.
    assert_quiet(&mut wb, "reconnected client").await;
}

impl Ws {
    /// Sends a frame carrying `id` and returns its `ack`/`error`.
    async fn send_and_answer(&mut self, frame: Value) -> Value {
        let id = frame["id"].as_str().unwrap().to_owned();
        self.send(frame).await;
        self.answer(&id).await
    }
}
