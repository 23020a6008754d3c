//! Report pieces every scenario uses (latency percentiles, server memory, the traffic
//! figures of a measured window) and the one-to-one report (also MQTT's).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Merged, Stats};

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Summarizes `h` (all zeros when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }

    /// `p50 … p99 … p99.9 … max …` in milliseconds.
    pub fn human(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} samples)",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// Server memory readings (VmRSS, KiB).
#[derive(Debug, Default, Serialize)]
pub struct Rss {
    /// Before any connection was made.
    pub before_kib: Option<u64>,
    /// With all connections open and idle (after --hold).
    pub connected_kib: Option<u64>,
    /// After sending and draining, before closing.
    pub end_kib: Option<u64>,
    /// (connected − before) / connections.
    pub per_connection_kib: Option<f64>,
}

/// Sends between devices connected to different nodes (several nodes only).
#[derive(Debug, Default, Serialize)]
pub struct CrossNode {
    /// Measured sends whose recipient was connected to another node than the sender.
    pub sent: u64,
    /// Their share of all measured sends.
    pub share: f64,
    /// Send → ack latency of those sends.
    pub ack_latency: Latency,
    /// Send → ack latency of the sends within one node.
    pub ack_latency_same_node: Latency,
    /// Send → delivery latency of the messages between nodes.
    pub e2e_latency: Latency,
    /// Send → delivery latency of the messages within one node.
    pub e2e_latency_same_node: Latency,
}

/// The figures of one measured window of sends.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    /// Sends written in the measured window.
    pub sent: u64,
    /// Sends written during the warm-up (not counted anywhere else).
    pub sent_warmup: u64,
    /// Measured sends acknowledged.
    pub acked: u64,
    /// Measured sends answered with neither ack nor error.
    pub unacked: u64,
    /// Measured sends answered with an error.
    pub errored: u64,
    /// Error answers by code.
    pub errors: BTreeMap<String, u64>,
    /// Deliveries the acked sends call for (= acked for 1:1; × the other members for a
    /// group).
    pub expected: u64,
    /// Measured messages received by their recipient (live, or via `sync`).
    pub delivered: u64,
    /// Of those, received in a `sync` page (soak: the recipient was offline).
    #[serde(skip_serializing_if = "is_zero")]
    pub delivered_sync: u64,
    /// Expected but not delivered by the end of the drain.
    pub lost: u64,
    /// Acked messages per second of the measured window.
    pub msgs_per_sec: f64,
    /// Sends written per second of the measured window (the generator's own rate).
    pub sent_per_sec: f64,
    /// Deliveries per second of the measured window.
    pub deliveries_per_sec: f64,
    /// Seconds spent waiting for outstanding acks and deliveries.
    pub drain_secs: f64,
    /// Send → ack latency.
    pub ack_latency: Latency,
    /// Send → live delivery to the recipient.
    pub e2e_latency: Latency,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Rounds to `digits` decimals.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

impl Traffic {
    /// The figures of `stats` over a window of `secs` measured seconds.
    pub fn collect(stats: &Stats, secs: f64, drain_secs: f64) -> anyhow::Result<(Traffic, Merged)> {
        let merged = stats.merged()?;
        let sent = stats.sent.load(Relaxed);
        let acked = stats.acked.load(Relaxed);
        let errored = stats.errored.load(Relaxed);
        let delivered = stats.delivered.load(Relaxed);
        let expected = stats.expected.load(Relaxed);
        let per_sec = |n: u64| {
            if secs > 0.0 {
                round(n as f64 / secs, 1)
            } else {
                0.0
            }
        };
        if merged.errors.contains_key("rate_limited") {
            eprintln!(
                "note: the server rate-limited sends; start it with higher limits \
                 (RATE_LIMIT_NORMAL, SWITCHBOARD_TENANT_RATE_PER_MINUTE, \
                 SWITCHBOARD_GLOBAL_RATE_PER_MINUTE) for throughput runs"
            );
        }
        let t = Traffic {
            sent,
            sent_warmup: stats.sent_warmup.load(Relaxed),
            acked,
            unacked: sent.saturating_sub(acked + errored),
            errored,
            errors: merged.errors.clone(),
            expected,
            delivered,
            delivered_sync: stats.delivered_sync.load(Relaxed),
            lost: expected.saturating_sub(delivered),
            msgs_per_sec: per_sec(acked),
            sent_per_sec: per_sec(sent),
            deliveries_per_sec: per_sec(delivered),
            drain_secs: round(drain_secs, 3),
            ack_latency: Latency::from_histogram(&merged.ack.all),
            e2e_latency: Latency::from_histogram(&merged.e2e.all),
        };
        Ok((t, merged))
    }

    /// Appends the human-readable lines.
    pub fn human(&self, s: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "sent             {} (+{} warm-up)  {:.0}/s",
            self.sent, self.sent_warmup, self.sent_per_sec
        );
        let _ = writeln!(s, "acked            {}", self.acked);
        let _ = writeln!(s, "unacked          {}", self.unacked);
        let _ = writeln!(
            s,
            "errors           {}{}",
            self.errored,
            tally(&self.errors)
        );
        if self.expected != self.acked {
            let _ = writeln!(s, "expected         {} deliveries", self.expected);
        }
        let via_sync = if self.delivered_sync > 0 {
            format!(" ({} of them via sync)", self.delivered_sync)
        } else {
            String::new()
        };
        let _ = writeln!(s, "delivered        {}{via_sync}", self.delivered);
        let _ = writeln!(s, "lost             {}", self.lost);
        let _ = writeln!(
            s,
            "throughput       {:.0} msgs/s acked, {:.0} deliveries/s (drain {:.2} s)",
            self.msgs_per_sec, self.deliveries_per_sec, self.drain_secs
        );
        let _ = writeln!(s, "ack latency      {}", self.ack_latency.human());
        let _ = writeln!(s, "e2e latency      {}", self.e2e_latency.human());
    }
}

/// The run's parameters, echoed in the report.
#[derive(Debug, Serialize)]
pub struct Params {
    /// Server base URL (with several nodes, every node's, comma-separated).
    pub url: String,
    /// Devices requested.
    pub devices: usize,
    /// Target messages per second.
    pub rate: f64,
    /// Measured sending seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Body padding bytes.
    pub body_bytes: usize,
    /// Idle seconds before sending.
    pub hold_s: f64,
}

/// The report of `one-to-one` and `idle` (Switchboard or MQTT).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `one-to-one` or `idle`.
    pub scenario: &'static str,
    /// `switchboard` or `mqtt`.
    pub protocol: &'static str,
    /// The run's parameters.
    pub params: Params,
    /// Nodes the devices were spread over (device i on node i mod n).
    pub nodes: usize,
    /// Open connections on each node (several nodes only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connections_per_node: Vec<usize>,
    /// Sends between nodes (several nodes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_node: Option<CrossNode>,
    /// Connections that reached `ready` (MQTT: SUBACK).
    pub connections: usize,
    /// Devices whose creation, token or connection failed (or timed out).
    pub connect_failures: usize,
    /// Seconds the connect phase took.
    pub connect_secs: f64,
    /// The measured window.
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Server CPU microseconds per delivered message (with --server-pid).
    pub cpu_us_per_delivered: Option<f64>,
    /// What the server spent in the measured window (CPU with --server-pid; counters
    /// from its `/metrics`).
    pub server_costs: Option<crate::server::ServerCosts>,
    /// Server memory, when --server-pid was given.
    pub server_rss: Rss,
    /// Connections that ended unexpectedly, by close code or error.
    pub disconnects: BTreeMap<String, u64>,
    /// Sends that could not be written (broken connection).
    pub write_failures: u64,
    /// Received frames that could not be parsed.
    pub bad_frames: u64,
}

impl Report {
    /// The multi-line human-readable report.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "=== loadgen {} report ({}, {}) ===",
            self.scenario, self.protocol, p.url
        );
        let _ = writeln!(
            s,
            "devices {}  rate {}/s  duration {}s  warmup {}s  body {} B  hold {}s",
            p.devices, p.rate, p.duration_s, p.warmup_s, p.body_bytes, p.hold_s
        );
        if self.nodes > 1 {
            let per: Vec<String> = self
                .connections_per_node
                .iter()
                .map(|n| n.to_string())
                .collect();
            let _ = writeln!(
                s,
                "nodes            {} (device i on node i mod {}; connections {})",
                self.nodes,
                self.nodes,
                per.join(" / ")
            );
        }
        let _ = writeln!(
            s,
            "connections      {} opened, {} failed ({:.1} s)",
            self.connections, self.connect_failures, self.connect_secs
        );
        if p.rate > 0.0 && self.traffic.sent + self.traffic.sent_warmup > 0 {
            self.traffic.human(&mut s);
            if let Some(x) = &self.cross_node {
                let _ = writeln!(
                    s,
                    "cross-node       {} of {} sends ({:.1} %) to a device on another node",
                    x.sent,
                    self.traffic.sent,
                    x.share * 100.0
                );
                let _ = writeln!(s, "  ack, cross     {}", x.ack_latency.human());
                let _ = writeln!(s, "  ack, same      {}", x.ack_latency_same_node.human());
                let _ = writeln!(s, "  e2e, cross     {}", x.e2e_latency.human());
                let _ = writeln!(s, "  e2e, same      {}", x.e2e_latency_same_node.human());
            }
        }
        if let Some(c) = &self.server_costs {
            c.human(&mut s);
        }
        if let Some(per) = self.cpu_us_per_delivered {
            let _ = writeln!(
                s,
                "CPU/delivered    {per:.1} µs of server CPU per delivered message"
            );
        }
        self.server_rss.human(&mut s);
        if !self.disconnects.is_empty() {
            let _ = writeln!(s, "disconnects      {}", tally(&self.disconnects));
        }
        if self.write_failures > 0 || self.bad_frames > 0 {
            let _ = writeln!(
                s,
                "write failures   {}  bad frames {}",
                self.write_failures, self.bad_frames
            );
        }
        s
    }
}

impl Rss {
    /// Appends the human-readable lines (nothing when nothing was read).
    pub fn human(&self, s: &mut String) {
        if self.before_kib.is_none() && self.connected_kib.is_none() && self.end_kib.is_none() {
            return;
        }
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} KiB"));
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "server RSS       before {}  connected {}  end {}",
            kib(self.before_kib),
            kib(self.connected_kib),
            kib(self.end_kib)
        );
        if let Some(per) = self.per_connection_kib {
            let _ = writeln!(s, "RSS/connection   {per:.2} KiB");
        }
    }
}

/// ` (a: 1, b: 2)` or nothing for an empty tally.
pub fn tally(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(" ({})", parts.join(", "))
}
