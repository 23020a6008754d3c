//! Command-line options: the options every scenario shares (global: they may come
//! before or after the scenario's name) and each scenario's own.

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Text shown after the option list of `--help`.
const AFTER_HELP: &str = "\
Scenarios (`loadgen <scenario> --help` for each one's options; without a scenario,
one-to-one): one-to-one, max-rate, fan-out, reconnect-storm, idle, bulk-drain, soak.
--devices, --rate, --duration and --warmup default per scenario (see each one's help).

Open files: every connection uses one file descriptor in this process (and one in the
server). Raise the soft limit in the shell that starts loadgen (and the server) first, e.g.
`ulimit -n $(ulimit -Hn)`; loadgen warns when --devices does not fit the current limit.

Server limits: the server limits sends per device (RATE_LIMIT_NORMAL, 60/minute by
default), per tenant (SWITCHBOARD_TENANT_RATE_PER_MINUTE, 6,000,000) and server-wide
(SWITCHBOARD_GLOBAL_RATE_PER_MINUTE, 12,000,000; a group send costs one unit per
recipient), and connections per client IP (SWITCHBOARD_IP_MAX_CONNECTIONS, 10,000;
SWITCHBOARD_IP_HANDSHAKES_PER_MINUTE, 30,000). load-tests/bench.sh raises
RATE_LIMIT_NORMAL; see load-tests/loadgen/README.md for what each scenario needs.

Several nodes (a cluster on MongoDB + Redis): repeat --url (or give a comma-separated
list) and --server-pid, one per node in the same order. Device i makes its REST setup
calls and opens its WebSocket on node i mod n (the tenant is created on the first);
/metrics is read from every node and the costs are summed. load-tests/cluster-bench.sh
starts such a cluster and runs loadgen across it.

MQTT (--protocol mqtt; one-to-one, max-rate and idle): --url is the broker's
WebSocket listener (http://127.0.0.1:9001); clients subscribe to their own topic at
QoS 1 and publish QoS 1 to random other clients' topics. load-tests/compare-mosquitto.sh
runs Switchboard and mosquitto side by side.

Examples:
  loadgen --devices 1000 --rate 20000 --duration 20            (one-to-one)
  loadgen max-rate --devices 1000 --threshold-ms 50
  loadgen fan-out --group-size 256 --devices 1024 --rate 20
  loadgen reconnect-storm --devices 10000 --backlog 100 --server-pid <pid>
  loadgen idle --devices 10000 --hold 5 --server-pid <pid>
  loadgen bulk-drain --messages 100000 --devices 1000
  loadgen soak --duration 600 --rate 5000 --server-pid <pid>
  loadgen --protocol mqtt --url http://127.0.0.1:9001 --devices 1000 --rate 5000";

/// Switchboard load generator: scenarios against a real server over its public API.
///
/// Creates a tenant and devices over REST, opens one WebSocket per device, runs the
/// scenario's traffic and reports what it measured (acks, deliveries, losses, latency
/// percentiles, the server's CPU and memory with --server-pid).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, after_help = AFTER_HELP)]
pub struct Args {
    /// The scenario (default: one-to-one).
    #[command(subcommand)]
    pub scenario: Option<Scenario>,

    /// Server base URL; repeat it (or separate by commas) for several nodes of one
    /// cluster: device i connects to node i mod n. MQTT: the broker's WebSocket
    /// listener (http://host:port).
    #[arg(
        long = "url",
        visible_alias = "node-url",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub urls: Vec<String>,

    /// Admin bearer token (default: the ADMIN_TOKEN environment variable).
    #[arg(long, global = true)]
    pub admin_token: Option<String>,

    /// Number of devices (one WebSocket connection each). Default per scenario:
    /// one-to-one 100, max-rate 1000, fan-out 1024, reconnect-storm 10000, idle 1000,
    /// bulk-drain 1000, soak 1000.
    #[arg(long, global = true)]
    pub devices: Option<usize>,

    /// Target total messages per second across all connections. one-to-one: 1000 (0:
    /// connect only, idle); max-rate: the first step (2000); fan-out: group sends per
    /// second (100); soak: 5000.
    #[arg(long, global = true)]
    pub rate: Option<f64>,

    /// Measured sending time in seconds (after the warm-up). one-to-one and fan-out
    /// 10; max-rate: per step, 5; soak: the whole run, 600.
    #[arg(long, global = true)]
    pub duration: Option<f64>,

    /// Sending time in seconds before measuring starts (not counted). 2; max-rate 1
    /// per step; soak 0.
    #[arg(long, global = true)]
    pub warmup: Option<f64>,

    /// Size in bytes of the padding text field in each message body.
    #[arg(long, default_value_t = 64, global = true)]
    pub body_bytes: usize,

    /// Server process id: report its VmRSS before connecting, when connected, at the
    /// end, and its CPU time in the window. With several nodes, one per node (repeated
    /// or comma-separated, in --url order); RSS and CPU are summed over them.
    #[arg(
        long = "server-pid",
        value_name = "PID",
        value_delimiter = ',',
        global = true
    )]
    pub server_pids: Vec<u32>,

    /// The store's process id (a local MongoDB): report its CPU time in the window.
    #[arg(long, global = true)]
    pub store_pid: Option<u32>,

    /// Port of the cluster's Redis on 127.0.0.1: count the commands Redis itself
    /// executed in the window (`INFO commandstats`), bus traffic included.
    #[arg(long, global = true)]
    pub redis_port: Option<u16>,

    /// Devices being created / connected at the same time.
    #[arg(long, default_value_t = 200, global = true)]
    pub connect_concurrency: usize,

    /// Give up on the connect phase after this many seconds.
    #[arg(long, default_value_t = 120.0, global = true)]
    pub connect_timeout: f64,

    /// Also print the final report as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Keep the connections open and idle this many seconds before sending (idle: 5).
    #[arg(long, global = true)]
    pub hold: Option<f64>,

    /// The server's protocol: `switchboard`, or `mqtt` (an MQTT 3.1.1 broker over
    /// WebSockets, e.g. mosquitto; one-to-one, max-rate and idle).
    #[arg(long, value_enum, default_value_t = Protocol::Switchboard, global = true)]
    pub protocol: Protocol,

    /// MQTT: the path of the broker's WebSocket endpoint.
    #[arg(long, default_value = "/mqtt", global = true)]
    pub mqtt_path: String,
}

/// Which server loadgen talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Switchboard's REST setup and WebSocket JSON frames.
    Switchboard,
    /// MQTT 3.1.1 over WebSockets (QoS 1).
    Mqtt,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N devices sending 1:1 to random other devices at --rate (the default).
    OneToOne,
    /// Steps the 1:1 rate up (doubling, then bisecting) and reports the highest rate
    /// with p99 end-to-end within --threshold-ms and nothing lost, unacked or refused.
    MaxRate(MaxRateOpts),
    /// Groups of --group-size members, all connected; some members send group
    /// messages at --rate (group sends per second in all).
    FanOut(FanOutOpts),
    /// --devices offline devices each --backlog messages behind connect at once and
    /// `sync` until they are up to date.
    ReconnectStorm(StormOpts),
    /// --devices connections held idle for --hold s: the server's memory per connection.
    Idle,
    /// Enqueues --messages through `POST /v1/messages/bulk` and measures how fast the
    /// queue drains them.
    BulkDrain(BulkOpts),
    /// A long 1:1 run with connection churn, sampling the server's memory, file
    /// descriptors, threads and gauges.
    Soak(SoakOpts),
}

impl Scenario {
    /// The name used on the command line and in the JSON report.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::OneToOne => "one-to-one",
            Scenario::MaxRate(_) => "max-rate",
            Scenario::FanOut(_) => "fan-out",
            Scenario::ReconnectStorm(_) => "reconnect-storm",
            Scenario::Idle => "idle",
            Scenario::BulkDrain(_) => "bulk-drain",
            Scenario::Soak(_) => "soak",
        }
    }

    /// Defaults of (devices, rate, duration, warm-up, hold).
    fn defaults(&self) -> (usize, f64, f64, f64, f64) {
        match self {
            Scenario::OneToOne => (100, 1000.0, 10.0, 2.0, 0.0),
            Scenario::MaxRate(_) => (1000, 2000.0, 5.0, 1.0, 0.0),
            Scenario::FanOut(_) => (1024, 100.0, 10.0, 2.0, 0.0),
            Scenario::ReconnectStorm(_) => (10_000, 0.0, 0.0, 0.0, 0.0),
            Scenario::Idle => (1000, 0.0, 0.0, 0.0, 5.0),
            Scenario::BulkDrain(_) => (1000, 0.0, 0.0, 0.0, 0.0),
            Scenario::Soak(_) => (1000, 5000.0, 600.0, 0.0, 0.0),
        }
    }
}

/// Options of `max-rate`.
#[derive(Debug, Clone, ClapArgs)]
pub struct MaxRateOpts {
    /// A step passes when its p99 end-to-end latency is at most this (ms).
    #[arg(long, default_value_t = 50.0)]
    pub threshold_ms: f64,
    /// At most this many steps.
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
    /// No step starts after this many seconds of stepping.
    #[arg(long, default_value_t = 300.0)]
    pub max_time: f64,
    /// Never offer more than this (msg/s).
    #[arg(long, default_value_t = 200_000.0)]
    pub ceiling: f64,
    /// Stop bisecting when the gap between passing and failing rates is at most this
    /// fraction of the passing one.
    #[arg(long, default_value_t = 0.1)]
    pub precision: f64,
    /// After a step, wait up to this many seconds for its backlog to be answered.
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
}

/// Options of `fan-out`.
#[derive(Debug, Clone, ClapArgs)]
pub struct FanOutOpts {
    /// Members per group (2 to 1,024; the server's limit); --devices / --group-size
    /// groups.
    #[arg(long, default_value_t = 64)]
    pub group_size: usize,
    /// Members of each group that send (the first ones).
    #[arg(long, default_value_t = 1)]
    pub senders_per_group: usize,
}

/// How `reconnect-storm` fills the offline devices' inboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fill {
    /// Group sends over WebSockets: the devices in groups of up to 1,023 plus one
    /// sender each, --backlog sends per group (one inbox row per member and message).
    Group,
    /// 1:1 sends over WebSockets from --senders sender devices (two rows per message).
    Direct,
}

/// Options of `reconnect-storm`.
#[derive(Debug, Clone, ClapArgs)]
pub struct StormOpts {
    /// Messages waiting in each device's inbox (M).
    #[arg(long, default_value_t = 100)]
    pub backlog: u64,
    /// How the backlog is enqueued while the devices are offline.
    #[arg(long, value_enum, default_value_t = Fill::Group)]
    pub fill: Fill,
    /// Sender devices for --fill direct.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Give up filling after this many seconds.
    #[arg(long, default_value_t = 900.0)]
    pub fill_timeout: f64,
    /// Devices connecting at the same time in the storm (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub storm_concurrency: usize,
    /// Give up on the storm after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub storm_timeout: f64,
}

/// Options of `bulk-drain`.
#[derive(Debug, Clone, ClapArgs)]
pub struct BulkOpts {
    /// Messages to enqueue (device i sends to device i+1, round robin).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Messages per `POST /v1/messages/bulk` (at most 10,000; fewer when the bodies
    /// would pass 16 MiB).
    #[arg(long, default_value_t = 10_000)]
    pub per_call: usize,
    /// Seconds between polls of the queue gauges (`/metrics`).
    #[arg(long, default_value_t = 0.25)]
    pub poll: f64,
    /// Priority lane of the messages.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Jobs checked one by one (`GET /v1/jobs/{id}`) at the end.
    #[arg(long, default_value_t = 20)]
    pub check_jobs: usize,
    /// Give up waiting for the drain after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub drain_timeout: f64,
}

/// Options of `soak`.
#[derive(Debug, Clone, ClapArgs)]
pub struct SoakOpts {
    /// Fraction of the devices that disconnect and reconnect (with `sync`) per
    /// --churn-interval.
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Seconds over which --churn of the devices reconnect.
    #[arg(long, default_value_t = 5.0)]
    pub churn_interval: f64,
    /// Seconds a churned device stays offline before reconnecting.
    #[arg(long, default_value_t = 1.0)]
    pub offline: f64,
    /// Seconds between samples of the server's RSS, fds, threads and gauges.
    #[arg(long, default_value_t = 5.0)]
    pub sample_every: f64,
    /// No device leaves in the last this many seconds of sending (all are back and
    /// synced for the drain).
    #[arg(long, default_value_t = 10.0)]
    pub calm_end: f64,
}

impl Args {
    /// The scenario (one-to-one when none was named).
    pub fn scenario(&self) -> &Scenario {
        self.scenario.as_ref().unwrap_or(&Scenario::OneToOne)
    }

    /// Checks value ranges, fills the per-scenario defaults and resolves the admin
    /// token from the environment.
    pub fn validate(&mut self) -> Result<()> {
        let scenario = self.scenario().clone();
        let (devices, rate, duration, warmup, hold) = scenario.defaults();
        self.devices.get_or_insert(devices);
        self.rate.get_or_insert(rate);
        self.duration.get_or_insert(duration);
        self.warmup.get_or_insert(warmup);
        self.hold.get_or_insert(hold);
        let mqtt = self.protocol == Protocol::Mqtt;
        if mqtt
            && !matches!(
                scenario,
                Scenario::OneToOne | Scenario::MaxRate(_) | Scenario::Idle
            )
        {
            bail!(
                "--protocol mqtt runs one-to-one, max-rate and idle, not {}",
                scenario.name()
            );
        }
        if self.admin_token.is_none() {
            self.admin_token = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        }
        if self.admin_token.is_none() && !mqtt {
            bail!("no admin token: pass --admin-token or set ADMIN_TOKEN");
        }
        if self.devices() == 0 {
            bail!("--devices must be at least 1");
        }
        if self.devices() > 9_000_000 {
            bail!("--devices must be at most 9,000,000 (7-digit addresses)");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        for (name, v) in [
            ("--rate", self.rate()),
            ("--duration", self.duration()),
            ("--warmup", self.warmup()),
            ("--hold", self.hold()),
            ("--connect-timeout", self.connect_timeout),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a non-negative number");
            }
        }
        let sends = matches!(
            scenario,
            Scenario::OneToOne | Scenario::MaxRate(_) | Scenario::FanOut(_) | Scenario::Soak(_)
        );
        if sends && self.rate() > 0.0 && self.duration() <= 0.0 {
            bail!("--duration must be positive when --rate is");
        }
        match &scenario {
            Scenario::MaxRate(o) => {
                if self.rate() <= 0.0 || o.ceiling < self.rate() {
                    bail!(
                        "max-rate: --rate (the first step) must be positive and at most --ceiling"
                    );
                }
                if o.threshold_ms <= 0.0 || o.max_steps == 0 || o.precision <= 0.0 {
                    bail!("max-rate: --threshold-ms, --max-steps and --precision must be positive");
                }
            }
            Scenario::FanOut(o) => {
                if !(2..=1024).contains(&o.group_size) {
                    bail!("fan-out: --group-size must be 2 to 1,024 (the server's limit)");
                }
                if o.senders_per_group == 0 || o.senders_per_group > o.group_size {
                    bail!("fan-out: --senders-per-group must be 1 to --group-size");
                }
                if self.devices() < o.group_size {
                    bail!("fan-out: --devices must be at least --group-size");
                }
            }
            Scenario::ReconnectStorm(o) => {
                if o.backlog == 0 {
                    bail!("reconnect-storm: --backlog must be at least 1");
                }
                if o.fill == Fill::Direct && o.senders == 0 {
                    bail!("reconnect-storm: --senders must be at least 1");
                }
            }
            Scenario::BulkDrain(o) => {
                if o.messages == 0 || !(1..=10_000).contains(&o.per_call) {
                    bail!("bulk-drain: --messages must be positive, --per-call 1 to 10,000");
                }
                if self.devices() < 2 {
                    bail!("bulk-drain: --devices must be at least 2");
                }
                if !o.poll.is_finite() || o.poll <= 0.0 {
                    bail!("bulk-drain: --poll must be positive");
                }
            }
            Scenario::Soak(o) => {
                if !(0.0..=1.0).contains(&o.churn) || o.churn_interval <= 0.0 {
                    bail!("soak: --churn must be 0 to 1 and --churn-interval positive");
                }
                if o.offline < 0.0 || o.sample_every <= 0.0 || o.calm_end < 0.0 {
                    bail!(
                        "soak: --offline, --calm-end must be non-negative, --sample-every positive"
                    );
                }
            }
            Scenario::OneToOne | Scenario::Idle => {}
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
        if mqtt && self.urls.len() > 1 {
            bail!("--protocol mqtt takes one --url");
        }
        if mqtt && self.body_bytes > 1_000_000 {
            bail!("--body-bytes must be at most 1,000,000 with --protocol mqtt");
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

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.devices.unwrap_or(0)
    }

    /// Target rate (msg/s).
    pub fn rate(&self) -> f64 {
        self.rate.unwrap_or(0.0)
    }

    /// Measured seconds.
    pub fn duration(&self) -> f64 {
        self.duration.unwrap_or(0.0)
    }

    /// Warm-up seconds.
    pub fn warmup(&self) -> f64 {
        self.warmup.unwrap_or(0.0)
    }

    /// Idle seconds before sending.
    pub fn hold(&self) -> f64 {
        self.hold.unwrap_or(0.0)
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

    /// The MQTT broker's WebSocket URL.
    pub fn mqtt_url(&self) -> String {
        let path = if self.mqtt_path.starts_with('/') {
            self.mqtt_path.clone()
        } else {
            format!("/{}", self.mqtt_path)
        };
        format!("{}{path}", self.ws_base(0))
    }

    /// The admin token (present after [`Args::validate`], except in MQTT mode).
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
        assert_eq!(a.scenario().name(), "one-to-one");
        assert_eq!((a.devices(), a.rate(), a.duration()), (100, 1000.0, 10.0));
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

    #[test]
    fn the_old_one_to_one_flags_still_work() {
        let a = parse(&["--devices", "10", "--rate", "0", "--hold", "3", "--json"]).expect("args");
        assert_eq!(a.scenario().name(), "one-to-one");
        assert_eq!((a.devices(), a.rate(), a.hold()), (10, 0.0, 3.0));
        assert!(a.json);
    }

    #[test]
    fn scenarios_take_common_flags_before_or_after_their_name_and_have_defaults() {
        let a = parse(&[
            "--server-pid",
            "7",
            "soak",
            "--duration",
            "30",
            "--churn",
            "0.1",
        ])
        .expect("args");
        assert_eq!(a.scenario().name(), "soak");
        assert_eq!((a.devices(), a.rate(), a.duration()), (1000, 5000.0, 30.0));
        assert_eq!(a.server_pids, [7]);
        let Some(Scenario::Soak(o)) = &a.scenario else {
            panic!("not soak")
        };
        assert_eq!(o.churn, 0.1);
        let s = parse(&["reconnect-storm", "--devices", "50"]).expect("args");
        assert_eq!(s.devices(), 50);
        let f = parse(&["fan-out", "--group-size", "8", "--devices", "64"]).expect("args");
        assert_eq!(f.scenario().name(), "fan-out");
        assert!(parse(&["fan-out", "--group-size", "2000"]).is_err());
        assert!(parse(&["max-rate", "--rate", "0"]).is_err());
    }

    #[test]
    fn mqtt_runs_the_comparison_scenarios_without_an_admin_token() {
        let mut a = Args::try_parse_from([
            "loadgen",
            "--protocol",
            "mqtt",
            "--url",
            "http://127.0.0.1:9001",
            "--devices",
            "10",
        ])
        .expect("parse");
        // No ADMIN_TOKEN needed in MQTT mode (the environment may still have one).
        a.validate().expect("valid");
        assert_eq!(a.mqtt_url(), "ws://127.0.0.1:9001/mqtt");
        assert!(parse(&["--protocol", "mqtt", "soak"]).is_err());
    }
}
