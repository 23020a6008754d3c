//! Deleting a device stops its session for good: its clients are closed with 4410,
//! its queued jobs are cancelled, its tokens refused, and nothing is written to its
//! inbox afterwards.

use std::time::Duration;

use serde_json::json;

use crate::bulk::{bulk, job};
use crate::common::{TestServer, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_device_closes_its_clients_and_cancels_its_jobs() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let token = t.token(&a).await;
    let mut wa1 = Ws::connect(&t.ws_base, &token).await;
    let mut wa2 = Ws::connect(&t.ws_base, &token).await;
    // Queued jobs of the device (their lane paused so they stay queued).
    let (status, _) = server
        .call(
            "POST",
            "/admin/queues/lanes/low/pause",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert!(status < 300);
    let (status, queued) = bulk(
        &t,
        json!({"device": a.id, "to": [b.address, b.address], "body": {"x": 1}, "priority": "low"}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let (status, _) = t
        .call("DELETE", &format!("/v1/devices/{}", a.id), None)
        .await;
    assert_eq!(status, 204);
    // Both clients are closed with the documented code, at once.
    assert_eq!(wa1.expect_close().await, 4410);
    assert_eq!(wa2.expect_close().await, 4410);
    // Its queued jobs are cancelled.
    for id in queued["job_ids"].as_array().unwrap() {
        let j = job(&t, id.as_str().unwrap()).await;
        assert_eq!(j["state"], "cancelled", "{j}");
    }
    // Its tokens are refused, and no session of it is running.
    let res = tokio_tungstenite::connect_async(format!("{}/v1/ws?token={token}", t.ws_base)).await;
    assert!(res.is_err(), "a deleted device's token still connects");
    let (_, tree) = server
        .call(
            "GET",
            &format!("/admin/tree?tenant={}", t.id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert!(!tree.to_string().contains(&a.id), "{tree}");
    // Sends to it are refused, and nothing lands in an inbox of that id.
    let mut wb = t.connect(&b).await;
    let answer = wb.send_to("x", &a.address, json!({"late": true})).await;
    assert_eq!(answer["code"], "not_found", "{answer}");
}

/// Group sends racing with the deletion of a member: once the DELETE has answered, no
/// row is written to the deleted device's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_to_a_deleted_inbox() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 1_000_000).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let victim = t.device().await;
    let (_, group) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address, victim.address]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let mut wv = t.connect(&victim).await;
    let sender = {
        let t = t.clone();
        let a = a.clone();
        let gid = gid.clone();
        tokio::spawn(async move {
            let mut wa = t.connect(&a).await;
            let mut acked = 0;
            for i in 0..200 {
                let id = format!("g{i}");
                wa.send(json!({"type": "send", "id": id, "group": gid, "body": {"i": i}}))
                    .await;
                if wa.answer(&id).await["type"] == "ack" {
                    acked += 1;
                }
            }
            acked
        })
    };
    // Delete while the sends run.
    wv.recv_type("message").await;
    let (status, _) = t
        .call("DELETE", &format!("/v1/devices/{}", victim.id), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(wv.expect_close().await, 4410);
    let acked = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked, 200, "group sends fail when a member is deleted");
    // The store has no row left for the deleted device, and none came after.
    let store = server.running.as_ref().unwrap().state.env.store.clone();
    assert_eq!(store.last_seq(&victim.id).await.unwrap(), 0);
    assert!(store
        .read_inbox(&victim.id, 0, 10)
        .await
        .unwrap()
        .is_empty());
    // B got every message.
    let mut wb = t.connect(&b).await;
    let got = wb.sync_all(0, 1000).await;
    assert_eq!(got.len(), 200);
}
