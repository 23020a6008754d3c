//! The background work of a cluster node, in two loops so that a slow store call of
//! one never delays the other:
//! - the **heartbeat**: the node's lease, the registry, noticing nodes that died, and
//!   the rejoin after a lapse;
//! - the **job claims**: renewing the leases of this node's job claims and putting
//!   back dead nodes' claims. These calls touch up to `queue_concurrency` jobs each and
//!   can take seconds on a loaded store; were they in the heartbeat, they would hold
//!   back the next renewal of the node's lease and make a live node lapse.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use protocol::error::close;

use super::Beat;
use crate::clock::now_ms;
use crate::device::DeviceMsg;
use crate::store::NodeLoad;
use crate::Env;

/// Passes of the job-claims loop between two passes taking back lapsed job claims.
const RECLAIM_EVERY: u32 = 5;
/// Renewals of this node's job claims within one job lease (at most one per heartbeat).
const RENEWALS_PER_LEASE: u32 = 5;

/// Starts the node's background work (until the environment is dropped).
pub fn spawn(env: &Arc<Env>) {
    if env.cluster.is_none() {
        return;
    }
    spawn_heartbeat(env);
    spawn_job_claims(env);
}

/// What a loop of the node needs: the environment (weak: the loop ends with it), the
/// cluster, and a ticker of the heartbeat period that does not bunch up missed ticks.
fn every_heartbeat(
    env: &Arc<Env>,
) -> Option<(Weak<Env>, Arc<super::Cluster>, tokio::time::Interval)> {
    let cluster = env.cluster.clone()?;
    let mut tick = tokio::time::interval(cluster.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some((Arc::downgrade(env), cluster, tick))
}

/// The lease heartbeat: renews the node's lease, reads the registry, tells the
/// connection layer about nodes that died.
fn spawn_heartbeat(env: &Arc<Env>) {
    let Some((weak, cluster, mut tick)) = every_heartbeat(env) else {
        return;
    };
    tokio::spawn(async move {
        let mut alive: HashSet<String> = HashSet::new();
        loop {
            tick.tick().await;
            let Some(env) = weak.upgrade() else {
                return;
            };
            let load = NodeLoad {
                connections: env.stats.connections.load(Ordering::Relaxed),
                sessions: env.directory.running_count() as u64,
                draining: env.stats.draining.load(Ordering::Relaxed),
            };
            if cluster.membership.beat(load).await == Beat::Lapsed {
                rejoin(&env);
            }
            if cluster.membership.refresh().await.is_ok() {
                let now = live_nodes(&cluster);
                for gone in alive.difference(&now) {
                    tracing::warn!(node = %gone, "node gone (its lease ran out)");
                    cluster.node_gone(gone);
                }
                alive = now;
            }
        }
    });
}

/// The registered nodes whose lease holds, as this node last read the registry.
fn live_nodes(cluster: &super::Cluster) -> HashSet<String> {
    cluster
        .membership
        .nodes()
        .into_iter()
        .filter(|n| cluster.membership.alive(&n.id))
        .map(|n| n.id)
        .collect()
}

/// The job claims: renews this node's, and puts back those of dead nodes (once per
/// dead node, from the registry the heartbeat keeps) and any whose lease ran out.
fn spawn_job_claims(env: &Arc<Env>) {
    let Some((weak, cluster, mut tick)) = every_heartbeat(env) else {
        return;
    };
    // A claim's lease is `RENEWALS_PER_LEASE` renewal periods long: renewing it every
    // heartbeat would be an `update_many` over every active job several times a second,
    // for nothing (on the single-threaded test store it starved the sends).
    let renew_every = (env.settings.job_lease / RENEWALS_PER_LEASE).max(cluster.settings.heartbeat);
    tokio::spawn(async move {
        // Dead nodes whose job claims were put back (once each).
        let mut released: HashSet<String> = HashSet::new();
        let mut passes: u32 = 0;
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let Some(env) = weak.upgrade() else {
                return;
            };
            passes = passes.wrapping_add(1);
            // Every dead node in the registry (also one that died before this node
            // started): its job claims go back now rather than when their lease runs
            // out (a job's send is idempotent by job id, and only the claim's owner
            // may finish it, so a node that was only paused does no harm).
            let now = live_nodes(&cluster);
            for node in cluster.membership.nodes() {
                if now.contains(&node.id) || released.contains(&node.id) {
                    continue;
                }
                // The view may be stale (the heartbeat's last read failed): read the
                // registry again before taking a node for dead.
                if cluster.membership.alive_fresh(&node.id).await {
                    continue;
                }
                released.insert(node.id.clone());
                match env.store.release_job_claims(&node.id).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(node = %node.id, jobs = n, "jobs of a dead node put back in the queue");
                        env.dispatcher.wake();
                    }
                    Err(e) => {
                        released.remove(&node.id);
                        tracing::warn!(error = %e, "could not put a dead node's jobs back");
                    }
                }
            }
            released.retain(|id| !now.contains(id));
            if last_renewal.is_none_or(|t| t.elapsed() >= renew_every) {
                let started = tokio::time::Instant::now();
                let lease =
                    i64::try_from(env.settings.job_lease.as_millis()).unwrap_or(i64::MAX / 4);
                match env
                    .store
                    .renew_job_claims(cluster.me(), now_ms() + lease)
                    .await
                {
                    Ok(_) => last_renewal = Some(started),
                    Err(e) => tracing::warn!(error = %e, "could not renew job claims"),
                }
            }
            if passes.is_multiple_of(RECLAIM_EVERY) {
                let skew = i64::try_from(cluster.settings.skew.as_millis()).unwrap_or(0);
                match env.store.reclaim_jobs(now_ms() - skew).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(jobs = n, "jobs of dead nodes put back in the queue");
                        env.dispatcher.wake();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not reclaim jobs"),
                }
            }
        }
    });
}

/// The lease lapsed: this node may no longer own anything it held. Every connection is
/// closed (1012, clients reconnect), every session stops without releasing its device,
/// and ownership is learned again.
pub fn rejoin(env: &Arc<Env>) {
    let Some(cluster) = &env.cluster else {
        return;
    };
    cluster.ownership.forget_all();
    cluster.conns.close_all(close::RESTARTING);
    let stopped = env.directory.stop_all(|s| {
        let _ = s.cast(DeviceMsg::Kick(close::RESTARTING));
        s.stop(Some("node rejoined".into()));
    });
    tracing::warn!(
        sessions = stopped,
        "rejoined: sessions stopped, connections closed"
    );
}
