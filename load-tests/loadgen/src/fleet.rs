//! Opening many connections at once (at most `--connect-concurrency` at a time, all
//! within `--connect-timeout`): on Switchboard a device, its token and its WebSocket; on
//! an MQTT broker a client subscribed to its own topic. Also registering devices
//! without connecting them, and closing connections (bounded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{stream, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::Args;
use crate::conn::frames::{self, SbCodec};
use crate::conn::mqtt::{self, MqttCodec};
use crate::conn::{self, address_of, Device, Peer, Phase, Route, Ws};
use crate::setup::Api;
use crate::stats::Stats;

/// Longest wait for the close handshakes at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct connect-failure messages kept for the summary.
const MAX_FAILURE_KINDS: usize = 20;

/// Where connections go.
pub enum Server {
    /// Switchboard: one API client per node and the tenant's key.
    Switchboard {
        /// Node i's REST client.
        apis: Vec<Api>,
        /// The tenant's API key.
        api_key: String,
    },
    /// An MQTT broker's WebSocket endpoint; topics are scoped by `run`.
    Mqtt {
        /// `ws://host:port/path`.
        url: String,
        /// A random run id.
        run: String,
    },
}

impl Server {
    /// Whether this is an MQTT broker.
    pub fn is_mqtt(&self) -> bool {
        matches!(self, Server::Mqtt { .. })
    }
}

/// One open connection, not yet served.
pub struct Opened {
    /// Its identity.
    pub device: Device,
    /// The socket.
    pub ws: Ws,
    /// Its device token (Switchboard; empty for MQTT), to reconnect with.
    pub token: String,
    /// `ready`'s `last_seq` (Switchboard).
    pub last_seq: u64,
    /// Whether it is an MQTT client.
    pub mqtt: bool,
}

/// Result of the connect phase.
pub struct Connections {
    /// One task per open connection.
    pub handles: Vec<JoinHandle<()>>,
    /// The devices with an open connection.
    pub peers: Vec<Peer>,
    /// Open connections per node.
    pub per_node: Vec<usize>,
    /// Failure messages and their counts.
    pub failures: BTreeMap<String, u64>,
    /// Seconds the phase took.
    pub secs: f64,
}

impl Connections {
    /// Open connections.
    pub fn opened(&self) -> usize {
        self.handles.len()
    }
}

/// Adds one failure message to a bounded tally.
pub fn tally_failure(failures: &mut BTreeMap<String, u64>, e: &anyhow::Error) {
    let msg = format!("{e:#}");
    if failures.len() < MAX_FAILURE_KINDS || failures.contains_key(&msg) {
        *failures.entry(msg).or_insert(0) += 1;
    } else {
        *failures.entry("(other errors)".to_owned()).or_insert(0) += 1;
    }
}

/// Opens connection `index` on node `node` (of `nodes`).
async fn connect_one(
    server: &Server,
    ws_base: &str,
    index: usize,
    (node, nodes): (usize, usize),
    route: Route,
) -> Result<Opened> {
    match server {
        Server::Switchboard { apis, api_key } => {
            let api = &apis[node];
            let address = address_of(index);
            let device_id = api
                .create_device(api_key, &address, &format!("lg {index}"))
                .await?;
            let token = api.create_token(api_key, &device_id).await?;
            let (ws, last_seq) = frames::open(ws_base, &token).await?;
            Ok(Opened {
                device: Device {
                    index,
                    address: address.into(),
                    node,
                    nodes,
                    route,
                },
                ws,
                token,
                last_seq,
                mqtt: false,
            })
        }
        Server::Mqtt { url, run } => {
            let topic = mqtt::topic_of(run, index);
            let ws = mqtt::open(url, &format!("lg-{run}-{index}"), &topic).await?;
            Ok(Opened {
                device: Device {
                    index,
                    address: topic.into(),
                    node: 0,
                    nodes: 1,
                    route,
                },
                ws,
                token: String::new(),
                last_seq: 0,
                mqtt: true,
            })
        }
    }
}

/// Opens connections `0..count`, hands each to `spawn` as soon as it is open (so its
/// reader runs), and returns what was opened.
pub async fn connect_all<F>(
    args: &Args,
    server: &Server,
    count: usize,
    route: impl Fn(usize) -> Route,
    mut spawn: F,
) -> Connections
where
    F: FnMut(Opened) -> JoinHandle<()>,
{
    let nodes = if server.is_mqtt() { 1 } else { args.nodes() };
    let ws_bases: Vec<String> = (0..nodes).map(|n| args.ws_base(n)).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.connect_timeout);
    let mut pending = stream::iter(0..count)
        .map(|i| {
            let node = if server.is_mqtt() { 0 } else { args.node_of(i) };
            connect_one(server, &ws_bases[node], i, (node, nodes), route(i))
        })
        .buffer_unordered(args.connect_concurrency);
    let mut out = Connections {
        handles: Vec::with_capacity(count),
        peers: Vec::with_capacity(count),
        per_node: vec![0; nodes],
        failures: BTreeMap::new(),
        secs: 0.0,
    };
    let mut failed = 0usize;
    let mut last_progress = Instant::now();
    eprintln!("connecting {count} devices");
    loop {
        match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(Some(Ok(opened))) => {
                out.peers.push(Peer {
                    address: opened.device.address.clone(),
                    node: opened.device.node,
                });
                out.per_node[opened.device.node] += 1;
                out.handles.push(spawn(opened));
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                tally_failure(&mut out.failures, &e);
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
                "  connected {}/{count} ({failed} failed)",
                out.handles.len()
            );
        }
    }
    out.secs = started.elapsed().as_secs_f64();
    eprintln!(
        "connected {}/{count} in {:.1} s ({failed} failed)",
        out.opened(),
        out.secs
    );
    for (msg, n) in &out.failures {
        eprintln!("  connect failure x{n}: {msg}");
    }
    out
}

/// The usual connection task: serves the connection with its protocol's codec until
/// the run closes it.
pub fn spawn_live(
    phase: watch::Receiver<Phase>,
    stats: Arc<Stats>,
) -> impl FnMut(Opened) -> JoinHandle<()> {
    move |opened: Opened| {
        let phase = phase.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let Opened {
                device,
                ws,
                last_seq,
                mqtt,
                ..
            } = opened;
            if mqtt {
                let codec = MqttCodec::default();
                conn::serve(&device, ws, &codec, phase, &stats, &conn::stay, Vec::new()).await;
            } else {
                let codec = SbCodec::live(last_seq);
                conn::serve(&device, ws, &codec, phase, &stats, &conn::stay, Vec::new()).await;
            }
        })
    }
}

/// A registered device that is not connected.
pub struct Registered {
    /// Its index.
    pub index: usize,
    /// Its id.
    pub device_id: String,
    /// Its token (when asked for).
    pub token: Option<String>,
}

/// Creates devices `indices` (and their tokens when `tokens`) over REST, at most
/// `--connect-concurrency` at a time; fails on the first error.
pub async fn register_all(
    args: &Args,
    api: &Api,
    api_key: &str,
    indices: std::ops::Range<usize>,
    tokens: bool,
) -> Result<Vec<Registered>> {
    let total = indices.len();
    let started = Instant::now();
    let mut pending = stream::iter(indices)
        .map(|index| async move {
            let device_id = api
                .create_device(api_key, &address_of(index), &format!("lg {index}"))
                .await?;
            let token = if tokens {
                Some(api.create_token(api_key, &device_id).await?)
            } else {
                None
            };
            anyhow::Ok(Registered {
                index,
                device_id,
                token,
            })
        })
        .buffer_unordered(args.connect_concurrency);
    let mut out = Vec::with_capacity(total);
    let mut last_progress = Instant::now();
    while let Some(r) = pending.next().await {
        out.push(r?);
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            eprintln!("  registered {}/{total}", out.len());
        }
    }
    out.sort_by_key(|r| r.index);
    eprintln!(
        "registered {total} devices{} in {:.1} s",
        if tokens { " and tokens" } else { "" },
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Waits (bounded) for the connection tasks to finish their close handshakes, then
/// aborts the rest.
pub async fn close_all(mut handles: Vec<JoinHandle<()>>) {
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
