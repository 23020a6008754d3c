//! The bulk queue is shared by the nodes: a job runs once, on one node, under a lease;
//! a dead node's jobs are reclaimed; status, cancel and lane pauses work from any node.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::common::{call, Device, Tenant};
use crate::harness::{inbox_checked, Cluster, ADMIN};

async fn admin(cluster: &Cluster, node: usize, method: &str, path: &str) -> (u16, Value) {
    call(
        &cluster.http,
        &cluster.node(node).base,
        method,
        path,
        Some(ADMIN),
        None,
    )
    .await
}

async fn queue_stats(cluster: &Cluster, node: usize) -> Value {
    let (s, st) = admin(cluster, node, "GET", "/admin/queues/stats").await;
    assert_eq!(s, 200, "{st}");
    st
}

async fn completed(cluster: &Cluster, node: usize) -> u64 {
    queue_stats(cluster, node).await["completed"]
        .as_u64()
        .unwrap()
}

async fn wait_completed(cluster: &Cluster, node: usize, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stats = queue_stats(cluster, node).await;
        let done = stats["completed"].as_u64().unwrap();
        if done >= n {
            return;
        }
        // On a timeout, say where the jobs are (waiting, delayed, active, per lane).
        assert!(
            Instant::now() < deadline,
            "{done} of {n} jobs completed; queue {stats}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bulk(tenant: &Tenant, from: &Device, to: &Device, n: usize) -> Vec<String> {
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"device": from.id, "to": to.address, "body": {"n": i}}))
        .collect();
    let (s, answer) = tenant
        .call(
            "POST",
            "/v1/messages/bulk",
            Some(json!({ "messages": messages })),
        )
        .await;
    assert_eq!(s, 202, "{answer}");
    answer["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every job's message exactly once in `to`'s inbox, in a gap-free inbox.
async fn exactly_once(cluster: &Cluster, tenant: &Tenant, to: &Device, node: usize, n: usize) {
    let got = inbox_checked(cluster, tenant, to, node).await;
    let bodies: HashSet<u64> = got
        .iter()
        .map(|m| m["body"]["n"].as_u64().unwrap())
        .collect();
    eprintln!(
        "queue: {n} jobs, {} messages, {} distinct",
        got.len(),
        bodies.len()
    );
    assert_eq!(got.len(), n, "a job ran twice or not at all");
    assert_eq!(bodies.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_shared_across_nodes() {
    let cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let a = t.device().await;
    let b = t.device().await;

    // A lane paused through node 1 holds on node 0 too.
    let (s, body) = admin(&cluster, 1, "POST", "/admin/queues/lanes/normal/pause").await;
    assert_eq!(s, 200, "{body}");
    let ids = bulk(&t, &a, &b, 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        completed(&cluster, 0).await,
        0,
        "a paused lane ran\n{}",
        cluster.logs()
    );
    // Status from the other node.
    let (s, view) = cluster
        .via(&t, 1)
        .call("GET", &format!("/v1/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["state"], "waiting", "{view}");
    // Cancel through node 1 a job queued through node 0.
    let (s, view) = cluster
        .via(&t, 1)
        .call("DELETE", &format!("/v1/jobs/{}", ids[39]), None)
        .await;
    assert_eq!(s, 200, "{view}");

    let (s, body) = admin(&cluster, 0, "POST", "/admin/queues/lanes/normal/resume").await;
    assert_eq!(s, 200, "{body}");
    wait_completed(&cluster, 1, 39, Duration::from_secs(60)).await;
    let (_, view) = cluster
        .via(&t, 0)
        .call("GET", &format!("/v1/jobs/{}", ids[39]), None)
        .await;
    assert_eq!(view["state"], "cancelled", "{view}");
    let (_, view) = cluster
        .via(&t, 1)
        .call("GET", &format!("/v1/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(view["state"], "completed", "{view}");
    exactly_once(&cluster, &t, &b, 0, 39).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_jobs_are_reclaimed_and_run_once() {
    const N: usize = 600;
    let mut cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    // The sender's session lives on node 0, which dies part way.
    let _wa = cluster.connect(&t, &a, 0).await;
    let _ids = bulk(&t, &a, &b, N).await;
    wait_completed(&cluster, 1, 40, Duration::from_secs(30)).await;
    let before = completed(&cluster, 1).await;
    assert!(
        before < N as u64,
        "all done before the kill: nothing to prove"
    );
    cluster.signal(0, "KILL");
    cluster.reap(0).await;
    wait_completed(&cluster, 1, N as u64, Duration::from_secs(60)).await;
    eprintln!("queue: {before} of {N} jobs completed before SIGKILL");
    exactly_once(&cluster, &t, &b, 1, N).await;
}
