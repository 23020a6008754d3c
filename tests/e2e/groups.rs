//! Group membership changes are atomic in the store (concurrent adds are all kept) and
//! every cache of membership follows at once (a removed member stops receiving).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::common::{address, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_member_adds_are_all_kept() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let (status, group) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": []})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let added: Vec<String> = (0..20).map(|_| address()).collect();
    let calls = added.iter().map(|m| {
        let t = t.clone();
        let path = format!("/v1/groups/{gid}/members");
        let body = json!({ "members": [m] });
        async move { t.call("POST", &path, Some(body)).await }
    });
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
    }
    let (_, group) = t.call("GET", &format!("/v1/groups/{gid}"), None).await;
    let members: HashSet<&str> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let expected: HashSet<&str> = added.iter().map(String::as_str).collect();
    assert_eq!(members, expected, "lost adds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_receiving_at_once() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let c = t.device().await;
    let (_, group) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address, c.address]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let mut wc = t.connect(&c).await;
    // The group is cached by the first send.
    wa.send(json!({"type": "send", "id": "1", "group": gid, "body": {"n": 1}}))
        .await;
    assert_eq!(wa.answer("1").await["type"], "ack");
    wb.recv_type("message").await;
    wc.recv_type("message").await;
    // C is removed; the very next send reaches B only.
    let (status, body) = t
        .call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", c.address),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wa.send(json!({"type": "send", "id": "2", "group": gid, "body": {"n": 2}}))
        .await;
    assert_eq!(wa.answer("2").await["type"], "ack");
    let got = wb.recv_type("message").await;
    assert_eq!(got["body"], json!({"n": 2}));
    // The ack means every recipient's row was written: C has none for message 2.
    let (_, history) = t
        .call("GET", &format!("/v1/devices/{}/messages", c.id), None)
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "{history}");
    assert!(wc.try_recv(Duration::from_millis(100)).await.is_none());
    // Added back: it receives again, at once.
    let (status, _) = t
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(json!({"members": [c.address]})),
        )
        .await;
    assert_eq!(status, 200);
    wa.send(json!({"type": "send", "id": "3", "group": gid, "body": {"n": 3}}))
        .await;
    assert_eq!(wa.answer("3").await["type"], "ack");
    assert_eq!(wc.recv_type("message").await["body"], json!({"n": 3}));
}
