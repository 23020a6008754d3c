//! Consistency edges of the message path: what `ready` counts, idle stops that never
//! drop committed work, reconnects during a stop, order after redelivery, and retries
//! of a half-failed send.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Tenant, TestServer, Ws};

async fn faults(server: &TestServer, body: Value) {
    let (status, answer) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(body),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_never_counts_a_seq_that_is_not_durable() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let token = t.token(&a).await;
    let mut a1 = Ws::connect(&t.ws_base, &token).await;
    faults(&server, json!({"delays": {"commit_rows": 1500}})).await;
    a1.send(json!({"type": "send", "id": "slow", "to": b.address, "body": {"n": 1}}))
        .await;
    // The ping is answered after the send was handed to the session.
    a1.ping("after-send").await;
    // A second client of the sender connects while the send is still being written.
    let mut a2 = Ws::connect(&t.ws_base, &token).await;
    assert_eq!(
        a2.ready["last_seq"], 0,
        "ready counted an uncommitted seq: {}",
        a2.ready
    );
    // Once durable: the ack, and the echo with seq 1 for the other client.
    let ack = a1.answer("slow").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let echo = a2.recv_type("message").await;
    assert_eq!(echo["seq"], 1, "{echo}");
    faults(&server, json!({"delays": {"commit_rows": 0}})).await;
}

/// An idle session stops only once its work is done: a send is either answered 201
/// (and stored) or refused before anything was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stop_never_drops_a_committed_send() {
    let server = TestServer::start_with(|c| {
        c.session_idle_ms = Some(20);
        c.rate_limit_normal = 1_000_000;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let path = format!("/v1/devices/{}/messages", a.id);
    let mut refused = 0;
    for i in 0..150u64 {
        let id = format!("idle-{i}");
        let (status, answer) = t
            .call(
                "POST",
                &path,
                Some(json!({"id": id, "to": b.address, "body": {"i": i}})),
            )
            .await;
        match status {
            201 => {}
            503 => {
                refused += 1;
                // Refused: nothing was stored under that id…
                let (found, _) = t
                    .call(
                        "GET",
                        &format!("/v1/devices/{}/messages/by-client-id/{id}", a.id),
                        None,
                    )
                    .await;
                assert_eq!(found, 404, "a send answered 503 was stored: {answer}");
                // …and the retry goes through.
                let (status, answer) = t
                    .call(
                        "POST",
                        &path,
                        Some(json!({"id": id, "to": b.address, "body": {"i": i}})),
                    )
                    .await;
                assert_eq!(status, 201, "{answer}");
            }
            other => panic!("{other}: {answer}"),
        }
        // Let the session go idle about every other send.
        tokio::time::sleep(Duration::from_millis(i % 40)).await;
    }
    println!("{refused} sends refused at an idle stop (and retried)");
    let (_, history) = t
        .call(
            "GET",
            &format!("/v1/devices/{}/messages?limit=1000", b.id),
            None,
        )
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_during_an_idle_stop_is_not_closed() {
    let server = TestServer::start_with(|c| c.session_idle_ms = Some(15)).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let token = t.token(&a).await;
    for i in 0..60u64 {
        let mut ws = Ws::connect(&t.ws_base, &token).await;
        // Right after `ready` the connection works: no 1012.
        ws.ping(&format!("p{i}")).await;
        drop(ws);
        tokio::time::sleep(Duration::from_millis(i % 25)).await;
    }
}

/// Rows lost while the recipient's session crashes are delivered again before the
/// rows sent after them: each sender's messages stay in order in the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_rows_keep_per_sender_order() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_normal = 1_000_000;
        c.supervisor_max_restarts = 1000;
        c.supervisor_backoff_max_ms = 40;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    // B's session panics at every 60th row it accepts, five times: each time the rows
    // queued behind it are lost and delivered again.
    let (status, _) = server
        .call(
            "POST",
            &format!(
                "/admin/test/devices/{}/start-panics?times=5&every_rows=60",
                b.id
            ),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let n = 400u64;
    let mut wa = t.connect(&a).await;
    for i in 0..n {
        wa.send(json!({"type": "send", "id": format!("o{i}"), "to": b.address, "body": {"i": i}}))
            .await;
    }
    let mut acked = 0;
    while acked < n {
        let v = wa.recv().await;
        if v["type"] == "ack" {
            acked += 1;
        } else {
            assert_ne!(v["type"], "error", "{v}");
        }
    }
    let stats = &server.running.as_ref().unwrap().state.env.stats;
    let resent = stats.rows_resent.load(std::sync::atomic::Ordering::Relaxed);
    let restarts = stats
        .session_restarts
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("{restarts} recipient restarts, {resent} rows delivered again");
    assert_eq!(restarts, 5);
    assert!(resent > 0, "nothing was delivered again");
    let items = all_items(&t, &b).await;
    let order: Vec<u64> = items
        .iter()
        .map(|m| m["body"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        (0..n).collect::<Vec<_>>(),
        "out of order or duplicated"
    );
}

async fn all_items(t: &Tenant, d: &crate::common::Device) -> Vec<Value> {
    let mut ws = t.connect(d).await;
    ws.sync_all(0, 1000).await
}

/// A send that failed after the sender's copy was stored is completed by its retry
/// (same request id): one message, one copy in each inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_half_failed_send_makes_no_second_copy() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    faults(&server, json!({"device": b.id, "fail": true})).await;
    let mut wa = t.connect(&a).await;
    let first = wa.send_to("half", &b.address, json!({"x": 1})).await;
    assert_eq!(first["type"], "error", "{first}");
    assert_eq!(first["code"], "unavailable", "{first}");
    assert!(!first.to_string().contains("INJECTED"), "{first}");
    faults(&server, json!({"device": b.id, "fail": false})).await;
    let retry = wa.send_to("half", &b.address, json!({"x": 1})).await;
    assert_eq!(retry["type"], "ack", "{retry}");
    assert_eq!(
        retry["seq"], 1,
        "the sender's copy was written once: {retry}"
    );
    let own = all_items(&t, &a).await;
    assert_eq!(own.len(), 1, "{own:?}");
    let got = all_items(&t, &b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message_id"], retry["message_id"]);
    assert_eq!(own[0]["message_id"], retry["message_id"]);
}
