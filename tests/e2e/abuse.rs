//! Abuse and isolation: budgets for receipts, typing and sync; a group send costs its
//! fan-out; queued jobs are claimed fairly across tenants; clients never see internal
//! error text; finished jobs are pruned with the statistics kept.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bulk::{bulk, wait_jobs};
use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_typing_and_sync_have_budgets() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_receipts = 5;
        c.rate_limit_typing = 3;
        c.rate_limit_sync = 3;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    for i in 0..3 {
        wa.sync_page(&format!("s{i}"), 0, 10).await;
    }
    wa.send(json!({"type": "sync", "id": "s3", "after_seq": 0}))
        .await;
    let refused = wa.recv_type("error").await;
    assert_eq!(refused["id"], "s3");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().unwrap() > 0, "{refused}");
    for _ in 0..3 {
        wa.send(json!({"type": "typing", "to": b.address, "state": "composing"}))
            .await;
    }
    wa.send(json!({"type": "typing", "id": "t3", "to": b.address, "state": "composing"}))
        .await;
    let refused = wa.recv_type("error").await;
    assert_eq!(
        (refused["id"].clone(), refused["code"].clone()),
        (json!("t3"), json!("rate_limited"))
    );
    // Receipts count per message id: 3 + 3 ids are over a budget of 5.
    let ids: Vec<String> = (0..3).map(|i| format!("m_{i}")).collect();
    wa.send(json!({"type": "receipt", "id": "r0", "message_ids": ids, "status": "read"}))
        .await;
    wa.send(json!({"type": "receipt", "id": "r", "message_ids": ids, "status": "read"}))
        .await;
    let refused = wa.recv_type("error").await;
    assert_eq!(
        (refused["id"].clone(), refused["code"].clone()),
        (json!("r"), json!("rate_limited"))
    );
    // The budgets are the device's, shared by its connections.
    let mut wa2 = t.connect(&a).await;
    wa2.send(json!({"type": "sync", "id": "s4", "after_seq": 0}))
        .await;
    let got = wa2.recv().await;
    assert_eq!(got["code"], "rate_limited", "{got}");
    // Sends have their own budget.
    assert_eq!(wa.send_to("ok", &b.address, json!({})).await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_costs_its_fan_out() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 10).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let mut members = vec![a.address.clone()];
    for _ in 0..4 {
        members.push(t.device().await.address);
    }
    let (_, group) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": members})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap();
    let mut wa = t.connect(&a).await;
    // 4 recipients each: 4 + 4 of the 10, then 2 left.
    for i in 0..2 {
        let id = format!("g{i}");
        wa.send(json!({"type": "send", "id": id, "group": gid, "body": {}}))
            .await;
        assert_eq!(wa.answer(&id).await["type"], "ack");
    }
    wa.send(json!({"type": "send", "id": "g2", "group": gid, "body": {}}))
        .await;
    let refused = wa.answer("g2").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // A 1:1 send still fits in what is left.
    let one = wa.send_to("one", &members[1], json!({})).await;
    assert_eq!(one["type"], "ack", "{one}");
}

async fn completed_of(server: &TestServer, tenant_id: &str) -> u64 {
    let (_, stats) = server
        .call(
            "GET",
            "/admin/queues/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    stats["tenants"][tenant_id]["completed"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_are_claimed_fairly_across_tenants() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_normal = 1_000_000;
        c.queue_message_concurrency = Some(8);
    })
    .await;
    let big = server.tenant().await;
    let small = server.tenant().await;
    let (bs, br) = (big.device().await, big.device().await);
    let (ss, sr) = (small.device().await, small.device().await);
    // Slow commits make the big backlog take seconds to drain.
    let (status, _) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(json!({"delays": {"commit_rows": 5}})),
        )
        .await;
    assert_eq!(status, 204);
    let to: Vec<&str> = std::iter::repeat_n(br.address.as_str(), 3000).collect();
    let (status, _) = bulk(
        &big,
        json!({"device": bs.id, "to": to, "body": {"big": true}}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, one) = bulk(
        &small,
        json!({"messages": [{"device": ss.id, "to": sr.address, "body": {"small": true}}]}),
    )
    .await;
    assert_eq!(status, 202);
    let id = one["job_ids"][0].as_str().unwrap().to_owned();
    wait_jobs(
        &small,
        std::slice::from_ref(&id),
        Duration::from_secs(60),
        |v| v[0]["state"] == "completed",
    )
    .await;
    let ahead = completed_of(&server, &big.id).await;
    println!("the small tenant's job completed after {ahead} of the big tenant's 3000");
    assert!(ahead < 1000, "{ahead} of the big backlog went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_never_see_store_error_text() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(json!({"down": true})),
        )
        .await;
    let mut answers: Vec<Value> = Vec::new();
    answers.push(wa.send_to("s", &b.address, json!({})).await);
    wa.send(json!({"type": "sync", "id": "y", "after_seq": 0}))
        .await;
    answers.push(wa.recv_type("error").await);
    wa.send(json!({"type": "receipt", "id": "r", "message_ids": ["m_x"], "status": "read"}))
        .await;
    answers.push(wa.recv_type("error").await);
    for answer in &answers {
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    // Over REST: what the cache holds is still served (the device), the rest refused.
    let (status, device) = t.call("GET", &format!("/v1/devices/{}", a.id), None).await;
    assert_eq!(status, 200, "{device}");
    let (status, history) = t
        .call("GET", &format!("/v1/devices/{}/messages", a.id), None)
        .await;
    assert_eq!(status, 503, "{history}");
    answers.push(history);
    for answer in &answers {
        let text = answer.to_string();
        assert!(
            !text.contains("INJECTED"),
            "internal error text reached a client: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_must_match_exactly() {
    let server = TestServer::start().await;
    let token = server.admin_token.clone();
    for wrong in [
        format!("{token}x"),
        token[..token.len() - 1].to_owned(),
        format!("{}X", &token[..token.len() - 1]),
        String::new(),
    ] {
        let (status, _) = server.call("GET", "/admin/tree", Some(&wrong), None).await;
        assert_eq!(status, 401, "{wrong:?}");
    }
    let (status, _) = server.call("GET", "/admin/tree", Some(&token), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_pruned_and_still_counted() {
    let server = TestServer::start_with(|c| c.job_retention_secs = 1).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let (status, res) = bulk(
        &t,
        json!({"device": a.id, "to": [b.address, b.address, "+19990000001"], "body": {"p": 1}}),
    )
    .await;
    assert_eq!(status, 202);
    let ids: Vec<String> = res["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    wait_jobs(&t, &ids, Duration::from_secs(30), |v| {
        v.iter()
            .all(|j| j["state"] == "completed" || j["state"] == "failed")
    })
    .await;
    // Pruned after their retention: gone from the API…
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = t.call("GET", &format!("/v1/jobs/{}", ids[0]), None).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "job not pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let (status, _) = t.call("GET", &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(status, 404);
    }
    // …but still counted by the statistics.
    let (_, stats) = server
        .call(
            "GET",
            "/admin/queues/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    let mine = &stats["tenants"][&t.id];
    assert_eq!(mine["completed"], 2, "{stats}");
    assert_eq!(mine["failed"], 1, "{stats}");
}
