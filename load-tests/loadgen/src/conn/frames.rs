//! Switchboard's side of the wire: opening a device's WebSocket (and reading its
//! `ready`), the `send` and `sync` frames loadgen writes, and the [`Codec`] that reads
//! acks, errors, live messages and `sync` pages.
//!
//! Deliveries are counted once. A connection knows the `last_seq` its `ready` reported:
//! what is at or below it is fetched with `sync` (from where the device's previous
//! connection left off), what is above it arrives live (`PROTOCOL.md`: "sync from
//! last_seq misses nothing").

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{index_of, ws_config, Codec, Device, Target, Ws, OPEN_TIMEOUT};
use crate::stats::{now_us, Stats};

/// Entries asked for per `sync` page (the server's maximum).
pub const SYNC_PAGE: u32 = 1000;

/// Opens a WebSocket with `token` and waits for its `ready` frame; returns the socket
/// and the `last_seq` it reported.
pub async fn open(ws_base: &str, token: &str) -> Result<(Ws, u64)> {
    let url = format!("{ws_base}/v1/ws?token={token}");
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
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
            Ok((ws, frame.last_seq.unwrap_or(0)))
        }
        Some(Ok(Message::Close(f))) => bail!("closed before ready: {f:?}"),
        Some(Ok(other)) => bail!("unexpected first frame: {other:?}"),
        Some(Err(e)) => Err(e).context("reading the ready frame"),
        None => bail!("connection ended before ready"),
    }
}

/// The fields of a server frame loadgen looks at (strings borrowed from the frame).
#[derive(Deserialize)]
pub struct Frame<'a> {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Request id echoed.
    #[serde(default)]
    pub id: Option<&'a str>,
    /// Error code.
    #[serde(default)]
    pub code: Option<&'a str>,
    /// Recipient of a 1:1 message.
    #[serde(default)]
    pub to: Option<&'a str>,
    /// Group of a group message.
    #[serde(default)]
    pub group: Option<&'a str>,
    /// Sender address.
    #[serde(default)]
    pub from: Option<&'a str>,
    /// Message id.
    #[serde(default)]
    pub message_id: Option<&'a str>,
    /// Inbox position of a message.
    #[serde(default)]
    pub seq: Option<u64>,
    /// `ready`'s last durable seq.
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// The body loadgen wrote.
    #[serde(default)]
    pub body: Option<Body>,
    /// A `messages` page's entries.
    #[serde(default, borrow)]
    pub items: Vec<Frame<'a>>,
    /// Where the next page starts.
    #[serde(default)]
    pub next_after_seq: Option<u64>,
    /// Whether there is a next page.
    #[serde(default)]
    pub more: bool,
}

impl Frame<'_> {
    /// Whether this message was addressed to `device` by another sender (1:1 to it,
    /// or to a group it is in).
    pub fn is_for(&self, address: &str) -> bool {
        self.to == Some(address) || (self.group.is_some() && self.from != Some(address))
    }
}

/// The part of a message body loadgen wrote and reads back.
#[derive(Deserialize)]
pub struct Body {
    /// Send time (Unix µs).
    #[serde(default)]
    pub t: Option<u64>,
    /// Position in a backlog (reconnect storm).
    #[serde(default)]
    pub k: Option<u64>,
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

/// Writes a `send` frame into a new string (to an address, or to a group).
pub fn send_frame(
    device: usize,
    seq: u64,
    t: u64,
    target: Target<'_>,
    padding: &str,
    cross: bool,
) -> String {
    let (key, value) = match target {
        Target::To(peer) => ("to", &*peer.address),
        Target::Group(id) => ("group", id),
    };
    let mut s = String::with_capacity(112 + value.len() + padding.len());
    let mark = if cross { "x" } else { "" };
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"{{"type":"send","id":"{device}.{mark}{seq}.{t}","{key}":"{value}","body":{{"t":{t},"p":"{padding}"}}}}"#
    );
    s
}

/// A `sync` frame for the page after `after_seq`.
pub fn sync_frame(after_seq: u64) -> Message {
    Message::text(format!(
        r#"{{"type":"sync","id":"sync.{after_seq}","after_seq":{after_seq},"limit":{SYNC_PAGE}}}"#
    ))
}

/// Where a connection is in its inbox.
#[derive(Debug, Default)]
struct Cursor {
    /// Entries above this were processed (by `sync`; the live ones are above `upto`).
    from: u64,
    /// The `last_seq` of this connection's `ready`: entries up to it come from `sync`.
    upto: u64,
    /// Highest seq that arrived live.
    live_max: u64,
}

/// The Switchboard codec of one connection.
pub struct SbCodec {
    cursor: Mutex<Cursor>,
    /// Sends written and not yet answered.
    in_flight: AtomicU64,
}

impl SbCodec {
    /// A connection whose `ready` said `last_seq` and that does not sync (a fresh device).
    pub fn live(last_seq: u64) -> SbCodec {
        SbCodec::resuming(last_seq, last_seq).0
    }

    /// A reconnection that has seen its inbox up to `seen` and whose `ready` said
    /// `last_seq`: the codec and the first `sync` frame to send, if anything is missing.
    pub fn resuming(seen: u64, last_seq: u64) -> (SbCodec, Option<Message>) {
        let codec = SbCodec {
            cursor: Mutex::new(Cursor {
                from: seen.min(last_seq),
                upto: last_seq,
                live_max: 0,
            }),
            in_flight: AtomicU64::new(0),
        };
        let first = (seen < last_seq).then(|| sync_frame(seen));
        (codec, first)
    }

    /// Up to where the inbox has been seen (where the next connection's `sync` starts).
    pub fn seen(&self) -> u64 {
        let c = self.lock();
        c.from.max(c.live_max)
    }

    fn answered(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    fn lock(&self) -> MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One `messages` page: counts what is new and addressed to this device; asks for
    /// the next page while the `ready`'s `last_seq` is not reached.
    fn page(&self, device: &Device, frame: &Frame<'_>, stats: &Stats, replies: &mut Vec<Message>) {
        let mut c = self.lock();
        if c.from >= c.upto {
            return;
        }
        for item in &frame.items {
            let Some(seq) = item.seq else { continue };
            if seq <= c.from || seq > c.upto {
                continue;
            }
            c.from = seq;
            if item.kind == "message" && item.is_for(&device.address) {
                if let Some(t) = item.body.as_ref().and_then(|b| b.t) {
                    stats.on_synced(t);
                }
            }
        }
        let next = frame.next_after_seq.unwrap_or(c.from);
        if frame.more && next < c.upto {
            c.from = c.from.max(next);
            replies.push(sync_frame(c.from));
        } else {
            c.from = c.upto;
            stats.syncs.fetch_add(1, Relaxed);
        }
    }
}

impl Codec for SbCodec {
    fn send(
        &self,
        device: &Device,
        k: u64,
        t: u64,
        target: Target<'_>,
        padding: &str,
        cross: bool,
    ) -> Message {
        self.in_flight.fetch_add(1, Relaxed);
        Message::text(send_frame(device.index, k, t, target, padding, cross))
    }

    fn receive(&self, device: &Device, msg: &Message, stats: &Stats, replies: &mut Vec<Message>) {
        let Message::Text(text) = msg else {
            stats.bad_frames.fetch_add(1, Relaxed);
            return;
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
            stats.bad_frames.fetch_add(1, Relaxed);
            return;
        };
        // With several nodes, latencies are also split by where the other side was.
        let multi = device.nodes > 1;
        match frame.kind {
            "ack" => {
                if let Some(t) = frame.id.and_then(id_time) {
                    self.answered();
                    let cross = multi.then(|| frame.id.is_some_and(id_cross));
                    stats.on_ack(device.index, t, now_us(), cross, device.fanout());
                }
            }
            "error" => {
                let t = frame.id.and_then(id_time);
                if t.is_some() {
                    self.answered();
                }
                stats.on_error(device.index, t, frame.code.unwrap_or("(none)"));
            }
            // Only the addressee's copy counts (not a copy pushed to the sender).
            "message" if frame.is_for(&device.address) => {
                if let Some(seq) = frame.seq {
                    let mut c = self.lock();
                    if seq <= c.upto {
                        // At or below `ready`'s last_seq: the sync counts it.
                        return;
                    }
                    c.live_max = c.live_max.max(seq);
                }
                if let Some(t) = frame.body.and_then(|b| b.t) {
                    let cross = match frame.from.and_then(index_of) {
                        Some(from) if multi => Some(from % device.nodes != device.node),
                        _ => None,
                    };
                    stats.on_delivered(device.index, t, now_us(), cross);
                }
            }
            "messages" => self.page(device, &frame, stats, replies),
            _ => {}
        }
    }

    fn settled(&self) -> bool {
        let synced = {
            let c = self.lock();
            c.from >= c.upto
        };
        synced && self.in_flight.load(Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Peer, Route};

    fn peer(a: &str) -> Peer {
        Peer {
            address: a.into(),
            node: 0,
        }
    }

    #[test]
    fn send_frame_is_valid_json() {
        let to = peer("+15550000001");
        let s = send_frame(7, 42, 1_700_000_000_123_456, Target::To(&to), "xxxx", false);
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
        let x = send_frame(7, 42, 5, Target::To(&to), "", true);
        let v: serde_json::Value = serde_json::from_str(&x).expect("json");
        assert_eq!(v["id"], "7.x42.5");
        assert!(id_cross("7.x42.5"));
        assert_eq!(id_time("7.x42.5"), Some(5));
        let g = send_frame(1, 2, 3, Target::Group("g_1"), "", false);
        let v: serde_json::Value = serde_json::from_str(&g).expect("json");
        assert_eq!(v["group"], "g_1");
        assert!(v.get("to").is_none());
        let s: serde_json::Value = match sync_frame(17) {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("json"),
            _ => panic!("not text"),
        };
        assert_eq!(s["after_seq"], 17);
        assert_eq!(s["limit"], SYNC_PAGE);
    }

    #[test]
    fn parses_server_frames() {
        let f: Frame<'_> = serde_json::from_str(
            r#"{"type":"message","message_id":"m","seq":3,"ts":1,"from":"+1","to":"+2","body":{"t":99,"p":"a\"b"}}"#,
        )
        .expect("frame");
        assert_eq!(f.kind, "message");
        assert_eq!(f.to, Some("+2"));
        assert!(f.is_for("+2"));
        assert!(!f.is_for("+1"));
        assert_eq!(f.body.and_then(|b| b.t), Some(99));
        let e: Frame<'_> = serde_json::from_str(
            r#"{"type":"error","id":"1.2.3","code":"rate_limited","message":"slow \"down\"","retry_after_ms":5}"#,
        )
        .expect("frame");
        assert_eq!(e.code, Some("rate_limited"));
        assert_eq!(e.id.and_then(id_time), Some(3));
        let g: Frame<'_> = serde_json::from_str(
            r#"{"type":"message","seq":4,"from":"+1","group":"g_1","body":{"t":1}}"#,
        )
        .expect("frame");
        assert!(g.is_for("+2"));
        assert!(
            !g.is_for("+1"),
            "the sender's own group message is not a delivery"
        );
    }

    fn device() -> Device {
        Device {
            index: 0,
            address: "+2".into(),
            node: 0,
            nodes: 1,
            route: Route::Random,
        }
    }

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    #[test]
    fn a_reconnect_syncs_what_it_missed_and_counts_each_message_once() {
        let stats = Stats::new(1).expect("stats");
        stats.set_measure_start(0);
        let d = device();
        // Seen up to 2; ready says 5: seqs 3..=5 come from sync, 6 and up live.
        let (codec, first) = SbCodec::resuming(2, 5);
        assert!(first.is_some());
        assert!(!codec.settled());
        let mut replies = Vec::new();
        // A live push above last_seq counts at once; one at or below it waits for sync.
        codec.receive(
            &d,
            &text(r#"{"type":"message","seq":6,"from":"+1","to":"+2","body":{"t":10}}"#),
            &stats,
            &mut replies,
        );
        codec.receive(
            &d,
            &text(r#"{"type":"message","seq":5,"from":"+1","to":"+2","body":{"t":10}}"#),
            &stats,
            &mut replies,
        );
        assert_eq!(stats.delivered.load(Relaxed), 1);
        // First page: 3 (own sent copy, not counted) and 4; more to come.
        codec.receive(&d, &text(r#"{"type":"messages","id":"s","items":[
            {"type":"message","seq":3,"from":"+2","to":"+1","body":{"t":1}},
            {"type":"message","seq":4,"from":"+1","to":"+2","body":{"t":1}}],"next_after_seq":4,"more":true}"#), &stats, &mut replies);
        assert_eq!(replies.len(), 1);
        assert_eq!(stats.delivered_sync.load(Relaxed), 1);
        // Second page repeats 4, adds 5 and 6 (6 came live already).
        codec.receive(&d, &text(r#"{"type":"messages","id":"s","items":[
            {"type":"message","seq":4,"from":"+1","to":"+2","body":{"t":1}},
            {"type":"message","seq":5,"from":"+1","to":"+2","body":{"t":1}},
            {"type":"message","seq":6,"from":"+1","to":"+2","body":{"t":1}}],"next_after_seq":6,"more":false}"#), &stats, &mut replies);
        assert_eq!(stats.delivered_sync.load(Relaxed), 2);
        assert_eq!(stats.delivered.load(Relaxed), 3);
        assert_eq!(stats.syncs.load(Relaxed), 1);
        assert!(codec.settled());
        assert_eq!(codec.seen(), 6);
        // A fresh connection has nothing to sync.
        let (fresh, first) = SbCodec::resuming(0, 0);
        assert!(first.is_none() && fresh.settled());
    }

    #[test]
    fn acks_count_the_fanout() {
        let stats = Stats::new(1).expect("stats");
        stats.set_measure_start(0);
        let codec = SbCodec::live(0);
        let mut replies = Vec::new();
        let to = peer("+1");
        let _ = codec.send(&device(), 1, 5, Target::To(&to), "", false);
        assert!(!codec.settled(), "a send is in flight");
        codec.receive(
            &device(),
            &text(r#"{"type":"ack","id":"0.1.5","message_id":"m","seq":1,"ts":1}"#),
            &stats,
            &mut replies,
        );
        assert!(codec.settled());
        assert_eq!(stats.acked.load(Relaxed), 1);
        assert_eq!(stats.expected.load(Relaxed), 1);
    }
}
