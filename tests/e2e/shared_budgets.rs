//! Rate budgets shared by the nodes of a cluster (`docs/cluster.md`, shared budgets):
//! two server nodes on one MongoDB and one Redis grant a tenant's budget once between
//! them, and a device's tier budget goes with the device when another node takes it
//! over. Each test has its own database and key prefix.

use serde_json::{json, Value};

use crate::common::{mongodb_uri, redis_url, unique_name, Tenant, TestServer, Ws};

/// Starts a node of the cluster on `database` and `prefix`.
async fn node(
    database: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut switchboard::config::Config),
) -> TestServer {
    let (database, prefix) = (database.to_owned(), prefix.to_owned());
    TestServer::start_with(move |c| {
        c.mongodb_uri = Some(mongodb_uri());
        c.mongodb_database = Some(database);
        c.redis_url = Some(redis_url());
        c.redis_prefix = prefix;
        c.admin_token = Some("shared-budgets-admin".into());
        tweak(c);
    })
    .await
}

/// The same tenant, reached through `server`.
fn through(t: &Tenant, server: &TestServer) -> Tenant {
    Tenant {
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        ..t.clone()
    }
}

/// Sends `n` messages to `to` one after the other; returns the answers.
async fn send_n(ws: &mut Ws, tag: &str, to: &str, n: usize) -> Vec<Value> {
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        answers.push(ws.send_to(&format!("{tag}-{i}"), to, json!({"i": i})).await);
    }
    answers
}

/// A tenant budget of 5 per minute over two nodes: devices connected to different
/// nodes, sending at the same time, get 5 acks between them, and every other send is
/// refused by the tenant budget (each node alone would grant 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_budget_holds_across_nodes() {
    let (database, prefix) = (unique_name(), unique_name());
    let a = node(&database, &prefix, |c| c.tenant_rate_per_minute = 5).await;
    let b = node(&database, &prefix, |c| c.tenant_rate_per_minute = 5).await;
    let ta = a.tenant().await;
    let tb = through(&ta, &b);
    // A sender and a recipient per node (each recipient's session starts on its
    // sender's node, so the sends need nothing of the other node but the budget).
    let (da, ra) = (ta.device().await, ta.device().await);
    let (db, rb) = (ta.device().await, ta.device().await);
    let mut wa = ta.connect(&da).await;
    let mut wb = tb.connect(&db).await;
    let (answers_a, answers_b) = tokio::join!(
        send_n(&mut wa, "a", &ra.address, 8),
        send_n(&mut wb, "b", &rb.address, 8)
    );
    let acks = |answers: &[Value]| answers.iter().filter(|v| v["type"] == "ack").count();
    let (acked_a, acked_b) = (acks(&answers_a), acks(&answers_b));
    assert_eq!(
        acked_a + acked_b,
        5,
        "acks on A {acked_a}, on B {acked_b}: {answers_a:?} {answers_b:?}"
    );
    for refused in answers_a
        .iter()
        .chain(&answers_b)
        .filter(|v| v["type"] != "ack")
    {
        assert_eq!(refused["code"], "rate_limited", "{refused}");
        assert!(
            refused["message"].as_str().unwrap_or("").contains("tenant"),
            "{refused}"
        );
        let retry = refused["retry_after_ms"].as_u64().unwrap();
        assert!(retry > 1_000 && retry <= 61_000, "{refused}");
    }
    // Only the acked sends were stored.
    for (t, recipient, acked) in [(&ta, &ra, acked_a), (&tb, &rb, acked_b)] {
        let (status, history) = t
            .call(
                "GET",
                &format!("/v1/devices/{}/messages", recipient.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(
            history["items"].as_array().unwrap().len(),
            acked,
            "{history}"
        );
    }
    // Another tenant has its own budget on both nodes.
    let other = b.tenant().await;
    let (x, y) = (other.device().await, other.device().await);
    let mut wx = other.connect(&x).await;
    let ok = wx.send_to("other", &y.address, json!({})).await;
    assert_eq!(ok["type"], "ack", "{ok}");
}

/// A device's budget of 3 normal sends per minute, spent on node A, is still spent
/// when node B takes the device over (A drained): its window did not restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_budget_moves_with_its_device() {
    let (database, prefix) = (unique_name(), unique_name());
    let mut a = node(&database, &prefix, |c| c.rate_limit_normal = 3).await;
    let b = node(&database, &prefix, |c| c.rate_limit_normal = 3).await;
    let ta = a.tenant().await;
    let tb = through(&ta, &b);
    let (d, r) = (ta.device().await, ta.device().await);
    let mut wa = ta.connect(&d).await;
    let answers = send_n(&mut wa, "a", &r.address, 3).await;
    assert!(answers.iter().all(|v| v["type"] == "ack"), "{answers:?}");
    let over = wa.send_to("a-over", &r.address, json!({})).await;
    assert_eq!(over["code"], "rate_limited", "{over}");
    // Node A drains: it releases the device, B takes it at the next connection.
    a.stop().await;
    let mut wb = tb.connect(&d).await;
    let refused = wb.send_to("b-0", &r.address, json!({})).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("normal budget for this device"),
        "{refused}"
    );
    let retry = refused["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 30_000 && retry <= 61_000, "{refused}");
    // Its other tiers were not spent.
    wb.send(
        json!({"type": "send", "id": "b-high", "to": r.address, "body": {}, "priority": "high"}),
    )
    .await;
    let high = wb.answer("b-high").await;
    assert_eq!(high["type"], "ack", "{high}");
}
