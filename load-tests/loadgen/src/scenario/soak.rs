//! `soak`: a long 1:1 run (default 600 s at 5,000 msg/s over 1,000 devices) with
//! connection churn, watching the server for growth.
//!
//! While sending, each device leaves at random times (on average `--churn` of the
//! devices per `--churn-interval`), stays offline `--offline` s, reconnects with its
//! token and `sync`s from the last seq it saw up to its new `ready`'s `last_seq`
//! (what arrives above that comes live), then goes on sending. No device leaves in
//! the last `--calm-end` s, so all are back for the drain. Messages sent to a device
//! while it is away are acked and reach it through the sync: `delivered` counts them
//! (`delivered_sync`), `lost` is what reached its recipient neither way.
//!
//! Every `--sample-every` s the server's RSS, open fds, threads and its
//! `switchboard_connections`, `switchboard_sessions_running` and
//! `switchboard_persist_backlog_rows` gauges are sampled; the report gives each
//! series' first, last, min, max and slope per minute.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{apis, new_stats, new_tenant, preflight, sources, us_per, Output};
use crate::cli::{Args, SoakOpts};
use crate::conn::frames::{self, SbCodec};
use crate::conn::{self, End, Leave, Phase, Route};
use crate::fleet::{self, Opened, Server};
use crate::report::{round, tally, Traffic};
use crate::sampler::{Sample, Sampler, Summary};
use crate::server::ServerCosts;
use crate::stats::Stats;
use crate::window::{self, Window};

/// Reconnect attempts before a device gives up.
const RECONNECT_TRIES: u32 = 5;

/// The churn of one run, shared by the device tasks.
struct Churn {
    /// (from, until): devices leave only between these (set as sending starts).
    window: OnceLock<(Instant, Instant)>,
    /// Mean seconds between two leaves of one device.
    mean_gap: f64,
    offline: Duration,
    left: AtomicU64,
    reconnected: AtomicU64,
    reconnect_failures: AtomicU64,
    gave_up: AtomicU64,
    broken: AtomicU64,
}

impl Churn {
    /// When a device connected at `now` leaves next.
    fn decide(&self, now: Instant) -> Leave {
        if self.mean_gap <= 0.0 || !self.mean_gap.is_finite() {
            return Leave::Never;
        }
        let Some(&(from, until)) = self.window.get() else {
            return Leave::Recheck(now + Duration::from_millis(500));
        };
        // Exponential gaps: leaves are a Poisson process per device.
        let u: f64 = rand::random::<f64>();
        let gap = -(1.0 - u).ln() * self.mean_gap;
        let at = now.max(from) + Duration::from_secs_f64(gap);
        if at >= until {
            Leave::Never
        } else {
            Leave::At(at)
        }
    }
}

/// The churn figures.
#[derive(Debug, Serialize)]
struct ChurnReport {
    churn: f64,
    churn_interval_s: f64,
    offline_s: f64,
    /// Devices that left on purpose.
    left: u64,
    /// Reconnections that reached `ready`.
    reconnected: u64,
    reconnect_failures: u64,
    /// Devices that gave up after repeated failures.
    gave_up: u64,
    /// Connections that broke without being asked to.
    broken: u64,
    /// Syncs that reached their `ready`'s `last_seq`.
    syncs: u64,
}

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    url: String,
    devices: usize,
    rate: f64,
    duration_s: f64,
    body_bytes: usize,
    connections: usize,
    #[serde(flatten)]
    traffic: Traffic,
    churn: ChurnReport,
    cpu_secs: Option<f64>,
    cpu_us_per_delivered: Option<f64>,
    sampled: Summary,
    samples: Vec<Sample>,
    disconnects: std::collections::BTreeMap<String, u64>,
}

impl Report {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "=== loadgen soak report ({}) ===", self.url);
        let _ = writeln!(
            s,
            "{} devices ({} connected), {} msg/s for {} s, body {} B",
            self.devices, self.connections, self.rate, self.duration_s, self.body_bytes
        );
        self.traffic.human(&mut s);
        let c = &self.churn;
        let _ = writeln!(
            s,
            "churn            {:.0} % per {} s, {} s offline: {} left, {} reconnected ({} failures, {} gave up), {} broke, {} syncs",
            c.churn * 100.0, c.churn_interval_s, c.offline_s, c.left, c.reconnected, c.reconnect_failures, c.gave_up, c.broken, c.syncs
        );
        if let Some(cpu) = self.cpu_secs {
            let _ = writeln!(
                s,
                "server CPU       {cpu:.1} s ({:.1} µs per delivered message)",
                self.cpu_us_per_delivered.unwrap_or(0.0)
            );
        }
        self.sampled.human(&mut s);
        if !self.disconnects.is_empty() {
            let _ = writeln!(s, "disconnects      {}", tally(&self.disconnects));
        }
        s
    }
}

/// A device's whole run: serve, leave when churned, reconnect and sync, until closed.
async fn device_task(
    opened: Opened,
    ws_base: String,
    phase: watch::Receiver<Phase>,
    stats: Arc<Stats>,
    churn: Arc<Churn>,
) {
    let Opened {
        device,
        mut ws,
        token,
        last_seq,
        ..
    } = opened;
    let decide = |now| churn.decide(now);
    let (mut codec, mut first) = (SbCodec::live(last_seq), None);
    loop {
        let end = conn::serve(
            &device,
            ws,
            &codec,
            phase.clone(),
            &stats,
            &decide,
            first.take().into_iter().collect(),
        )
        .await;
        let seen = codec.seen();
        match end {
            End::Closed => return,
            End::Deadline => {
                churn.left.fetch_add(1, Relaxed);
                tokio::time::sleep(churn.offline).await;
            }
            End::Broken => {
                churn.broken.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let mut tries = 0;
        let (next_ws, next_last) = loop {
            if matches!(*phase.borrow(), Phase::Close) {
                return;
            }
            match frames::open(&ws_base, &token).await {
                Ok(v) => break v,
                Err(e) => {
                    churn.reconnect_failures.fetch_add(1, Relaxed);
                    tries += 1;
                    if tries >= RECONNECT_TRIES {
                        churn.gave_up.fetch_add(1, Relaxed);
                        stats.on_disconnect(format!("gave up reconnecting: {e:#}"));
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        churn.reconnected.fetch_add(1, Relaxed);
        (codec, first) = SbCodec::resuming(seen, next_last);
        ws = next_ws;
    }
}

/// Runs the soak.
pub async fn run(args: &Args, o: &SoakOpts) -> Result<Output> {
    preflight(args, args.devices());
    let apis = apis(args)?;
    let tenant = new_tenant(args, &apis[0]).await?;
    let client = apis[0].client().clone();
    let server = Server::Switchboard {
        apis,
        api_key: tenant.api_key,
    };
    let stats = new_stats()?;
    let churn = Arc::new(Churn {
        window: OnceLock::new(),
        mean_gap: if o.churn > 0.0 {
            o.churn_interval / o.churn
        } else {
            0.0
        },
        offline: Duration::from_secs_f64(o.offline),
        left: AtomicU64::new(0),
        reconnected: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        gave_up: AtomicU64::new(0),
        broken: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let ws_bases: Vec<String> = (0..args.nodes()).map(|n| args.ws_base(n)).collect();
    let spawn = {
        let (stats, churn) = (stats.clone(), churn.clone());
        move |opened: Opened| -> JoinHandle<()> {
            let ws_base = ws_bases[opened.device.node].clone();
            tokio::spawn(device_task(
                opened,
                ws_base,
                phase_rx.clone(),
                stats.clone(),
                churn.clone(),
            ))
        }
    };
    let conns = fleet::connect_all(args, &server, args.devices(), |_| Route::Random, spawn).await;
    if conns.opened() < 2 {
        bail!("at least 2 connections are needed");
    }
    let sampler = Sampler::start(
        client.clone(),
        args.urls.clone(),
        args.server_pids.clone(),
        Duration::from_secs_f64(o.sample_every),
    );
    let total = args.warmup() + args.duration();
    let now = Instant::now();
    let calm_from = now + Duration::from_secs_f64((total - o.calm_end).max(0.0));
    let _ = churn.window.set((now, calm_from));
    let win = Window {
        drain_timeout: Duration::from_secs(15),
        progress_every: Duration::from_secs(10),
        ..Window::from_args(args, args.rate(), conns.opened())
    };
    let out = window::run(
        &win,
        &client,
        &sources(args),
        conns.peers.clone(),
        &phase_tx,
        &stats,
    )
    .await;
    stats.freeze();
    let samples = sampler.stop().await;
    phase_tx.send_replace(Phase::Close);
    let connections = conns.opened();
    fleet::close_all(conns.handles).await;
    let (traffic, _) = Traffic::collect(&stats, args.duration(), out.drain_secs)?;
    let costs = ServerCosts::between(&out.before, &out.after, traffic.acked);
    let report = Report {
        scenario: "soak",
        url: args.url_list(),
        devices: args.devices(),
        rate: args.rate(),
        duration_s: args.duration(),
        body_bytes: args.body_bytes,
        connections,
        churn: ChurnReport {
            churn: o.churn,
            churn_interval_s: o.churn_interval,
            offline_s: o.offline,
            left: churn.left.load(Relaxed),
            reconnected: churn.reconnected.load(Relaxed),
            reconnect_failures: churn.reconnect_failures.load(Relaxed),
            gave_up: churn.gave_up.load(Relaxed),
            broken: churn.broken.load(Relaxed),
            syncs: stats.syncs.load(Relaxed),
        },
        cpu_secs: costs.cpu_secs.map(|c| round(c, 2)),
        cpu_us_per_delivered: us_per(costs.cpu_secs, traffic.delivered),
        traffic,
        sampled: Summary::of(&samples),
        samples,
        disconnects: stats.disconnects(),
    };
    Output::of(&report, report.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churn(mean_gap: f64) -> Churn {
        Churn {
            window: OnceLock::new(),
            mean_gap,
            offline: Duration::ZERO,
            left: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            broken: AtomicU64::new(0),
        }
    }

    #[test]
    fn devices_leave_only_inside_the_window() {
        let now = Instant::now();
        assert_eq!(churn(0.0).decide(now), Leave::Never);
        let c = churn(1.0);
        assert!(matches!(c.decide(now), Leave::Recheck(_)));
        let _ = c.window.set((
            now + Duration::from_secs(10),
            now + Duration::from_secs(1000),
        ));
        let mut leaves = 0;
        for _ in 0..100 {
            match c.decide(now) {
                Leave::At(at) => {
                    assert!(at >= now + Duration::from_secs(10));
                    leaves += 1;
                }
                Leave::Never => {}
                Leave::Recheck(_) => panic!("the window is set"),
            }
        }
        assert!(leaves > 90);
        // After the window: never.
        assert_eq!(c.decide(now + Duration::from_secs(2000)), Leave::Never);
    }
}
