//! Any node serves anything: messages, receipts and typing cross nodes, a device may
//! be connected to several nodes at once, REST works on any node.

use serde_json::json;

use crate::harness::{inbox_checked, Cluster};

/// The next frame of `kind` on `ws`.
async fn next_of(ws: &mut crate::common::Ws, kind: &str) -> serde_json::Value {
    ws.recv_type(kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_receipts_and_typing_cross_nodes() {
    let cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    // `a` on node 0; `b` on node 1 and on node 0 at once.
    let mut wa = cluster.connect(&t, &a, 0).await;
    let mut wb1 = cluster.connect(&t, &b, 1).await;
    let mut wb0 = cluster.connect(&t, &b, 0).await;

    let ack = wa.send_to("m1", &b.address, json!({"n": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}\n{}", cluster.logs());
    for ws in [&mut wb1, &mut wb0] {
        let m = next_of(ws, "message").await;
        assert_eq!(m["message_id"], ack["message_id"]);
        assert_eq!(m["from"], a.address.as_str());
        assert_eq!(m["body"], json!({"n": 1}));
    }

    // A receipt from `b`'s node-1 connection reaches `a` on node 0 and `b`'s other
    // connection.
    wb1.send(json!({"type": "receipt", "id": "r1", "message_ids": [ack["message_id"]], "status": "read"}))
        .await;
    let status = next_of(&mut wa, "status").await;
    assert_eq!(status["message_id"], ack["message_id"]);
    assert_eq!(status["status"], "read");
    assert_eq!(status["by"], b.address.as_str());

    // Typing crosses nodes too (not stored).
    wa.send(json!({"type": "typing", "to": b.address, "state": "composing"}))
        .await;
    for ws in [&mut wb1, &mut wb0] {
        let typing = next_of(ws, "typing").await;
        assert_eq!(typing["from"], a.address.as_str());
        assert_eq!(typing["state"], "composing");
    }

    // The other way, through REST on node 1 for a device connected to node 0.
    let (s, body) = cluster
        .via(&t, 1)
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", b.id),
            Some(json!({"to": a.address, "body": {"n": 2}})),
        )
        .await;
    assert_eq!(s, 201, "{body}\n{}", cluster.logs());
    let m = next_of(&mut wa, "message").await;
    assert_eq!(m["message_id"], body["message_id"]);

    // Idempotency by client request id holds whichever node the retry lands on.
    let again = wb0.send_to("m1-b", &a.address, json!({"n": 3})).await;
    let retry = wb1.send_to("m1-b", &a.address, json!({"n": 3})).await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(retry["message_id"], again["message_id"], "{retry}");

    // Everything durable, gap-free, found from either node.
    let inbox_a = inbox_checked(&cluster, &t, &a, 1).await;
    let bodies: Vec<&serde_json::Value> = inbox_a.iter().map(|m| &m["body"]).collect();
    assert_eq!(
        bodies,
        [&json!({"n": 1}), &json!({"n": 2}), &json!({"n": 3})]
    );
    let inbox_b = inbox_checked(&cluster, &t, &b, 0).await;
    assert_eq!(inbox_b.len(), 3, "{inbox_b:?}");

    // A message status is readable on any node.
    let (s, st) = cluster
        .via(&t, 1)
        .call(
            "GET",
            &format!(
                "/v1/devices/{}/messages/{}",
                a.id,
                ack["message_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, 200, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_members_on_every_node() {
    let cluster = Cluster::start(3).await;
    let t = cluster.tenant().await;
    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(t.device().await);
    }
    let (s, g) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": members.iter().map(|d| d.address.clone()).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let group = g["group_id"].as_str().unwrap().to_owned();
    let mut conns = Vec::new();
    for (i, d) in members.iter().enumerate() {
        conns.push(cluster.connect(&t, d, i % 3).await);
    }
    conns[0]
        .send(json!({"type": "send", "id": "g1", "group": group, "body": {"hi": 1}}))
        .await;
    let ack = conns[0].answer("g1").await;
    assert_eq!(ack["type"], "ack", "{ack}\n{}", cluster.logs());
    for ws in conns.iter_mut().skip(1) {
        let m = ws.recv_type("message").await;
        assert_eq!(m["message_id"], ack["message_id"]);
        assert_eq!(m["group"], group.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_shows_every_node_and_each_devices_owner() {
    let cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let a = t.device().await;
    let mut wa = cluster.connect(&t, &a, 1).await;
    let view = cluster.view(0).await;
    assert_eq!(view["mode"], "cluster", "{view}");
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{view}");
    assert!(nodes.iter().all(|n| n["alive"] == true), "{view}");
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    let one = cluster.view(1).await;
    let node1 = one["node"].as_str().unwrap().to_owned();
    assert!(ids.contains(&node1.as_str()), "{view}");
    let (s, owner) = crate::common::call(
        &cluster.http,
        &cluster.node(0).base,
        "GET",
        &format!("/admin/cluster/devices/{}", a.id),
        Some(crate::harness::ADMIN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{owner}");
    assert_eq!(owner["node"], node1.as_str(), "{owner}");
    assert_eq!(owner["node_alive"], true);
    assert_eq!(owner["running_here"], false);
    // Its connection shows on node 1 within a heartbeat.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = cluster.view(0).await;
        let n1 = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == node1.as_str())
            .cloned()
            .unwrap();
        if n1["connections"] == 1 && n1["sessions"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The live page's tree carries the same view (its Cluster card renders it).
    let (s, tree) = crate::common::call(
        &cluster.http,
        &cluster.node(0).base,
        "GET",
        "/admin/tree",
        Some(crate::harness::ADMIN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{tree}");
    assert_eq!(tree["cluster"]["mode"], "cluster");
    assert_eq!(
        tree["cluster"]["nodes"].as_array().unwrap().len(),
        2,
        "{}",
        tree["cluster"]
    );

    // Actions through node 0 on a session node 1 runs: a restart closes its clients
    // with 1012, a disconnect with 4001.
    let admin = |path: String| {
        let http = cluster.http.clone();
        let base = cluster.node(0).base.clone();
        async move {
            crate::common::call(
                &http,
                &base,
                "POST",
                &path,
                Some(crate::harness::ADMIN),
                None,
            )
            .await
        }
    };
    let (s, body) = admin(format!("/admin/devices/{}/restart", a.id)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["node"], node1.as_str(), "{body}");
    assert_eq!(wa.expect_close().await, 1012);
    let mut wa = cluster.connect(&t, &a, 1).await;
    wa.ping("p").await;
    let (s, body) = admin(format!("/admin/devices/{}/disconnect", a.id)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(wa.expect_close().await, 4001);
}
