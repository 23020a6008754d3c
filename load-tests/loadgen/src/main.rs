//! `loadgen`: a load generator for the Switchboard server.
//!
//! Creates a tenant and N devices over REST, opens one WebSocket per device, has every
//! connection send 1:1 messages to random other devices so that the total hits a target
//! rate, and reports acks, deliveries, losses, latency percentiles and (optionally) the
//! server's resident memory. With several `--url`s the devices are spread over the
//! nodes of a cluster and the server's figures are summed over them. See `README.md`
//! next to `Cargo.toml`.

mod cli;
mod conn;
mod redis_info;
mod report;
mod server;
mod setup;
mod stats;
mod sys;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::{stream, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::Args;
use crate::conn::{Device, Peer, Phase, Plan, Ws};
use crate::report::{CrossNode, Latency, Params, Report, Rss};
use crate::server::{ServerCosts, Snapshot, Sources};
use crate::setup::Api;
use crate::stats::{now_us, Stats};

/// Longest wait for outstanding acks and deliveries after sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the close handshakes at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct connect-failure messages kept for the summary.
const MAX_FAILURE_KINDS: usize = 20;

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(report) => {
            eprint!("{}", report.human());
            if json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("loadgen: cannot encode the report: {e}"),
                }
            }
            // Connection tasks that did not finish were aborted; do not wait for them.
            runtime.shutdown_timeout(Duration::from_secs(1));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: setup failed: {e:#}");
            runtime.shutdown_timeout(Duration::from_secs(1));
            ExitCode::from(1)
        }
    }
}

/// Server RSS for `--server-pid` (summed over the nodes), if given and readable.
fn server_rss(args: &Args) -> Option<u64> {
    if args.server_pids.is_empty() {
        return None;
    }
    args.server_pids.iter().map(|&pid| sys::rss_kib(pid)).sum()
}

/// Where the server's figures are read from.
fn sources(args: &Args) -> Sources {
    Sources {
        urls: args.urls.clone(),
        pids: args.server_pids.clone(),
        store_pid: args.store_pid,
        redis_port: args.redis_port,
    }
}

/// Warns when the open-files limit cannot hold `devices` connections.
fn check_open_files(devices: usize) {
    let needed = devices as u64 + 64;
    if let (Some(soft), hard) = sys::open_files_limit() {
        if soft < needed {
            let hint = hard.map_or("unlimited".to_owned(), |h| h.to_string());
            eprintln!(
                "warning: open-files limit is {soft} but {devices} connections need about \
                 {needed}; run `ulimit -n {hint}` (hard limit) before loadgen"
            );
        }
    }
}

/// The whole run; errors are setup failures.
async fn run(args: Args) -> Result<Report> {
    check_open_files(args.devices);
    let rss_before = server_rss(&args);
    for &pid in &args.server_pids {
        if sys::rss_kib(pid).is_none() {
            eprintln!("warning: cannot read VmRSS of pid {pid}");
        }
    }
    if args.nodes() > 1 {
        eprintln!(
            "{} nodes: device i connects to node i mod {} ({})",
            args.nodes(),
            args.nodes(),
            args.url_list()
        );
    }

    let api = Api::new(&args.urls[0], args.connect_concurrency)?;
    // One client, one base per node: device i's setup calls go to its own node.
    let apis: Vec<Api> = args.urls.iter().map(|u| api.with_base(u)).collect();
    let name = format!("loadgen-{:08x}", rand::random::<u32>());
    let tenant = api
        .create_tenant(args.admin_token(), &name)
        .await
        .context("creating the tenant")?;
    eprintln!("tenant {name} ({})", tenant.tenant_id);

    let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
    let stats = Arc::new(Stats::new(shards.clamp(4, 64))?);
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);

    let connect_started = Instant::now();
    let conns = connect_all(&args, &apis, &tenant.api_key, &phase_rx, &stats).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connections = conns.handles.len();
    let connect_failures = args.devices - connections;
    eprintln!(
        "connected {connections}/{} in {connect_secs:.1} s ({connect_failures} failed)",
        args.devices
    );
    for (msg, n) in &conns.failures {
        eprintln!("  connect failure x{n}: {msg}");
    }
    if connections == 0 {
        bail!("no connection could be opened");
    }

    if args.hold > 0.0 {
        eprintln!("holding {connections} idle connections for {} s", args.hold);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let rss_connected = server_rss(&args);

    let mut drain_secs = 0.0;
    let mut window = None;
    if args.rate > 0.0 {
        if connections < 2 {
            eprintln!("warning: at least 2 connections are needed to send; not sending");
        } else {
            let (secs, before) = send_phase(&args, &api, conns.addresses, &phase_tx, &stats).await;
            drain_secs = secs;
            let after = Snapshot::take(api.client(), &sources(&args)).await;
            window = Some((before, after));
        }
    }
    // Figures are as of the end of the drain; what arrives while closing is ignored.
    stats.freeze();
    let rss_end = server_rss(&args);

    phase_tx.send_replace(Phase::Close);
    close_all(conns.handles).await;

    build_report(
        &args,
        &stats,
        conns.per_node,
        connect_secs,
        drain_secs,
        window,
        Rss {
            before_kib: rss_before,
            connected_kib: rss_connected,
            end_kib: rss_end,
            per_connection_kib: match (rss_before, rss_connected) {
                (Some(b), Some(c)) => Some((c as f64 - b as f64) / connections as f64),
                _ => None,
            },
        },
    )
}

/// Result of the connect phase.
struct Connections {
    /// One task per open connection.
    handles: Vec<JoinHandle<()>>,
    /// The devices with an open connection.
    addresses: Vec<Peer>,
    /// Open connections per node.
    per_node: Vec<usize>,
    /// Failure messages and their counts.
    failures: BTreeMap<String, u64>,
}

/// Creates device `index` on node `node` (of `nodes`), gets its token and opens its
/// WebSocket there.
async fn connect_one(
    api: &Api,
    api_key: &str,
    ws_base: &str,
    index: usize,
    (node, nodes): (usize, usize),
) -> Result<(Device, Ws)> {
    let address = conn::address_of(index);
    let device_id = api
        .create_device(api_key, &address, &format!("lg {index}"))
        .await?;
    let token = api.create_token(api_key, &device_id).await?;
    let ws = conn::open(ws_base, &token).await?;
    Ok((
        Device {
            index,
            address: address.into(),
            node,
            nodes,
        },
        ws,
    ))
}

/// Sets up all devices, at most `--connect-concurrency` at a time, within
/// `--connect-timeout`; every open connection gets its task right away.
async fn connect_all(
    args: &Args,
    apis: &[Api],
    api_key: &str,
    phase: &watch::Receiver<Phase>,
    stats: &Arc<Stats>,
) -> Connections {
    let nodes = args.nodes();
    let ws_bases: Vec<String> = (0..nodes).map(|n| args.ws_base(n)).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    let mut pending = stream::iter(0..args.devices)
        .map(|i| {
            let node = args.node_of(i);
            connect_one(&apis[node], api_key, &ws_bases[node], i, (node, nodes))
        })
        .buffer_unordered(args.connect_concurrency);
    let mut out = Connections {
        handles: Vec::with_capacity(args.devices),
        addresses: Vec::with_capacity(args.devices),
        per_node: vec![0; nodes],
        failures: BTreeMap::new(),
    };
    let mut failed = 0usize;
    let mut last_progress = Instant::now();
    eprintln!("connecting {} devices", args.devices);
    loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(Some(Ok((device, ws)))) => {
                out.addresses.push(Peer {
                    address: device.address.clone(),
                    node: device.node,
                });
                out.per_node[device.node] += 1;
                out.handles
                    .push(conn::spawn(device, ws, phase.clone(), stats.clone()));
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                let msg = format!("{e:#}");
                if out.failures.len() < MAX_FAILURE_KINDS || out.failures.contains_key(&msg) {
                    *out.failures.entry(msg).or_insert(0) += 1;
                } else {
                    *out.failures.entry("(other errors)".to_owned()).or_insert(0) += 1;
                }
            }
            Ok(None) => break,
            Err(_) => {
                eprintln!("connect phase timed out after {} s", args.connect_timeout);
                break;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "  connected {}/{} ({failed} failed)",
                out.handles.len(),
                args.devices
            );
        }
    }
    out
}

/// Runs warm-up + measured sending, then drains; returns the drain time in seconds
/// and the server's counters as the measured window began.
async fn send_phase(
    args: &Args,
    api: &Api,
    addresses: Vec<Peer>,
    phase: &watch::Sender<Phase>,
    stats: &Stats,
) -> (f64, Snapshot) {
    let n = addresses.len();
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let lead = Duration::from_millis(100);
    let start = Instant::now() + lead;
    let start_us = now_us() + lead.as_micros() as u64;
    stats.set_measure_start(start_us + warmup.as_micros() as u64);
    let end = start + warmup + duration;
    let plan = Plan {
        addresses,
        start,
        end,
        per_conn_rate: args.rate / n as f64,
        padding: "x".repeat(args.body_bytes),
    };
    eprintln!(
        "sending {} msgs/s over {n} connections ({:.3}/s each): {} s warm-up + {} s",
        args.rate, plan.per_conn_rate, args.warmup, args.duration
    );
    phase.send_replace(Phase::Send(Arc::new(plan)));
    let measure_at = start + warmup;
    let snapshot = {
        let client = api.client().clone();
        let from = sources(args);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_at).await;
            Snapshot::take(&client, &from).await
        })
    };

    // Progress once a second while sending (warm-up traffic included).
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let total = |a: &AtomicU64, b: &AtomicU64| a.load(Relaxed) + b.load(Relaxed);
    let mut last = (0u64, 0u64, 0u64, 0u64);
    loop {
        let at = tokio::select! {
            at = tick.tick() => at,
            _ = tokio::time::sleep_until(end) => break,
        };
        let now = (
            total(&stats.sent, &stats.sent_warmup),
            total(&stats.acked, &stats.acked_warmup),
            total(&stats.delivered, &stats.delivered_warmup),
            stats.errored.load(Relaxed),
        );
        let label = if at <= start + warmup {
            "warm-up  "
        } else {
            "measuring"
        };
        eprintln!(
            "  [{:>5.1} s] {label} +{} sent  +{} acked  +{} delivered  +{} errors",
            (at - start).as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2,
            now.3 - last.3,
        );
        last = now;
    }

    // Drain: wait until every measured send is answered and every ack delivered.
    let drain_start = Instant::now();
    loop {
        let sent = stats.sent.load(Relaxed);
        let answered = stats.acked.load(Relaxed) + stats.errored.load(Relaxed);
        let acked = stats.acked.load(Relaxed);
        let delivered = stats.delivered.load(Relaxed);
        if answered >= sent && delivered >= acked {
            break;
        }
        if drain_start.elapsed() >= DRAIN_TIMEOUT {
            eprintln!(
                "drain timed out: {} unanswered, {} undelivered",
                sent.saturating_sub(answered),
                acked.saturating_sub(delivered)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = snapshot.await.unwrap_or_default();
    (drain_start.elapsed().as_secs_f64(), before)
}

/// Waits (bounded) for the connection tasks to finish their close handshakes, then
/// aborts the rest.
async fn close_all(mut handles: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    for h in handles.iter_mut() {
        if tokio::time::timeout_at(deadline, &mut *h).await.is_err() {
            eprintln!("some connections did not close within {CLOSE_TIMEOUT:?}; aborting them");
            break;
        }
    }
    for h in &handles {
        h.abort();
    }
}

/// Assembles the final report from the counters.
fn build_report(
    args: &Args,
    stats: &Stats,
    per_node: Vec<usize>,
    connect_secs: f64,
    drain_secs: f64,
    window: Option<(Snapshot, Snapshot)>,
    server_rss: Rss,
) -> Result<Report> {
    let stats::Merged { ack, e2e, errors } = stats.merged()?;
    let connections = per_node.iter().sum::<usize>();
    let sent = stats.sent.load(Relaxed);
    let sent_cross = stats.sent_cross.load(Relaxed);
    let acked = stats.acked.load(Relaxed);
    let errored = stats.errored.load(Relaxed);
    let delivered = stats.delivered.load(Relaxed);
    let secs = if args.rate > 0.0 { args.duration } else { 0.0 };
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    if errors.contains_key("rate_limited") {
        eprintln!(
            "note: the server rate-limited sends; start it with a higher RATE_LIMIT_NORMAL \
             for throughput runs"
        );
    }
    let nodes = args.nodes();
    let cross_node = (nodes > 1 && args.rate > 0.0).then(|| CrossNode {
        sent: sent_cross,
        share: if sent > 0 {
            (sent_cross as f64 / sent as f64 * 1000.0).round() / 1000.0
        } else {
            0.0
        },
        ack_latency: Latency::from_histogram(&ack.cross),
        ack_latency_same_node: Latency::from_histogram(&ack.same),
        e2e_latency: Latency::from_histogram(&e2e.cross),
        e2e_latency_same_node: Latency::from_histogram(&e2e.same),
    });
    Ok(Report {
        params: Params {
            url: args.url_list(),
            devices: args.devices,
            rate: args.rate,
            duration_s: args.duration,
            warmup_s: args.warmup,
            body_bytes: args.body_bytes,
            hold_s: args.hold,
        },
        nodes,
        connections_per_node: if nodes > 1 { per_node } else { Vec::new() },
        cross_node,
        connections,
        connect_failures: args.devices - connections,
        connect_secs: (connect_secs * 1000.0).round() / 1000.0,
        sent,
        sent_warmup: stats.sent_warmup.load(Relaxed),
        acked,
        unacked: sent.saturating_sub(acked + errored),
        errored,
        errors,
        delivered,
        lost: acked.saturating_sub(delivered),
        msgs_per_sec: (per_sec(acked) * 10.0).round() / 10.0,
        sent_per_sec: (per_sec(sent) * 10.0).round() / 10.0,
        drain_secs: (drain_secs * 1000.0).round() / 1000.0,
        ack_latency: Latency::from_histogram(&ack.all),
        e2e_latency: Latency::from_histogram(&e2e.all),
        server_costs: window.map(|(before, after)| ServerCosts::between(&before, &after, acked)),
        server_rss,
        disconnects: stats.disconnects(),
        write_failures: stats.write_failures.load(Relaxed),
        bad_frames: stats.bad_frames.load(Relaxed),
    })
}
