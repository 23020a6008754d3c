//! The node's lease under a slow store: slow job-claim upkeep must not make a live node
//! lapse, while a slow lease renewal must. One in-process node on the run's MongoDB and
//! Redis, with store delays injected through the test hooks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{mongodb_uri, redis_url, unique_name, TestServer};

/// Lease of the test node (ms); the heartbeat is a tenth of it.
const LEASE_MS: u64 = 1500;
/// How long each delayed store call is held: past the lease.
const HOLD_MS: u64 = 2 * LEASE_MS;

async fn start_node() -> TestServer {
    let name = unique_name();
    TestServer::start_with(|c| {
        c.mongodb_uri = Some(mongodb_uri());
        c.mongodb_database = Some(name.clone());
        c.redis_url = Some(redis_url());
        c.redis_prefix = name;
        c.cluster_heartbeat_ms = LEASE_MS / 10;
        c.cluster_lease_ms = LEASE_MS;
        c.cluster_skew_ms = LEASE_MS / 10;
    })
    .await
}

async fn delay(server: &TestServer, op: &str, ms: u64) {
    let (status, body) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(json!({"delays": {op: ms}})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

/// Completed calls of store operation `op` since start.
async fn calls(server: &TestServer, op: &str) -> u64 {
    let (status, body) = server
        .call("GET", "/admin/db/stats", Some(&server.admin_token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == op)
        .map_or(0, |o| o["calls"].as_u64().unwrap())
}

/// Lapses counted in `/metrics` (0 while the counter was never touched).
async fn lapses(server: &TestServer) -> u64 {
    let text = server.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with("switchboard_cluster_lease_lapses_total"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_job_claim_upkeep_does_not_lapse_the_node() {
    let server = start_node().await;
    let tenant = server.tenant().await;
    let (a, b) = (tenant.device().await, tenant.device().await);
    let mut wa = tenant.connect(&a).await;
    let mut wb = tenant.connect(&b).await;

    // Each renewal of the node's job claims now takes twice the lease. Three of them
    // (each also holding back the dead-node pass of the same loop) span four leases.
    delay(&server, "renew_job_claims", HOLD_MS).await;
    let before = calls(&server, "renew_job_claims").await;
    wait_for(
        "three held claim renewals",
        Duration::from_millis(HOLD_MS * 6),
        async || calls(&server, "renew_job_claims").await >= before + 3,
    )
    .await;
    assert_eq!(lapses(&server).await, 0, "the node lapsed");
    // Both connections are still open and messages flow.
    let ack = wa.send_to("m1", &b.address, json!({"text": "hi"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got: Value = wb.recv_type("message").await;
    assert_eq!(got["body"]["text"], "hi", "{got}");

    // The control: the lease renewal itself held past the lease does make it lapse,
    // and the node closes its connections with 1012.
    delay(&server, "renew_job_claims", 0).await;
    delay(&server, "renew_node", HOLD_MS).await;
    assert_eq!(wa.expect_close().await, 1012);
    wait_for("the lapse counted", Duration::from_secs(10), async || {
        lapses(&server).await >= 1
    })
    .await;
}
