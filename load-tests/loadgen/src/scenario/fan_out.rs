//! `fan-out`: groups of `--group-size` members (`POST /v1/groups`, at most 1,024
//! members), every member connected; the first `--senders-per-group` members of each
//! group send group messages, `--rate` group sends per second in all. Each send calls
//! for one delivery per other connected member; the report gives deliveries per
//! second, end-to-end latency of the deliveries, lost deliveries and the server's CPU
//! per delivery. A group send costs one unit of every rate budget per recipient.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::{apis, new_stats, new_tenant, preflight, server_rss, sources, us_per, Output};
use crate::cli::{Args, FanOutOpts};
use crate::conn::{address_of, index_of, Phase, Route};
use crate::fleet::{self, Server};
use crate::report::{round, tally, Rss, Traffic};
use crate::server::ServerCosts;
use crate::window::{self, Window};

/// The report.
#[derive(Debug, Serialize)]
struct FanOutReport {
    scenario: &'static str,
    url: String,
    groups: usize,
    group_size: usize,
    senders_per_group: usize,
    /// Group sends per second offered.
    rate: f64,
    duration_s: f64,
    warmup_s: f64,
    body_bytes: usize,
    connections: usize,
    connect_failures: usize,
    /// Sending members connected.
    senders: usize,
    /// The measured window: `acked` counts group sends, `expected` / `delivered` /
    /// `lost` count deliveries.
    #[serde(flatten)]
    traffic: Traffic,
    /// Server CPU µs per delivery (with --server-pid).
    cpu_us_per_delivery: Option<f64>,
    /// Server CPU µs per group send.
    cpu_us_per_send: Option<f64>,
    server_costs: ServerCosts,
    server_rss: Rss,
    disconnects: std::collections::BTreeMap<String, u64>,
}

impl FanOutReport {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "=== loadgen fan-out report ({}) ===", self.url);
        let _ = writeln!(
            s,
            "{} groups of {} ({} sending per group); {} group sends/s; {} s (+{} s warm-up); body {} B",
            self.groups, self.group_size, self.senders_per_group, self.rate, self.duration_s, self.warmup_s, self.body_bytes
        );
        let _ = writeln!(
            s,
            "connections      {} opened, {} failed; {} senders",
            self.connections, self.connect_failures, self.senders
        );
        let t = &self.traffic;
        let _ = writeln!(
            s,
            "group sends      {} sent, {} acked, {} unacked, {} refused{}",
            t.sent,
            t.acked,
            t.unacked,
            t.errored,
            tally(&t.errors)
        );
        let _ = writeln!(
            s,
            "deliveries       {} expected, {} delivered, {} lost  ({:.0}/s)",
            t.expected, t.delivered, t.lost, t.deliveries_per_sec
        );
        let _ = writeln!(s, "ack latency      {}", t.ack_latency.human());
        let _ = writeln!(
            s,
            "e2e latency      {}  (per delivery)",
            t.e2e_latency.human()
        );
        self.server_costs.human(&mut s);
        if let Some(c) = self.cpu_us_per_delivery {
            let _ = writeln!(s, "CPU/delivery     {c:.1} µs of server CPU per delivery");
        }
        self.server_rss.human(&mut s);
        if !self.disconnects.is_empty() {
            let _ = writeln!(s, "disconnects      {}", tally(&self.disconnects));
        }
        s
    }
}

/// Runs the fan-out scenario.
pub async fn run(args: &Args, o: &FanOutOpts) -> Result<Output> {
    let size = o.group_size;
    let groups = args.devices() / size;
    let devices = groups * size;
    if devices != args.devices() {
        eprintln!("note: {devices} devices ({groups} whole groups of {size})");
    }
    preflight(args, devices);
    let rss_before = server_rss(args);
    let apis = apis(args)?;
    let tenant = new_tenant(args, &apis[0]).await?;
    let key = tenant.api_key.clone();
    // Groups first (members are addresses; the devices come next).
    let api = &apis[0];
    let ids: Vec<Arc<str>> = stream::iter(0..groups)
        .map(|g| {
            let members: Vec<String> = (g * size..(g + 1) * size).map(address_of).collect();
            let key = key.clone();
            async move {
                api.create_group(&key, &format!("lg group {g}"), &members)
                    .await
                    .map(|id| Arc::<str>::from(id.as_str()))
            }
        })
        .buffered(16)
        .try_collect()
        .await
        .context("creating the groups")?;
    eprintln!("created {groups} groups of {size}");
    let fanouts: Vec<Arc<AtomicU64>> = (0..groups).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let route = |i: usize| Route::Group {
        id: ids[i / size].clone(),
        fanout: fanouts[i / size].clone(),
        sender: i % size < o.senders_per_group,
    };
    let server = Server::Switchboard {
        apis: apis.clone(),
        api_key: key,
    };
    let stats = new_stats()?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let conns = fleet::connect_all(
        args,
        &server,
        devices,
        route,
        fleet::spawn_live(phase_rx, stats.clone()),
    )
    .await;
    let mut connected = vec![0u64; groups];
    let mut senders = 0;
    for p in &conns.peers {
        if let Some(i) = index_of(&p.address) {
            connected[i / size] += 1;
            if i % size < o.senders_per_group {
                senders += 1;
            }
        }
    }
    for (f, n) in fanouts.iter().zip(&connected) {
        f.store(n.saturating_sub(1), Relaxed);
    }
    if senders == 0 {
        bail!("no sending member could connect");
    }
    let rss_connected = server_rss(args);
    let win = Window::from_args(args, args.rate(), senders);
    let out = window::run(
        &win,
        apis[0].client(),
        &sources(args),
        conns.peers.clone(),
        &phase_tx,
        &stats,
    )
    .await;
    stats.freeze();
    let rss_end = server_rss(args);
    phase_tx.send_replace(Phase::Close);
    let connections = conns.opened();
    fleet::close_all(conns.handles).await;
    let (traffic, _) = Traffic::collect(&stats, args.duration(), out.drain_secs)?;
    let costs = ServerCosts::between(&out.before, &out.after, traffic.acked);
    let report = FanOutReport {
        scenario: "fan-out",
        url: args.url_list(),
        groups,
        group_size: size,
        senders_per_group: o.senders_per_group,
        rate: args.rate(),
        duration_s: args.duration(),
        warmup_s: args.warmup(),
        body_bytes: args.body_bytes,
        connections,
        connect_failures: devices - connections,
        senders,
        cpu_us_per_delivery: us_per(costs.cpu_secs, traffic.delivered),
        cpu_us_per_send: us_per(costs.cpu_secs, traffic.acked),
        traffic,
        server_costs: costs,
        server_rss: Rss {
            before_kib: rss_before,
            connected_kib: rss_connected,
            end_kib: rss_end,
            per_connection_kib: match (rss_before, rss_connected) {
                (Some(b), Some(c)) if connections > 0 => {
                    Some(round((c as f64 - b as f64) / connections as f64, 2))
                }
                _ => None,
            },
        },
        disconnects: stats.disconnects(),
    };
    Output::of(&report, report.human())
}
