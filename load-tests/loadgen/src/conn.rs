//! One device's WebSocket connection: opening it, and the task that reads its frames
//! and writes its share of the send schedule.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{now_us, Stats};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the TCP/WebSocket handshake and then for the `ready` frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most frames written in one go before flushing and yielding.
const MAX_BATCH: u64 = 256;

/// What the connection tasks should be doing; broadcast over a `watch` channel.
#[derive(Clone)]
pub enum Phase {
    /// Connected, not sending.
    Idle,
    /// Send according to the plan until its end.
    Send(Arc<Plan>),
    /// Close the connection.
    Close,
}

/// A connected device as a recipient.
#[derive(Clone)]
pub struct Peer {
    /// Its address.
    pub address: Arc<str>,
    /// The node its connection is on.
    pub node: usize,
}

/// The send schedule shared by all connections.
pub struct Plan {
    /// All connected devices (recipients are drawn from here).
    pub addresses: Vec<Peer>,
    /// When sending starts (warm-up included).
    pub start: Instant,
    /// When sending stops.
    pub end: Instant,
    /// Messages per second each connection sends.
    pub per_conn_rate: f64,
    /// The `p` field of every body.
    pub padding: String,
}

/// Identity of one connection.
#[derive(Clone)]
pub struct Device {
    /// Index of the device (0..N); part of every request id.
    pub index: usize,
    /// Its address.
    pub address: Arc<str>,
    /// The node it is connected to (`index mod nodes`).
    pub node: usize,
    /// How many nodes the run spreads devices over.
    pub nodes: usize,
}

/// The address of device `index`.
pub fn address_of(index: usize) -> String {
    format!("+1555{index:07}")
}

/// The index of the device with `address`, if it is one of loadgen's.
fn index_of(address: &str) -> Option<usize> {
    address.strip_prefix("+1555")?.parse().ok()
}

/// Opens a WebSocket with `token` and waits for its `ready` frame.
pub async fn open(ws_base: &str, token: &str) -> Result<Ws> {
    let url = format!("{ws_base}/v1/ws?token={token}");
    let mut config = WebSocketConfig::default();
    // Defaults are 128 KiB each, i.e. > 2 GiB of buffers at 10,000 connections.
    config.read_buffer_size = 8 * 1024;
    config.write_buffer_size = 16 * 1024;
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _resp) = tokio::time::timeout(OPEN_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("WebSocket handshake timed out"))?
        .context("WebSocket handshake")?;
    let first = tokio::time::timeout(OPEN_TIMEOUT, ws.next())
        .await
        .map_err(|_| anyhow!("no ready frame within {OPEN_TIMEOUT:?}"))?;
    match first {
        Some(Ok(Message::Text(text))) => {
            let frame: Frame<'_> = serde_json::from_str(text.as_str())
                .with_context(|| format!("first frame is not JSON: {}", text.as_str()))?;
            if frame.kind != "ready" {
                bail!("first frame is not ready: {}", text.as_str());
            }
            Ok(ws)
        }
        Some(Ok(Message::Close(f))) => bail!("closed before ready: {f:?}"),
        Some(Ok(other)) => bail!("unexpected first frame: {other:?}"),
        Some(Err(e)) => Err(e).context("reading the ready frame"),
        None => bail!("connection ended before ready"),
    }
}

/// The fields of a server frame loadgen looks at (strings borrowed from the frame).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    to: Option<&'a str>,
    #[serde(default)]
    from: Option<&'a str>,
    #[serde(default)]
    body: Option<Body>,
}

/// The part of a message body loadgen wrote and reads back.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    t: Option<u64>,
}

/// The send time encoded in a request id `<device>.<seq>.<unix µs>`.
fn id_time(id: &str) -> Option<u64> {
    id.rsplit('.').next()?.parse().ok()
}

/// Marks the seq of a request id whose recipient is connected to another node
/// (`<device>.x<seq>.<unix µs>`; only with several nodes).
const CROSS_MARK: char = 'x';

/// Whether request id `id` was marked as a send to another node.
fn id_cross(id: &str) -> bool {
    id.split('.')
        .nth(1)
        .is_some_and(|seq| seq.starts_with(CROSS_MARK))
}

/// Writes a `send` frame into a new string.
fn send_frame(device: usize, seq: u64, t: u64, to: &str, padding: &str, cross: bool) -> String {
    let mut s = String::with_capacity(112 + to.len() + padding.len());
    let mark = if cross { "x" } else { "" };
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"{{"type":"send","id":"{device}.{mark}{seq}.{t}","to":"{to}","body":{{"t":{t},"p":"{padding}"}}}}"#
    );
    s
}

/// Starts the task that serves one connection until [`Phase::Close`] (plus the close
/// handshake) or until the connection breaks.
pub fn spawn(
    device: Device,
    ws: Ws,
    phase: watch::Receiver<Phase>,
    stats: Arc<Stats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (sink, stream) = ws.split();
        tokio::join!(
            read_loop(&device, stream, phase.clone(), &stats),
            write_loop(&device, sink, phase, &stats),
        );
    })
}

/// Reads frames and records acks, errors and deliveries until the connection ends.
async fn read_loop(
    device: &Device,
    mut stream: SplitStream<Ws>,
    phase: watch::Receiver<Phase>,
    stats: &Stats,
) {
    let closing = || matches!(*phase.borrow(), Phase::Close);
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(text)) => handle_frame(device, text.as_str(), stats),
            Ok(Message::Close(frame)) => {
                if !closing() {
                    let reason = match frame {
                        Some(f) => format!("close {}", u16::from(f.code)),
                        None => "close (no code)".to_owned(),
                    };
                    stats.on_disconnect(reason);
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !closing() {
                    stats.on_disconnect(format!("error: {e}"));
                }
                return;
            }
        }
    }
}

/// Interprets one text frame.
fn handle_frame(device: &Device, text: &str, stats: &Stats) {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        stats
            .bad_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    // With several nodes, latencies are also split by where the other side was.
    let multi = device.nodes > 1;
    match frame.kind {
        "ack" => {
            if let Some(id) = frame.id {
                if let Some(t) = id_time(id) {
                    let cross = multi.then(|| id_cross(id));
                    stats.on_ack(device.index, t, now_us(), cross);
                }
            }
        }
        "error" => {
            let t = frame.id.and_then(id_time);
            stats.on_error(device.index, t, frame.code.unwrap_or("(none)"));
        }
        // Only the recipient's copy counts (not a copy pushed to the sender).
        "message" if frame.to == Some(&*device.address) => {
            if let Some(t) = frame.body.and_then(|b| b.t) {
                let cross = match frame.from.and_then(index_of) {
                    Some(from) if multi => Some(from % device.nodes != device.node),
                    _ => None,
                };
                stats.on_delivered(device.index, t, now_us(), cross);
            }
        }
        _ => {}
    }
}

/// Waits for the send phase, sends this connection's share, then closes on request.
async fn write_loop(
    device: &Device,
    mut sink: SplitSink<Ws, Message>,
    mut phase: watch::Receiver<Phase>,
    stats: &Stats,
) {
    let next = phase
        .wait_for(|p| !matches!(p, Phase::Idle))
        .await
        .map(|p| p.clone());
    if let Ok(Phase::Send(plan)) = next {
        if send_schedule(device, &mut sink, &plan, stats)
            .await
            .is_err()
        {
            stats
                .write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = phase.wait_for(|p| matches!(p, Phase::Close)).await;
    let _ = sink.send(Message::Close(None)).await;
}

/// Sends at `plan.per_conn_rate` from a random offset after `plan.start` until
/// `plan.end`. Message k is due at `offset + k / rate`; whatever is due is written in one
/// batch, so coarse timers do not lower the rate.
async fn send_schedule(
    device: &Device,
    sink: &mut SplitSink<Ws, Message>,
    plan: &Plan,
    stats: &Stats,
) -> Result<()> {
    let n = plan.addresses.len();
    let rate = plan.per_conn_rate;
    if n < 2 || rate <= 0.0 {
        return Ok(());
    }
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let period = 1.0 / rate;
    let t0 = plan.start + Duration::from_secs_f64(rng.random::<f64>() * period.min(1.0));
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= plan.end {
            return Ok(());
        }
        if now >= t0 {
            let due = ((now - t0).as_secs_f64() * rate) as u64 + 1;
            let batch_end = due.min(sent + MAX_BATCH);
            if sent < batch_end {
                while sent < batch_end {
                    let mut i = rng.random_range(0..n);
                    if plan.addresses[i].address == device.address {
                        i = (i + 1) % n;
                    }
                    let to = &plan.addresses[i];
                    let cross = to.node != device.node;
                    let t = now_us();
                    let frame =
                        send_frame(device.index, sent, t, &to.address, &plan.padding, cross);
                    sink.feed(Message::text(frame)).await?;
                    stats.on_sent(t, cross);
                    sent += 1;
                }
                sink.flush().await?;
            }
        }
        let next_due = t0 + Duration::from_secs_f64(sent as f64 * period);
        if next_due > Instant::now() {
            tokio::time::sleep_until(next_due.min(plan.end)).await;
        } else {
            // Behind schedule: let other connections run before catching up.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frame_is_valid_json() {
        let s = send_frame(7, 42, 1_700_000_000_123_456, "+15550000001", "xxxx", false);
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["type"], "send");
        assert_eq!(v["id"], "7.42.1700000000123456");
        assert_eq!(v["to"], "+15550000001");
        assert_eq!(v["body"]["t"], 1_700_000_000_123_456u64);
        assert_eq!(v["body"]["p"], "xxxx");
        assert_eq!(
            id_time(v["id"].as_str().expect("id")),
            Some(1_700_000_000_123_456)
        );
        assert!(!id_cross(v["id"].as_str().expect("id")));
        let x = send_frame(7, 42, 5, "+15550000001", "", true);
        let v: serde_json::Value = serde_json::from_str(&x).expect("json");
        assert_eq!(v["id"], "7.x42.5");
        assert!(id_cross("7.x42.5"));
        assert_eq!(id_time("7.x42.5"), Some(5));
    }

    #[test]
    fn addresses_give_back_their_index() {
        assert_eq!(address_of(42), "+15550000042");
        assert_eq!(index_of(&address_of(1_234_567)), Some(1_234_567));
        assert_eq!(index_of("+4912345"), None);
    }

    #[test]
    fn parses_server_frames() {
        let f: Frame<'_> = serde_json::from_str(
            r#"{"type":"message","message_id":"m","seq":3,"ts":1,"from":"+1","to":"+2","body":{"t":99,"p":"a\"b"}}"#,
        )
        .expect("frame");
        assert_eq!(f.kind, "message");
        assert_eq!(f.to, Some("+2"));
        assert_eq!(f.body.and_then(|b| b.t), Some(99));
        let e: Frame<'_> = serde_json::from_str(
            r#"{"type":"error","id":"1.2.3","code":"rate_limited","message":"slow \"down\"","retry_after_ms":5}"#,
        )
        .expect("frame");
        assert_eq!(e.code, Some("rate_limited"));
        assert_eq!(e.id.and_then(id_time), Some(3));
    }
}
