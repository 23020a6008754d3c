//! MQTT 3.1.1 over WebSockets, for comparing with an MQTT broker (mosquitto): the same
//! 1:1 pattern as the Switchboard scenarios, through the same connection task, pacing
//! and statistics. Packets are encoded and decoded by rumqttc's codec
//! (`rumqttc::mqttbytes::v4`); the transport is loadgen's own tokio-tungstenite
//! WebSocket (binary frames, subprotocol `mqtt`).
//!
//! Each client connects (clean session), subscribes to its own topic at QoS 1 and
//! publishes QoS 1 to other clients' topics. The ack of a send is its PUBACK; its
//! delivery is the PUBLISH the addressee receives (and PUBACKs back). The payload is
//! the same JSON body the Switchboard scenarios send (`{"t":<µs>,"p":"…"}`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::{ws_config, Codec, Device, Target, Ws, OPEN_TIMEOUT};
use crate::stats::{now_us, Stats};

/// Largest packet accepted.
const MAX_PACKET: usize = 1024 * 1024;

/// Keep-alive announced in CONNECT (seconds): long enough for idle holds, since idle
/// clients send no PINGREQ.
const KEEP_ALIVE_SECS: u16 = 900;

/// The topic of client `index` in run `run`.
pub fn topic_of(run: &str, index: usize) -> String {
    format!("lg/{run}/{index}")
}

/// Encodes one packet into a binary WebSocket message.
fn encode(packet: &Packet) -> Result<Message> {
    let mut buf = BytesMut::with_capacity(packet.size());
    packet
        .write(&mut buf, MAX_PACKET)
        .map_err(|e| anyhow!("encoding {packet:?}: {e}"))?;
    Ok(Message::binary(buf.freeze()))
}

/// Reads the next complete packet, reading WebSocket frames into `buf` as needed.
async fn next_packet(ws: &mut Ws, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(MqttError::InsufficientBytes(_)) => {}
            Err(e) => bail!("bad MQTT packet: {e}"),
        }
        let msg = tokio::time::timeout(OPEN_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no MQTT answer within {OPEN_TIMEOUT:?}"))?;
        match msg {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Close(f))) => bail!("closed during the MQTT handshake: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading the MQTT handshake"),
            None => bail!("connection ended during the MQTT handshake"),
        }
    }
}

/// Opens `url` (`ws://host:port/path`) with subprotocol `mqtt`, sends CONNECT as
/// `client_id` (clean session) and SUBSCRIBEs to `topic` at QoS 1; returns once the
/// SUBACK is in.
pub async fn open(url: &str, client_id: &str, topic: &str) -> Result<Ws> {
    let mut request = url.into_client_request().context("MQTT WebSocket URL")?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    let (mut ws, _resp) = tokio::time::timeout(OPEN_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("WebSocket handshake timed out"))?
        .context("WebSocket handshake")?;
    let mut hello = Connect::new(client_id);
    hello.keep_alive = KEEP_ALIVE_SECS;
    hello.clean_session = true;
    ws.send(encode(&Packet::Connect(hello))?).await?;
    let mut buf = BytesMut::new();
    match next_packet(&mut ws, &mut buf).await? {
        Packet::ConnAck(ack) if ack.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {}
        other => bail!("CONNECT refused: {other:?}"),
    }
    let mut sub = Subscribe::new(topic, QoS::AtLeastOnce);
    sub.pkid = 1;
    ws.send(encode(&Packet::Subscribe(sub))?).await?;
    match next_packet(&mut ws, &mut buf).await? {
        Packet::SubAck(ack) if ack.pkid == 1 => {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure))
            {
                bail!("SUBSCRIBE to {topic} refused");
            }
        }
        other => bail!("expected SUBACK, got {other:?}"),
    }
    Ok(ws)
}

/// The outstanding publishes of one client.
struct Inflight {
    /// Next packet id to try (never 0).
    next: u16,
    /// Packet id → send time (Unix µs).
    sent_at: HashMap<u16, u64>,
    /// Bytes of a packet split over WebSocket frames.
    buf: BytesMut,
}

/// The MQTT codec of one client connection.
pub struct MqttCodec {
    state: Mutex<Inflight>,
}

impl Default for MqttCodec {
    fn default() -> Self {
        MqttCodec {
            state: Mutex::new(Inflight {
                next: 1,
                sent_at: HashMap::new(),
                buf: BytesMut::new(),
            }),
        }
    }
}

impl MqttCodec {
    fn lock(&self) -> MutexGuard<'_, Inflight> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free packet id for a publish sent at `t`.
    fn take_pkid(&self, t: u64) -> u16 {
        let mut s = self.lock();
        for _ in 0..u16::MAX {
            let id = s.next;
            s.next = if s.next == u16::MAX { 1 } else { s.next + 1 };
            if let std::collections::hash_map::Entry::Vacant(e) = s.sent_at.entry(id) {
                e.insert(t);
                return id;
            }
        }
        // 65,535 unanswered publishes: reuse the next id (its old send is lost).
        let id = s.next;
        s.sent_at.insert(id, t);
        id
    }

    fn on_packet(
        &self,
        device: &Device,
        packet: Packet,
        stats: &Stats,
        replies: &mut Vec<Message>,
    ) {
        match packet {
            Packet::PubAck(ack) => {
                let t = self.lock().sent_at.remove(&ack.pkid);
                if let Some(t) = t {
                    stats.on_ack(device.index, t, now_us(), None, 1);
                }
            }
            Packet::Publish(p) => {
                if p.qos != QoS::AtMostOnce {
                    if let Ok(m) = encode(&Packet::PubAck(PubAck::new(p.pkid))) {
                        replies.push(m);
                    }
                }
                if *p.topic == *device.address {
                    if let Some(t) = payload_time(&p.payload) {
                        stats.on_delivered(device.index, t, now_us(), None);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The `t` of a payload `{"t":<µs>,…}`.
fn payload_time(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct P {
        t: u64,
    }
    serde_json::from_slice::<P>(payload).ok().map(|p| p.t)
}

impl Codec for MqttCodec {
    fn send(
        &self,
        _device: &Device,
        _k: u64,
        t: u64,
        target: Target<'_>,
        padding: &str,
        _cross: bool,
    ) -> Message {
        let topic = match target {
            Target::To(peer) => &*peer.address,
            Target::Group(g) => g,
        };
        let mut payload = String::with_capacity(32 + padding.len());
        // Writing to a String cannot fail.
        let _ = write!(payload, r#"{{"t":{t},"p":"{padding}"}}"#);
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.into_bytes());
        publish.pkid = self.take_pkid(t);
        // Encoding a publish this small cannot fail; an empty frame would only be a
        // bad frame to the broker.
        encode(&Packet::Publish(publish)).unwrap_or_else(|_| Message::binary(Vec::new()))
    }

    fn receive(&self, device: &Device, msg: &Message, stats: &Stats, replies: &mut Vec<Message>) {
        let Message::Binary(data) = msg else {
            stats.bad_frames.fetch_add(1, Relaxed);
            return;
        };
        let mut packets = Vec::new();
        {
            let mut s = self.lock();
            s.buf.extend_from_slice(data);
            loop {
                match Packet::read(&mut s.buf, MAX_PACKET) {
                    Ok(p) => packets.push(p),
                    Err(MqttError::InsufficientBytes(_)) => break,
                    Err(_) => {
                        stats.bad_frames.fetch_add(1, Relaxed);
                        s.buf.clear();
                        break;
                    }
                }
            }
        }
        for p in packets {
            self.on_packet(device, p, stats, replies);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Peer, Route};

    fn device(topic: &str) -> Device {
        Device {
            index: 3,
            address: topic.into(),
            node: 0,
            nodes: 1,
            route: Route::Random,
        }
    }

    fn bytes(m: &Message) -> Vec<u8> {
        match m {
            Message::Binary(b) => b.to_vec(),
            other => panic!("not binary: {other:?}"),
        }
    }

    #[test]
    fn publish_puback_and_delivery_round_trip() {
        let stats = Stats::new(1).expect("stats");
        stats.set_measure_start(0);
        let sender = MqttCodec::default();
        let to = Peer {
            address: topic_of("r", 7).into(),
            node: 0,
        };
        let frame = sender.send(&device("lg/r/3"), 0, 1234, Target::To(&to), "xx", false);
        // The addressee decodes it (split over two frames), records the delivery and
        // PUBACKs it back.
        let raw = bytes(&frame);
        let receiver = MqttCodec::default();
        let mut replies = Vec::new();
        let (a, b) = raw.split_at(5);
        receiver.receive(
            &device("lg/r/7"),
            &Message::binary(a.to_vec()),
            &stats,
            &mut replies,
        );
        assert_eq!(stats.delivered.load(Relaxed), 0);
        receiver.receive(
            &device("lg/r/7"),
            &Message::binary(b.to_vec()),
            &stats,
            &mut replies,
        );
        assert_eq!(stats.delivered.load(Relaxed), 1);
        assert_eq!(replies.len(), 1);
        // The broker's PUBACK to the sender (same packet id) is its ack.
        let mut buf = BytesMut::from(&raw[..]);
        let Ok(Packet::Publish(p)) = Packet::read(&mut buf, MAX_PACKET) else {
            panic!("not a publish");
        };
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(payload_time(&p.payload), Some(1234));
        let puback = encode(&Packet::PubAck(PubAck::new(p.pkid))).expect("encode");
        sender.receive(&device("lg/r/3"), &puback, &stats, &mut replies);
        assert_eq!(stats.acked.load(Relaxed), 1);
        // A second PUBACK for the same id is not a second ack.
        sender.receive(&device("lg/r/3"), &puback, &stats, &mut replies);
        assert_eq!(stats.acked.load(Relaxed), 1);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let c = MqttCodec::default();
        c.lock().next = u16::MAX;
        assert_eq!(c.take_pkid(1), u16::MAX);
        assert_eq!(c.take_pkid(2), 1);
        c.lock().next = 1;
        assert_eq!(c.take_pkid(3), 2);
    }
}
