//! The final report: a serializable summary and its human-readable form.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

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
    fn human(&self) -> String {
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

/// Everything loadgen reports at the end.
#[derive(Debug, Serialize)]
pub struct Report {
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
    /// Connections that reached `ready`.
    pub connections: usize,
    /// Devices whose creation, token or connection failed (or timed out).
    pub connect_failures: usize,
    /// Seconds the connect phase took.
    pub connect_secs: f64,
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
    /// Measured messages received by their recipient.
    pub delivered: u64,
    /// Acked but not delivered by the end of the drain.
    pub lost: u64,
    /// Acked messages per second of the measured window.
    pub msgs_per_sec: f64,
    /// Sends written per second of the measured window (the generator's own rate).
    pub sent_per_sec: f64,
    /// Seconds spent waiting for outstanding acks and deliveries.
    pub drain_secs: f64,
    /// Send → ack latency.
    pub ack_latency: Latency,
    /// Send → delivery to the recipient latency.
    pub e2e_latency: Latency,
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
        let _ = writeln!(s, "=== loadgen report ({}) ===", p.url);
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
        if p.rate > 0.0 {
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
            let _ = writeln!(s, "delivered        {}", self.delivered);
            let _ = writeln!(s, "lost             {}", self.lost);
            let _ = writeln!(
                s,
                "throughput       {:.0} msgs/s acked (drain {:.2} s)",
                self.msgs_per_sec, self.drain_secs
            );
            let _ = writeln!(s, "ack latency      {}", self.ack_latency.human());
            let _ = writeln!(s, "e2e latency      {}", self.e2e_latency.human());
            if let Some(x) = &self.cross_node {
                let _ = writeln!(
                    s,
                    "cross-node       {} of {} sends ({:.1} %) to a device on another node",
                    x.sent,
                    self.sent,
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
        let r = &self.server_rss;
        if r.before_kib.is_some() || r.connected_kib.is_some() || r.end_kib.is_some() {
            let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} KiB"));
            let _ = writeln!(
                s,
                "server RSS       before {}  connected {}  end {}",
                kib(r.before_kib),
                kib(r.connected_kib),
                kib(r.end_kib)
            );
            if let Some(per) = r.per_connection_kib {
                let _ = writeln!(s, "RSS/connection   {per:.2} KiB");
            }
        }
        if !self.disconnects.is_empty() {
            let _ = writeln!(s, "disconnects     {}", tally(&self.disconnects));
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

/// ` (a: 1, b: 2)` or nothing for an empty tally.
fn tally(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(" ({})", parts.join(", "))
}
