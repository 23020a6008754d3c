//! `one-to-one` (and the connect-and-hold path `idle` uses): N connections, each
//! sending 1:1 to random other connections so that the total is `--rate`, on
//! Switchboard or an MQTT broker. Phases: connect (device i on node i mod n), hold,
//! send (warm-up + measured window), drain, close, report.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;

use super::{
    apis, new_stats, new_tenant, preflight, protocol_name, server_rss, sources, us_per, Output,
};
use crate::cli::{Args, Protocol};
use crate::conn::{Phase, Route};
use crate::fleet::{self, Server};
use crate::report::{round, CrossNode, Latency, Params, Report, Rss, Traffic};
use crate::server::ServerCosts;
use crate::window::{self, Window};

/// The server to connect to: a fresh tenant's on Switchboard, the broker for MQTT.
pub async fn server(args: &Args) -> Result<(Server, reqwest::Client)> {
    match args.protocol {
        Protocol::Switchboard => {
            let apis = apis(args)?;
            let tenant = new_tenant(args, &apis[0]).await?;
            let client = apis[0].client().clone();
            Ok((
                Server::Switchboard {
                    apis,
                    api_key: tenant.api_key,
                },
                client,
            ))
        }
        Protocol::Mqtt => {
            let run = format!("{:08x}", rand::random::<u32>());
            eprintln!("MQTT broker {} (topics lg/{run}/<i>)", args.mqtt_url());
            let client = reqwest::Client::new();
            Ok((
                Server::Mqtt {
                    url: args.mqtt_url(),
                    run,
                },
                client,
            ))
        }
    }
}

/// Runs one-to-one (`rate` 0: connect, hold and report memory only).
pub async fn run(args: &Args, scenario: &'static str) -> Result<Output> {
    preflight(args, args.devices());
    let rss_before = server_rss(args);
    if args.nodes() > 1 {
        eprintln!(
            "{} nodes: device i connects to node i mod {} ({})",
            args.nodes(),
            args.nodes(),
            args.url_list()
        );
    }
    let (server, client) = server(args).await?;
    let stats = new_stats()?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let conns = fleet::connect_all(
        args,
        &server,
        args.devices(),
        |_| Route::Random,
        fleet::spawn_live(phase_rx, stats.clone()),
    )
    .await;
    let connections = conns.opened();
    if connections == 0 {
        bail!("no connection could be opened");
    }
    if args.hold() > 0.0 {
        eprintln!(
            "holding {connections} idle connections for {} s",
            args.hold()
        );
        tokio::time::sleep(Duration::from_secs_f64(args.hold())).await;
    }
    let rss_connected = server_rss(args);

    let mut drain_secs = 0.0;
    let mut window = None;
    if args.rate() > 0.0 {
        if connections < 2 {
            eprintln!("warning: at least 2 connections are needed to send; not sending");
        } else {
            let win = Window::from_args(args, args.rate(), connections);
            let out = window::run(
                &win,
                &client,
                &sources(args),
                conns.peers.clone(),
                &phase_tx,
                &stats,
            )
            .await;
            drain_secs = out.drain_secs;
            window = Some((out.before, out.after));
        }
    }
    // Figures are as of the end of the drain; what arrives while closing is ignored.
    stats.freeze();
    let rss_end = server_rss(args);
    phase_tx.send_replace(Phase::Close);
    fleet::close_all(conns.handles).await;

    let secs = if args.rate() > 0.0 {
        args.duration()
    } else {
        0.0
    };
    let (traffic, merged) = Traffic::collect(&stats, secs, drain_secs)?;
    let nodes = if server.is_mqtt() { 1 } else { args.nodes() };
    let sent = traffic.sent;
    let cross_node = (nodes > 1 && args.rate() > 0.0).then(|| {
        let sent_cross = stats.sent_cross.load(Relaxed);
        CrossNode {
            sent: sent_cross,
            share: if sent > 0 {
                round(sent_cross as f64 / sent as f64, 3)
            } else {
                0.0
            },
            ack_latency: Latency::from_histogram(&merged.ack.cross),
            ack_latency_same_node: Latency::from_histogram(&merged.ack.same),
            e2e_latency: Latency::from_histogram(&merged.e2e.cross),
            e2e_latency_same_node: Latency::from_histogram(&merged.e2e.same),
        }
    });
    let server_costs =
        window.map(|(before, after)| ServerCosts::between(&before, &after, traffic.acked));
    let cpu_us_per_delivered = server_costs
        .as_ref()
        .and_then(|c| us_per(c.cpu_secs, traffic.delivered));
    let report = Report {
        scenario,
        protocol: protocol_name(args),
        params: Params {
            url: args.url_list(),
            devices: args.devices(),
            rate: args.rate(),
            duration_s: args.duration(),
            warmup_s: args.warmup(),
            body_bytes: args.body_bytes,
            hold_s: args.hold(),
        },
        nodes,
        connections_per_node: if nodes > 1 {
            conns.per_node
        } else {
            Vec::new()
        },
        cross_node,
        connections,
        connect_failures: args.devices() - connections,
        connect_secs: round(conns.secs, 3),
        traffic,
        cpu_us_per_delivered,
        server_costs,
        server_rss: Rss {
            before_kib: rss_before,
            connected_kib: rss_connected,
            end_kib: rss_end,
            per_connection_kib: match (rss_before, rss_connected) {
                (Some(b), Some(c)) => Some(round((c as f64 - b as f64) / connections as f64, 2)),
                _ => None,
            },
        },
        disconnects: stats.disconnects(),
        write_failures: stats.write_failures.load(Relaxed),
        bad_frames: stats.bad_frames.load(Relaxed),
    };
    Output::of(&report, report.human())
}
