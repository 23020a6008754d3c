//! Command-line options of the load generator.

use anyhow::{bail, Result};
use clap::Parser;

/// Text shown after the option list of `--help`.
const AFTER_HELP: &str = "\
Open files: every connection uses one file descriptor in this process (and one in the
server). Raise the soft limit in the shell that starts loadgen (and the server) first, e.g.
`ulimit -n $(ulimit -Hn)`; loadgen warns when --devices does not fit the current limit.

Server rate limits: the server limits sends per device (RATE_LIMIT_NORMAL, 60/minute by
default). For throughput runs start it with a high limit, e.g. RATE_LIMIT_NORMAL=100000000,
otherwise most sends are answered with `rate_limited` errors.

Several nodes (a cluster on MongoDB + Redis): repeat --url (or give a comma-separated
list) and --server-pid, one per node in the same order. Device i makes its REST setup
calls and opens its WebSocket on node i mod n (the tenant is created on the first);
/metrics is read from every node and the costs are summed. load-tests/cluster-bench.sh
starts such a cluster and runs loadgen across it.

Examples:
  idle memory at 10,000 connections:
    loadgen --devices 10000 --rate 0 --hold 5 --server-pid <pid>
  throughput:
    loadgen --devices 1000 --rate 20000 --duration 20
  two nodes:
    loadgen --url http://127.0.0.1:3200,http://127.0.0.1:3201 \\
      --server-pid <pid0> --server-pid <pid1> --redis-port <port> --devices 400 --rate 400";

/// Switchboard load generator: N device connections sending 1:1 messages at a target rate.
///
/// Creates a tenant and N devices over REST, opens one WebSocket per device, sends
/// `send` frames at the target total rate, and reports acks, deliveries, losses and
/// latency percentiles (and the server's memory with --server-pid).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Server base URL; repeat it (or separate by commas) for several nodes of one
    /// cluster: device i connects to node i mod n.
    #[arg(
        long = "url",
        visible_alias = "node-url",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3000"
    )]
    pub urls: Vec<String>,

    /// Admin bearer token (default: the ADMIN_TOKEN environment variable).
    #[arg(long)]
    pub admin_token: Option<String>,

    /// Number of devices (one WebSocket connection each).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,

    /// Target total messages per second across all connections (0: connect only, idle).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Measured sending time in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Sending time in seconds before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Size in bytes of the padding text field in each message body.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,

    /// Server process id: report its VmRSS before connecting, when connected, at the
    /// end, and its CPU time in the window. With several nodes, one per node (repeated
    /// or comma-separated, in --url order); RSS and CPU are summed over them.
    #[arg(long = "server-pid", value_name = "PID", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// The store's process id (a local MongoDB): report its CPU time in the window.
    #[arg(long)]
    pub store_pid: Option<u32>,

    /// Port of the cluster's Redis on 127.0.0.1: count the commands Redis itself
    /// executed in the window (`INFO commandstats`), bus traffic included.
    #[arg(long)]
    pub redis_port: Option<u16>,

    /// Devices being created / connected at the same time.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Give up on the connect phase after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,

    /// Also print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Keep the connections open and idle this many seconds before sending.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

impl Args {
    /// Checks value ranges and resolves the admin token from the environment.
    pub fn validate(&mut self) -> Result<()> {
        if self.admin_token.is_none() {
            self.admin_token = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        }
        if self.admin_token.is_none() {
            bail!("no admin token: pass --admin-token or set ADMIN_TOKEN");
        }
        if self.devices == 0 {
            bail!("--devices must be at least 1");
        }
        if self.devices > 10_000_000 {
            bail!("--devices must be at most 10,000,000 (7-digit addresses)");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        for (name, v) in [
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--hold", self.hold),
            ("--connect-timeout", self.connect_timeout),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a non-negative number");
            }
        }
        if self.rate > 0.0 && self.duration <= 0.0 {
            bail!("--duration must be positive when --rate is");
        }
        self.urls.retain(|u| !u.trim().is_empty());
        if self.urls.is_empty() {
            bail!("--url must name at least one server");
        }
        for url in &mut self.urls {
            *url = url.trim().to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must start with http:// (got {url})");
            }
            while url.ends_with('/') {
                url.pop();
            }
        }
        if !self.server_pids.is_empty() && self.server_pids.len() != self.urls.len() {
            bail!(
                "--server-pid given {} times for {} nodes: give one per --url, in the same order",
                self.server_pids.len(),
                self.urls.len()
            );
        }
        Ok(())
    }

    /// Number of nodes (`--url`s).
    pub fn nodes(&self) -> usize {
        self.urls.len()
    }

    /// The node device `index` uses (`index mod nodes`).
    pub fn node_of(&self, index: usize) -> usize {
        index % self.urls.len().max(1)
    }

    /// The URLs as given, comma-separated (one URL on one node).
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// The WebSocket base URL of node `node` (`http://h:p` → `ws://h:p`).
    pub fn ws_base(&self, node: usize) -> String {
        let url = &self.urls[node % self.urls.len()];
        if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            url.clone()
        }
    }

    /// The admin token (present after [`Args::validate`]).
    pub fn admin_token(&self) -> &str {
        self.admin_token.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        let mut a =
            Args::try_parse_from(["loadgen", "--admin-token", "t"].iter().chain(args.iter()))?;
        a.validate()?;
        Ok(a)
    }

    #[test]
    fn one_node_by_default() {
        let a = parse(&["--url", "http://127.0.0.1:3100/"]).expect("args");
        assert_eq!(a.urls, ["http://127.0.0.1:3100"]);
        assert_eq!(a.nodes(), 1);
        assert_eq!(a.ws_base(0), "ws://127.0.0.1:3100");
        assert!(a.server_pids.is_empty());
    }

    #[test]
    fn several_nodes_by_list_or_repetition() {
        let a = parse(&[
            "--url",
            "http://h:1,http://h:2",
            "--node-url",
            "http://h:3",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
        ])
        .expect("args");
        assert_eq!(a.nodes(), 3);
        assert_eq!(a.url_list(), "http://h:1,http://h:2,http://h:3");
        assert_eq!(a.server_pids, [10, 11, 12]);
        assert_eq!(a.node_of(4), 1);
        assert_eq!(a.ws_base(2), "ws://h:3");
    }

    #[test]
    fn one_pid_per_node() {
        assert!(parse(&["--url", "http://h:1,http://h:2", "--server-pid", "1"]).is_err());
    }
}
