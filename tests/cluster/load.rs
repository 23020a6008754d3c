//! A bounded load for the fault tests: sender devices, each with one send in flight,
//! that reconnect to another node when theirs goes away and resend what was not acked
//! under the same client request id (so a retry never makes a second copy).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Device, Tenant, Ws};
use crate::harness::Tally;

/// Where a sender may connect: the ws bases of the nodes, tried in turn.
#[derive(Clone)]
pub struct Route {
    pub ws_bases: Vec<String>,
}

/// One sender's outcome.
#[derive(Default, Debug)]
pub struct SenderTally {
    pub sent: u64,
    pub acked: BTreeMap<String, Value>,
    pub refused: u64,
    pub reconnects: u64,
    /// Why the first connections were lost.
    pub losses: Vec<String>,
    /// Refusals by error code and message.
    pub refusals: BTreeMap<String, u64>,
}

enum Answer {
    Ack(Value),
    Refused(Value),
    Lost(String),
}

async fn connect_any(token: &str, route: &Route, start: usize, until: Instant) -> (Ws, usize) {
    let mut i = start;
    loop {
        let base = &route.ws_bases[i % route.ws_bases.len()];
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(format!("{base}/v1/ws?token={token}")),
        )
        .await;
        if let Ok(Ok((stream, _))) = attempt {
            let mut ws = Ws {
                stream,
                ready: Value::Null,
            };
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_secs(5), ws.stream.next()).await
            {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["type"] == "ready" {
                    ws.ready = v;
                    return (ws, i);
                }
            }
        }
        assert!(
            Instant::now() < until,
            "no node took the connection in time"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send_once(ws: &mut Ws, id: &str, to: &str, body: &Value) -> Answer {
    let frame = json!({"type": "send", "id": id, "to": to, "body": body});
    if let Err(e) = ws.stream.send(Message::text(frame.to_string())).await {
        return Answer::Lost(format!("send: {e}"));
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.stream.next()).await {
            Err(_) => return Answer::Lost("no answer in 20 s".into()),
            Ok(None) => return Answer::Lost("stream ended".into()),
            Ok(Some(Err(e))) => return Answer::Lost(format!("socket: {e}")),
            Ok(Some(Ok(Message::Close(c)))) => return Answer::Lost(format!("closed {c:?}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] != id {
                    continue;
                }
                match v["type"].as_str() {
                    Some("ack") => return Answer::Ack(v),
                    Some("error") => return Answer::Refused(v),
                    _ => continue,
                }
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Sends `count` messages from `from` to the recipients in turn, one at a time, until
/// all are acked or `until`; stops early (leaving the rest unsent) when `stop` is set.
#[allow(clippy::too_many_arguments)]
pub async fn run_sender(
    tenant: Tenant,
    from: Device,
    to: Vec<Device>,
    count: usize,
    route: Route,
    first_node: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    until: Instant,
) -> SenderTally {
    let token = tenant.token(&from).await;
    let mut tally = SenderTally::default();
    let (mut ws, mut node) = connect_any(&token, &route, first_node, until).await;
    for k in 0..count {
        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
            break;
        }
        let id = format!("{}-{k}", from.id);
        let recipient = &to[k % to.len()];
        let body = json!({"from": from.id, "k": k});
        tally.sent += 1;
        loop {
            if Instant::now() >= until {
                return tally;
            }
            match send_once(&mut ws, &id, &recipient.address, &body).await {
                Answer::Ack(mut ack) => {
                    ack["to"] = json!(recipient.address);
                    tally.acked.insert(id.clone(), ack);
                    acks.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Answer::Refused(e) => {
                    // Not acked: try again with the same id (it may have been stored).
                    tally.refused += 1;
                    let why = format!("{} {}", e["code"], e["message"]);
                    *tally.refusals.entry(why).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Answer::Lost(why) => {
                    tally.reconnects += 1;
                    if tally.losses.len() < 3 {
                        tally.losses.push(why);
                    }
                    let (again, at) = connect_any(&token, &route, node + 1, until).await;
                    ws = again;
                    node = at;
                }
            }
        }
    }
    tally
}

/// Adds a sender's tally into the run's.
pub fn add(total: &mut Tally, one: SenderTally) {
    total.sent += one.sent;
    total.refused += one.refused;
    total.acked.extend(one.acked);
}
