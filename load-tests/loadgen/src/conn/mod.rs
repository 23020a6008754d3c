//! One connection's task, shared by every scenario and by both protocols: a reader that
//! hands each received frame to the protocol's [`Codec`] (which records acks, errors and
//! deliveries and may ask for frames to be sent back: a PUBACK, the next `sync` page),
//! and a writer that sends those replies and this connection's share of the send
//! schedule ([`Plan`]), until the run closes, a deadline passes (a reconnect in the
//! soak) or the connection breaks. The pacing, batching and bookkeeping are the same for
//! Switchboard and MQTT, so both servers see the same client.

pub mod frames;
pub mod mqtt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{now_us, Stats};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the TCP/WebSocket handshake and then for the first answer.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most frames written in one go before flushing and yielding.
const MAX_BATCH: u64 = 256;

/// How long a connection that is leaving waits for the server's close frame.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Small WebSocket buffers: the defaults (128 KiB each) would be > 2 GiB at 10,000
/// connections.
pub fn ws_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 8 * 1024;
    config.write_buffer_size = 16 * 1024;
    config
}

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

/// A connected device (or MQTT client) as a recipient.
#[derive(Clone)]
pub struct Peer {
    /// Its address (MQTT: its topic).
    pub address: Arc<str>,
    /// The node its connection is on.
    pub node: usize,
}

/// The send schedule shared by all connections.
pub struct Plan {
    /// All connected devices (1:1 recipients are drawn from here).
    pub peers: Vec<Peer>,
    /// When sending starts (warm-up included).
    pub start: Instant,
    /// When sending stops.
    pub end: Instant,
    /// Messages per second each sending connection sends.
    pub per_conn_rate: f64,
    /// The `p` field of every body.
    pub padding: String,
}

/// Whom a connection sends to.
#[derive(Clone)]
pub enum Route {
    /// 1:1, each send to a random other peer of the plan.
    Random,
    /// A member of a group: sends to the group when `sender`; each send calls for
    /// `fanout` deliveries (the group's other connected members, set once connected).
    Group {
        /// The group id.
        id: Arc<str>,
        /// Deliveries per send.
        fanout: Arc<AtomicU64>,
        /// Whether this member sends.
        sender: bool,
    },
}

/// Identity of one connection.
#[derive(Clone)]
pub struct Device {
    /// Index of the device (0..N); part of every request id.
    pub index: usize,
    /// Its address (MQTT: its topic).
    pub address: Arc<str>,
    /// The node it is connected to (`index mod nodes`).
    pub node: usize,
    /// How many nodes the run spreads devices over.
    pub nodes: usize,
    /// Whom it sends to.
    pub route: Route,
}

impl Device {
    /// Deliveries one of its sends calls for.
    pub fn fanout(&self) -> u64 {
        match &self.route {
            Route::Random => 1,
            Route::Group { fanout, .. } => fanout.load(Relaxed),
        }
    }

    fn sends(&self) -> bool {
        match &self.route {
            Route::Random => true,
            Route::Group { sender, .. } => *sender,
        }
    }
}

/// The address of device `index`.
pub fn address_of(index: usize) -> String {
    format!("+1555{index:07}")
}

/// The index of the device with `address`, if it is one of loadgen's.
pub fn index_of(address: &str) -> Option<usize> {
    address.strip_prefix("+1555")?.parse().ok()
}

/// The addressee of one send.
pub enum Target<'a> {
    /// One peer.
    To(&'a Peer),
    /// A group (by id).
    Group(&'a str),
}

/// What a protocol puts on the wire and makes of what comes back.
pub trait Codec: Send + Sync {
    /// The frame of `device`'s `k`-th send of a plan, written at Unix µs `t`
    /// (`cross`: to a device connected to another node).
    fn send(
        &self,
        device: &Device,
        k: u64,
        t: u64,
        target: Target<'_>,
        padding: &str,
        cross: bool,
    ) -> Message;

    /// Records what one received text or binary frame says; appends the frames to send
    /// back.
    fn receive(&self, device: &Device, msg: &Message, stats: &Stats, replies: &mut Vec<Message>);

    /// Whether the connection may be left now (false while a `sync` or a send is under
    /// way).
    fn settled(&self) -> bool {
        true
    }
}

/// When a connection should leave by itself (the soak's churn), as decided by the
/// scenario: asked when the connection starts and whenever a [`Leave::Recheck`] time
/// passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Never.
    Never,
    /// Ask again at this time.
    Recheck(Instant),
    /// Leave at this time (as soon as the codec is settled).
    At(Instant),
}

/// A connection that never leaves by itself.
pub fn stay(_now: Instant) -> Leave {
    Leave::Never
}

/// How a connection's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The run closed it ([`Phase::Close`]).
    Closed,
    /// Its [`Leave::At`] time passed and it closed itself.
    Deadline,
    /// The connection broke or the server closed it.
    Broken,
}

/// Serves one connection: `initial` frames first, then replies and the send schedule,
/// until [`Phase::Close`], the time `leave` names or a broken connection; the close
/// handshake is bounded.
pub async fn serve<C: Codec>(
    device: &Device,
    ws: Ws,
    codec: &C,
    phase: watch::Receiver<Phase>,
    stats: &Stats,
    leave: &(dyn Fn(Instant) -> Leave + Sync),
    initial: Vec<Message>,
) -> End {
    let (mut sink, stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let leaving = AtomicBool::new(false);
    let left = Notify::new();
    let reader = read_loop(device, stream, codec, &phase, stats, tx, (&leaving, &left));
    let writer = async {
        let end = write_loop(
            device,
            &mut sink,
            codec,
            phase.clone(),
            stats,
            leave,
            rx,
            initial,
        )
        .await;
        if end != End::Broken {
            leaving.store(true, Relaxed);
            let _ = sink.send(Message::Close(None)).await;
        }
        left.notify_one();
        end
    };
    let ((), end) = tokio::join!(reader, writer);
    end
}

/// Reads frames until the connection ends (or, once the writer left, until the
/// server's close frame or [`LEAVE_TIMEOUT`]).
async fn read_loop<C: Codec>(
    device: &Device,
    mut stream: SplitStream<Ws>,
    codec: &C,
    phase: &watch::Receiver<Phase>,
    stats: &Stats,
    tx: mpsc::UnboundedSender<Message>,
    (leaving, left): (&AtomicBool, &Notify),
) {
    let expected_end = || leaving.load(Relaxed) || matches!(*phase.borrow(), Phase::Close);
    let mut replies = Vec::new();
    let mut leave_by: Option<Instant> = None;
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            () = left.notified(), if leave_by.is_none() => {
                leave_by = Some(Instant::now() + LEAVE_TIMEOUT);
                continue;
            }
            () = sleep_until_opt(leave_by), if leave_by.is_some() => return,
        };
        match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                codec.receive(device, &m, stats, &mut replies);
                for r in replies.drain(..) {
                    let _ = tx.send(r);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                if !expected_end() {
                    let reason = match frame {
                        Some(f) => format!("close {}", u16::from(f.code)),
                        None => "close (no code)".to_owned(),
                    };
                    stats.on_disconnect(reason);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !expected_end() {
                    stats.on_disconnect(format!("error: {e}"));
                }
                return;
            }
            None => return,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `initial`, then replies and the schedule of the current plan.
#[allow(clippy::too_many_arguments)]
async fn write_loop<C: Codec>(
    device: &Device,
    sink: &mut SplitSink<Ws, Message>,
    codec: &C,
    mut phase: watch::Receiver<Phase>,
    stats: &Stats,
    leave: &(dyn Fn(Instant) -> Leave + Sync),
    mut rx: mpsc::UnboundedReceiver<Message>,
    initial: Vec<Message>,
) -> End {
    let mut leaving = leave(Instant::now());
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    for m in initial {
        if sink.feed(m).await.is_err() {
            return End::Broken;
        }
    }
    if sink.flush().await.is_err() {
        return End::Broken;
    }
    let mut sched: Option<Schedule> = None;
    // Set once the leave time passed: no new sends, leave when the codec is settled.
    let mut pausing = false;
    loop {
        let plan = match &*phase.borrow_and_update() {
            Phase::Close => return End::Closed,
            Phase::Idle => None,
            Phase::Send(plan) => Some(plan.clone()),
        };
        match plan {
            None => sched = None,
            Some(plan) => {
                if !sched.as_ref().is_some_and(|s| Arc::ptr_eq(&s.plan, &plan)) {
                    sched = Some(Schedule::new(plan, device, &mut rng));
                }
            }
        }
        let due = sched.as_ref().and_then(Schedule::next_due);
        let deadline = match leaving {
            Leave::Never => None,
            Leave::Recheck(at) | Leave::At(at) => Some(at),
        };
        tokio::select! {
            r = rx.recv() => match r {
                Some(m) => {
                    if write_replies(sink, m, &mut rx).await.is_err() {
                        return End::Broken;
                    }
                }
                None => return End::Broken,
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
            }
            () = sleep_until_opt(due), if due.is_some() && !pausing => {
                if let Some(s) = sched.as_mut() {
                    if s.write_due(device, sink, codec, stats, &mut rng).await.is_err() {
                        stats.write_failures.fetch_add(1, Relaxed);
                        return End::Broken;
                    }
                }
            }
            () = sleep_until_opt(deadline), if deadline.is_some() => {
                leaving = match leaving {
                    Leave::At(_) if codec.settled() => return End::Deadline,
                    // A sync or a send is under way: send nothing new, try again shortly.
                    Leave::At(_) => {
                        pausing = true;
                        Leave::At(Instant::now() + Duration::from_millis(20))
                    }
                    _ => leave(Instant::now()),
                };
            }
        }
    }
}

/// Writes `first` and every other reply already waiting, then flushes.
async fn write_replies(
    sink: &mut SplitSink<Ws, Message>,
    first: Message,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<()> {
    sink.feed(first).await?;
    while let Ok(m) = rx.try_recv() {
        sink.feed(m).await?;
    }
    sink.flush().await?;
    Ok(())
}

/// One connection's progress through a plan. Message k is due at `t0 + k / rate`
/// (`t0`: the plan's start plus a random offset); whatever is due is written in one
/// batch, so coarse timers do not lower the rate. A connection that joins late (a
/// reconnect) starts at the message due now: what fell due while it was away is not
/// sent.
struct Schedule {
    plan: Arc<Plan>,
    t0: Instant,
    rate: f64,
    k: u64,
    done: bool,
}

impl Schedule {
    fn new(plan: Arc<Plan>, device: &Device, rng: &mut SmallRng) -> Schedule {
        let rate = plan.per_conn_rate;
        let idle = rate <= 0.0
            || !device.sends()
            || (matches!(device.route, Route::Random) && plan.peers.len() < 2);
        let period = if rate > 0.0 { 1.0 / rate } else { 1.0 };
        let t0 = plan.start + Duration::from_secs_f64(rng.random::<f64>() * period.min(1.0));
        let mut s = Schedule {
            plan,
            t0,
            rate,
            k: 0,
            done: idle,
        };
        s.k = s.due(Instant::now()).saturating_sub(1);
        s
    }

    /// Messages due by `now` (inclusive).
    fn due(&self, now: Instant) -> u64 {
        if now < self.t0 || self.done {
            0
        } else {
            ((now - self.t0).as_secs_f64() * self.rate) as u64 + 1
        }
    }

    fn next_due(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let at = self.t0 + Duration::from_secs_f64(self.k as f64 / self.rate);
        Some(at.min(self.plan.end))
    }

    async fn write_due<C: Codec>(
        &mut self,
        device: &Device,
        sink: &mut SplitSink<Ws, Message>,
        codec: &C,
        stats: &Stats,
        rng: &mut SmallRng,
    ) -> Result<()> {
        let now = Instant::now();
        if now >= self.plan.end {
            self.done = true;
            return Ok(());
        }
        let due = self.due(now);
        let batch_end = due.min(self.k + MAX_BATCH);
        if self.k >= batch_end {
            return Ok(());
        }
        let plan = self.plan.clone();
        while self.k < batch_end {
            let (target, cross) = match &device.route {
                Route::Group { id, .. } => (Target::Group(id), false),
                Route::Random => {
                    let n = plan.peers.len();
                    let mut i = rng.random_range(0..n);
                    if plan.peers[i].address == device.address {
                        i = (i + 1) % n;
                    }
                    let to = &plan.peers[i];
                    (Target::To(to), to.node != device.node)
                }
            };
            let t = now_us();
            let frame = codec.send(device, self.k, t, target, &plan.padding, cross);
            sink.feed(frame).await?;
            stats.on_sent(t, cross);
            self.k += 1;
        }
        sink.flush().await?;
        if self.k < due {
            // Behind schedule: let other connections run before catching up.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_give_back_their_index() {
        assert_eq!(address_of(42), "+15550000042");
        assert_eq!(index_of(&address_of(1_234_567)), Some(1_234_567));
        assert_eq!(index_of("+4912345"), None);
    }

    fn device(route: Route) -> Device {
        Device {
            index: 0,
            address: "+15550000000".into(),
            node: 0,
            nodes: 1,
            route,
        }
    }

    fn plan(rate: f64, start: Instant, secs: u64) -> Arc<Plan> {
        Arc::new(Plan {
            peers: vec![
                Peer {
                    address: "+15550000000".into(),
                    node: 0,
                },
                Peer {
                    address: "+15550000001".into(),
                    node: 0,
                },
            ],
            start,
            end: start + Duration::from_secs(secs),
            per_conn_rate: rate,
            padding: String::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_paces_and_a_late_joiner_skips_what_it_missed() {
        let mut rng = SmallRng::seed_from_u64(1);
        let start = Instant::now() + Duration::from_secs(1);
        let s = Schedule::new(plan(10.0, start, 10), &device(Route::Random), &mut rng);
        assert_eq!(s.k, 0);
        assert!(s.next_due().is_some_and(|t| t >= start));
        // Joining 5 s into a 10/s plan: about 50 were due; it starts at the one due now.
        let start = Instant::now() - Duration::from_secs(5);
        let s = Schedule::new(plan(10.0, start, 10), &device(Route::Random), &mut rng);
        assert!((49..=50).contains(&s.k), "k = {}", s.k);
        assert_eq!(s.due(Instant::now()), s.k + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn group_members_that_do_not_send_have_no_schedule() {
        let mut rng = SmallRng::seed_from_u64(1);
        let fanout = Arc::new(AtomicU64::new(63));
        let listener = device(Route::Group {
            id: "g".into(),
            fanout: fanout.clone(),
            sender: false,
        });
        let s = Schedule::new(plan(10.0, Instant::now(), 10), &listener, &mut rng);
        assert!(s.next_due().is_none());
        assert_eq!(listener.fanout(), 63);
        assert_eq!(device(Route::Random).fanout(), 1);
    }
}
