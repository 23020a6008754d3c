//! Faults under load, with nothing acked lost and no seq used twice or skipped:
//! SIGKILL, SIGSTOP past the leases, SIGTERM (drain), Redis and MongoDB restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::common::{Device, OwnServer, Tenant};
use crate::harness::{check_found, inbox_checked, Backends, Cluster, Tally, LEASE_MS};
use crate::load::{add, run_sender, Route};

/// Messages per sender.
const PER_SENDER: usize = 60;
/// Every fault test ends within this.
const BOUND: Duration = Duration::from_secs(120);

struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<crate::load::SenderTally>>,
}

impl Load {
    /// Starts one sender per device of `senders`, first connected to `first` and then
    /// to any node of `route`.
    fn start(
        tenant: &Tenant,
        senders: &[Device],
        to: &[Device],
        route: &Route,
        first: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + BOUND - Duration::from_secs(30);
        let tasks = senders
            .iter()
            .map(|s| {
                tokio::spawn(run_sender(
                    tenant.clone(),
                    s.clone(),
                    to.to_vec(),
                    PER_SENDER,
                    route.clone(),
                    first,
                    stop.clone(),
                    acks.clone(),
                    until,
                ))
            })
            .collect();
        Load { stop, acks, tasks }
    }

    /// Waits until `n` sends were acked.
    async fn wait_acked(&self, cluster: &Cluster, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acks.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "load did not get going: {} acked\n{}",
                self.acks.load(Ordering::Relaxed),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts the load is still going (the fault lands in the middle of it).
    fn assert_midway(&self, total: usize) {
        let acked = self.acks.load(Ordering::Relaxed);
        assert!(
            acked < total as u64,
            "the load was over before the fault ({acked} of {total} acked): nothing to prove"
        );
        eprintln!("fault after {acked} of {total} acks");
    }

    /// Waits for every sender to finish (or stops them) and adds up.
    async fn finish(self, stop_now: bool) -> Tally {
        if stop_now {
            self.stop.store(true, Ordering::Relaxed);
        }
        let mut total = Tally::default();
        for t in self.tasks {
            let one = t.await.unwrap();
            if !one.refusals.is_empty() {
                eprintln!("a sender was refused: {:?}", one.refusals);
            }
            if !one.losses.is_empty() {
                eprintln!(
                    "a sender reconnected {} times: {:?}",
                    one.reconnects, one.losses
                );
            }
            add(&mut total, one);
        }
        total
    }
}

async fn devices(tenant: &Tenant, n: usize) -> Vec<Device> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tenant.device().await);
    }
    out
}

/// Senders may connect to these nodes of `cluster`, in turn.
fn route(cluster: &Cluster, nodes: &[usize]) -> Route {
    Route {
        ws_bases: nodes
            .iter()
            .map(|&i| cluster.node(i).ws_base.clone())
            .collect(),
    }
}

/// Every send was acked in the end (retried under its id through the fault).
fn all_acked(tally: &Tally, cluster: &Cluster) {
    assert_eq!(
        tally.acked.len() as u64,
        tally.sent,
        "every send acked in the end\n{}",
        cluster.logs()
    );
}

/// Reads every recipient's inbox through `node` (checked gap-free) and checks the
/// tally against them.
async fn verify(
    label: &str,
    cluster: &Cluster,
    tenant: &Tenant,
    to: &[Device],
    node: usize,
    tally: &Tally,
) {
    let mut inboxes: HashMap<String, Vec<Value>> = HashMap::new();
    for d in to {
        inboxes.insert(
            d.address.clone(),
            inbox_checked(cluster, tenant, d, node).await,
        );
    }
    check_found(label, tally, &inboxes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acked() {
    let mut cluster = Cluster::start(3).await;
    let t = cluster.tenant().await;
    let senders = devices(&t, 6).await;
    let to = devices(&t, 4).await;
    // The recipients' sessions run on node 2, the one that dies.
    let mut held = Vec::new();
    for d in &to {
        held.push(cluster.connect(&t, d, 2).await);
    }
    let route = route(&cluster, &[0, 1]);
    let load = Load::start(&t, &senders, &to, &route, 0);
    load.wait_acked(&cluster, 40).await;
    load.assert_midway(senders.len() * PER_SENDER);
    cluster.signal(2, "KILL");
    let status = cluster.reap(2).await;
    assert!(!status.success());
    drop(held);
    let tally = load.finish(false).await;
    all_acked(&tally, &cluster);
    verify("SIGKILL", &cluster, &t, &to, 1, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_leases_is_fenced() {
    let cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let senders = devices(&t, 4).await;
    let paused_sender = devices(&t, 1).await;
    let to = devices(&t, 3).await;
    // The recipients live on node 1, which is paused; so does one sender.
    let mut held = Vec::new();
    for d in &to {
        held.push(cluster.connect(&t, d, 1).await);
    }
    let on_zero = route(&cluster, &[0]);
    let on_one = route(&cluster, &[1, 0]);
    let load = Load::start(&t, &senders, &to, &on_zero, 0);
    let paused = Load::start(&t, &paused_sender, &to, &on_one, 0);
    load.wait_acked(&cluster, 30).await;
    load.assert_midway(senders.len() * PER_SENDER);
    cluster.signal(1, "STOP");
    // Past its leases: node 0 takes the recipients over (their owner is gone).
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 3)).await;
    let (s, during) = cluster
        .via(&t, 0)
        .call("GET", &format!("/v1/devices/{}", to[0].id), None)
        .await;
    assert_eq!(s, 200, "{during}");
    cluster.signal(1, "CONT");
    // The resumed node must notice it lost its leases: it drops its clients (they
    // reconnect) and writes nothing into the inboxes it no longer owns.
    let tally = load.finish(false).await;
    let mut tally_paused = paused.finish(false).await;
    for held in &mut held {
        let _ = held.try_recv(Duration::from_millis(10)).await;
    }
    drop(held);
    let mut all = tally;
    all.sent += tally_paused.sent;
    all.refused += tally_paused.refused;
    all.acked.append(&mut tally_paused.acked);
    all_acked(&all, &cluster);
    verify("SIGSTOP", &cluster, &t, &to, 0, &all).await;
    // And node 1 serves again after it rejoined.
    verify(
        "SIGSTOP (read through the resumed node)",
        &cluster,
        &t,
        &to,
        1,
        &all,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012_and_loses_nothing() {
    let mut cluster = Cluster::start(2).await;
    let t = cluster.tenant().await;
    let senders = devices(&t, 4).await;
    let to = devices(&t, 3).await;
    // A watcher connected to the draining node sees its close code.
    let watcher = t.device().await;
    let mut watch = cluster.connect(&t, &watcher, 0).await;
    let mut held = Vec::new();
    for d in &to {
        held.push(cluster.connect(&t, d, 1).await);
    }
    let route = route(&cluster, &[0, 1]);
    let load = Load::start(&t, &senders, &to, &route, 0);
    load.wait_acked(&cluster, 30).await;
    let began = Instant::now();
    load.assert_midway(senders.len() * PER_SENDER);
    cluster.signal(0, "TERM");
    assert_eq!(watch.expect_close().await, 1012);
    let status = cluster.reap(0).await;
    let drained_in = began.elapsed();
    assert!(
        status.success(),
        "a drain exits cleanly: {status:?}\n{}",
        cluster.logs()
    );
    // The drained node released its devices at once: the watcher is served by node 1
    // without waiting for a lease to lapse.
    let again = Instant::now();
    let mut w = cluster.connect(&t, &watcher, 1).await;
    w.ping("p").await;
    let reconnect = again.elapsed();
    assert!(
        reconnect < Duration::from_millis(LEASE_MS),
        "reconnect took {reconnect:?}: the devices were not released"
    );
    let tally = load.finish(false).await;
    eprintln!("drain took {drained_in:?}; reconnect to the other node {reconnect:?}");
    all_acked(&tally, &cluster);
    verify("SIGTERM", &cluster, &t, &to, 1, &tally).await;
    drop(held);
}

/// Two nodes on `backends` under load, recipients on node 1; `restart` takes a
/// dependency away and back in the middle. Checks every acked message is found once.
async fn dependency_restart_under_load(
    label: &str,
    backends: Backends,
    restart: impl std::future::Future<Output = ()>,
) -> (Cluster, Tenant, Vec<Device>) {
    let cluster = Cluster::start_on(2, backends, &[]).await;
    let t = cluster.tenant().await;
    let senders = devices(&t, 4).await;
    let to = devices(&t, 3).await;
    let mut held = Vec::new();
    for d in &to {
        held.push(cluster.connect(&t, d, 1).await);
    }
    let route = route(&cluster, &[0, 1]);
    let load = Load::start(&t, &senders, &to, &route, 0);
    load.wait_acked(&cluster, 30).await;
    load.assert_midway(senders.len() * PER_SENDER);
    restart.await;
    let tally = load.finish(false).await;
    all_acked(&tally, &cluster);
    verify(label, &cluster, &t, &to, 0, &tally).await;
    drop(held);
    (cluster, t, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing_acked() {
    let mut redis = OwnServer::redis().await;
    let backends = Backends {
        redis_url: redis.redis_url(),
        ..Backends::shared()
    };
    let restart = async {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.start().await;
    };
    let (cluster, t, to) = dependency_restart_under_load("Redis restart", backends, restart).await;
    // Live delivery across nodes works again.
    let a = t.device().await;
    let mut wa = cluster.connect(&t, &a, 0).await;
    let mut wb = cluster.connect(&t, &to[0], 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ack = loop {
        let ack = wa
            .send_to(
                &format!("after-{}", deadline.elapsed().as_millis()),
                &to[0].address,
                json!({"after": true}),
            )
            .await;
        if ack["type"] == "ack" {
            break ack;
        }
        assert!(Instant::now() < deadline, "{ack}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let m = wb.recv_type("message").await;
        if m["message_id"] == ack["message_id"] {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_restart_under_load_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut nx = OwnServer::nx(&dir.path().join("nx.db")).await;
    let backends = Backends {
        mongodb_uri: nx.mongodb_uri(),
        ..Backends::shared()
    };
    let restart = async {
        nx.kill();
        // Away for longer than a lease: every node loses its leases and must rejoin.
        tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
        nx.start().await;
    };
    dependency_restart_under_load("MongoDB restart", backends, restart).await;
}
