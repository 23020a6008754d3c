//! The device session: one actor per device (one phone-number endpoint).
//!
//! It owns the device's client connections, online state and last seen, its rate
//! budgets, its recent request ids (idempotent resends) and its inbox seq counter: it is
//! the single writer of its inbox order. Sends are pipelined: the session assigns ids
//! and seqs, queues rows with the persistence pool and moves on; the ack goes out when
//! the sender's copy and every recipient's row are durable.

mod gauge;
mod limiter;
pub mod routing;
mod tracker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use protocol::rest::{Contact, MessageAccepted};
use protocol::{ErrorCode, MessageRef, Priority, ServerFrame, Target};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

pub use gauge::{GaugeReading, SessionGauge};
pub use limiter::TierLimiter;
use tracker::{RowGuard, SendTracker};

use crate::clock::now_ms;
use crate::conn::{ConnHandle, Frame, Push};
use crate::limits::{Scope, TokenBucket};
use crate::metrics::{secs_since_ms, CachedEntry, SessionMetrics};
use crate::stats::Stats;
use crate::store::{DeviceRecord, InboxEntry};
use crate::tenant::TenantMsg;
use crate::Env;

/// The device session actor.
pub struct DeviceSession;

/// Arguments of a device session.
pub struct DeviceArgs {
    /// Shared context.
    pub env: Arc<Env>,
    /// The device.
    pub device: DeviceRecord,
    /// Its supervisor.
    pub tenant: ActorRef<TenantMsg>,
    /// Where the session publishes its live counters (read by the admin tree).
    pub gauge: Arc<SessionGauge>,
}

/// A refused request, as REST and WebSocket report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
    /// For `rate_limited`.
    pub retry_after_ms: Option<u64>,
}

impl SendError {
    /// An error without retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SendError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// One send request, from a WebSocket frame or REST.
#[derive(Debug)]
pub struct SendRequest {
    /// Client request id (idempotency key).
    pub client_id: Option<String>,
    /// Recipient.
    pub target: Target,
    /// Raw JSON object.
    pub body: Arc<str>,
    /// Rate tier.
    pub priority: Priority,
}

/// Where the answer to a send goes.
#[derive(Debug)]
pub enum Responder {
    /// The connection with this id gets an `ack` / `error` frame.
    Conn(u64),
    /// A REST handler waits for it.
    Rest(oneshot::Sender<Result<MessageAccepted, SendError>>),
}

/// A message on its way, shared by every inbox row it lands in.
#[derive(Debug)]
pub struct Outgoing {
    /// Message id.
    pub message_id: Arc<str>,
    /// Acceptance time.
    pub ts: i64,
    /// Sender address.
    pub from: Arc<str>,
    /// Recipient address (1:1).
    pub to: Option<Arc<str>>,
    /// Group id.
    pub group: Option<Arc<str>>,
    /// Raw JSON body.
    pub body: Arc<str>,
}

impl Outgoing {
    fn row(&self, device_id: &Arc<str>, seq: u64, client_id: Option<String>) -> InboxEntry {
        InboxEntry {
            device_id: device_id.clone(),
            seq,
            message_id: self.message_id.clone(),
            ts: self.ts,
            from: self.from.clone(),
            to: self.to.clone(),
            group: self.group.clone(),
            body: self.body.clone(),
            client_id,
        }
    }

    fn frame(&self, seq: u64) -> Frame {
        MessageRef {
            message_id: &self.message_id,
            seq,
            ts: self.ts,
            from: &self.from,
            to: self.to.as_deref(),
            group: self.group.as_deref(),
            body: &self.body,
        }
        .encode()
        .into()
    }
}

/// A session's live view, for GET device and the admin tree.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Connected clients.
    pub connections: usize,
    /// Last time a client was connected.
    pub last_seen: Option<i64>,
    /// Highest assigned seq.
    pub last_seq: u64,
    /// Messages this device sent.
    pub messages_out: u64,
    /// Messages delivered into its inbox.
    pub messages_in: u64,
}

/// Whose copy a committed inbox row is, which decides who gets it live.
#[derive(Debug, Clone, Copy)]
pub enum Audience {
    /// A received message: every connection gets it (and it counts as delivered).
    Recipient,
    /// The sender's own copy: its other connections get it, not the one that sent it.
    SenderCopy {
        /// The sending connection (none for a REST send).
        origin: Option<u64>,
    },
}

/// Messages of a device session.
pub enum DeviceMsg {
    /// A client connected; answers the inbox's last seq.
    Attach(ConnHandle, RpcReplyPort<Result<u64, SendError>>),
    /// A client went away.
    Detach(u64),
    /// This device sends a message.
    Send(SendRequest, Responder),
    /// A message for this device's inbox.
    Deliver(Arc<Outgoing>, RowGuard),
    /// An inbox row is durable: push it live to the audience's connections.
    Committed(Arc<Outgoing>, u64, Audience),
    /// Every row of send `key` is durable (true) or one failed (false).
    SendDone(u64, bool),
    /// Push an encoded frame (status, typing) to every connection.
    Push(Frame),
    /// Close every connection with this code.
    Kick(u16),
    /// Live view.
    Info(RpcReplyPort<SessionInfo>),
    /// Periodic: stop when idle long enough.
    IdleCheck,
    /// Move frames waiting behind full connection channels; cut off stalled readers.
    FlushOutbound,
    /// The device's contacts, from the session's cache (loaded on a miss).
    Contacts(RpcReplyPort<Result<Arc<Vec<Contact>>, SendError>>),
    /// The stored contacts changed: drop the cached copy.
    InvalidateContacts,
    /// Test hook: panic inside the session (only when test hooks are enabled).
    InjectPanic,
    /// Admin tree: answers how long this message waited in the mailbox (µs), given
    /// when it was sent. ractor does not expose mailbox length; this wait is the
    /// observable backlog.
    MailboxProbe(Instant, RpcReplyPort<u64>),
}

enum Recent {
    Pending(u64),
    Done(MessageAccepted),
    /// Found in the store at start: the sender's copy is durable, but whether every
    /// recipient's row is was not known when the previous incarnation stopped.
    Recovered(MessageAccepted),
}

struct PendingSend {
    /// When the session received the send (ack latency).
    received: Instant,
    /// Completing a recovered send: on failure it stays recovered.
    recovered: bool,
    client_id: Option<String>,
    answer: MessageAccepted,
    responders: Vec<Responder>,
}

/// State of a device session.
pub struct DeviceState {
    env: Arc<Env>,
    me: ActorRef<DeviceMsg>,
    flush_scheduled: bool,
    device: DeviceRecord,
    address: Arc<str>,
    id: Arc<str>,
    tenant: ActorRef<TenantMsg>,
    conns: Vec<ConnHandle>,
    last_seen: Option<i64>,
    next_seq: u64,
    limiter: TierLimiter,
    pairs: HashMap<String, TokenBucket>,
    recent: HashMap<String, Recent>,
    recent_order: VecDeque<String>,
    pending: HashMap<u64, PendingSend>,
    next_key: u64,
    idle_since: Instant,
    stopping: bool,
    messages_in: u64,
    messages_out: u64,
    contacts: Option<Arc<Vec<Contact>>>,
    /// Counts the cached contact list in the cache-size gauge while it is held.
    contacts_entry: Option<CachedEntry>,
    /// Tenant-labelled message counters, registered once per session start.
    metrics: SessionMetrics,
    gauge: Arc<SessionGauge>,
}

#[ractor::async_trait]
impl Actor for DeviceSession {
    type Msg = DeviceMsg;
    type State = DeviceState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DeviceMsg>,
        args: DeviceArgs,
    ) -> Result<DeviceState, ActorProcessingErr> {
        let env = args.env;
        Ok(DeviceState {
            me: myself,
            flush_scheduled: false,
            limiter: TierLimiter::new(env.settings.rate_per_minute),
            pairs: HashMap::new(),
            address: args.device.address.as_str().into(),
            id: args.device.id.as_str().into(),
            last_seen: args.device.last_seen,
            metrics: SessionMetrics::new(&args.device.tenant_id),
            device: args.device,
            tenant: args.tenant,
            conns: Vec::new(),
            next_seq: 1,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            pending: HashMap::new(),
            next_key: 0,
            idle_since: Instant::now(),
            stopping: false,
            messages_in: 0,
            messages_out: 0,
            contacts: None,
            contacts_entry: None,
            gauge: args.gauge,
            env,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<DeviceMsg>,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        // Rows a previous incarnation queued must be durable before we read the last seq,
        // or we would hand out a seq twice.
        let env = state.env.clone();
        env.persistence.barrier(&state.device.id).await;
        state.next_seq = env.store.last_seq(&state.device.id).await? + 1;
        let window = env.settings.idempotency_window;
        let mut recent = env
            .store
            .recent_client_ids(&state.device.id, window)
            .await?;
        recent.reverse();
        for r in recent {
            let answer = MessageAccepted {
                message_id: r.message_id,
                seq: r.seq,
                ts: r.ts,
            };
            state.remember(r.client_id, Recent::Recovered(answer));
        }
        let period = (env.settings.session_idle / 2).max(std::time::Duration::from_millis(200));
        myself.send_interval(period, || DeviceMsg::IdleCheck);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        let result = self.handle_msg(myself, msg, state).await;
        state.gauge.publish(state);
        result
    }
}

impl DeviceSession {
    async fn handle_msg(
        &self,
        myself: ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeviceMsg::Attach(conn, reply) => {
                if state.stopping {
                    let _ = reply.send(Err(SendError::new(
                        ErrorCode::Unavailable,
                        "session stopping",
                    )));
                } else {
                    state.conns.push(conn);
                    state.touch_last_seen();
                    let _ = reply.send(Ok(state.next_seq - 1));
                }
            }
            DeviceMsg::Detach(conn_id) => {
                state.conns.retain(|c| c.id != conn_id);
                if state.conns.is_empty() {
                    state.idle_since = Instant::now();
                    state.touch_last_seen();
                }
            }
            DeviceMsg::Send(req, responder) => state.send(&myself, req, responder).await,
            DeviceMsg::Deliver(outgoing, guard) => {
                state.messages_in += 1;
                let seq = state.assign_seq();
                let row = outgoing.row(&state.id, seq, None);
                let me = myself.clone();
                state.env.persistence.append(
                    row,
                    Box::new(move |result| {
                        let ok = result.is_ok();
                        guard.complete(&result);
                        if ok {
                            let _ =
                                me.cast(DeviceMsg::Committed(outgoing, seq, Audience::Recipient));
                        }
                    }),
                );
            }
            DeviceMsg::Committed(outgoing, seq, audience) => {
                if !state.conns.is_empty() {
                    let frame = outgoing.frame(seq);
                    let (exclude, received) = match audience {
                        Audience::Recipient => (None, true),
                        Audience::SenderCopy { origin } => (origin, false),
                    };
                    let pushed = state.push_all(frame, exclude);
                    if pushed > 0 && received {
                        Stats::inc(&state.env.stats.messages_delivered);
                        state.metrics.delivered.increment(1);
                        state
                            .env
                            .stats
                            .metrics
                            .delivery_latency
                            .record(secs_since_ms(outgoing.ts));
                    }
                }
            }
            DeviceMsg::SendDone(key, ok) => state.finish_send(key, ok),
            DeviceMsg::Push(frame) => {
                state.push_all(frame, None);
            }
            DeviceMsg::Kick(code) => {
                for conn in state.conns.drain(..) {
                    conn.close.close(code);
                }
                state.idle_since = Instant::now();
                state.touch_last_seen();
            }
            DeviceMsg::Info(reply) => {
                let _ = reply.send(SessionInfo {
                    connections: state.conns.len(),
                    last_seen: state.last_seen,
                    last_seq: state.next_seq - 1,
                    messages_out: state.messages_out,
                    messages_in: state.messages_in,
                });
            }
            DeviceMsg::IdleCheck => {
                let idle = state.conns.is_empty()
                    && state.pending.is_empty()
                    && state.idle_since.elapsed() >= state.env.settings.session_idle;
                if idle && !state.stopping {
                    state.stopping = true;
                    state
                        .env
                        .directory
                        .unregister(&state.device.id, &myself.get_cell());
                    let _ = state
                        .tenant
                        .cast(TenantMsg::Stopping(state.device.id.clone()));
                    let _ = myself.drain();
                }
            }
            DeviceMsg::Contacts(reply) => {
                let stats = &state.env.stats;
                let result = match &state.contacts {
                    Some(c) => {
                        Stats::inc(&stats.contact_cache_hits);
                        stats.metrics.contacts.hit();
                        Ok(c.clone())
                    }
                    None => {
                        Stats::inc(&stats.contact_cache_misses);
                        stats.metrics.contacts.miss();
                        match state.env.store.list_contacts(&state.device.id).await {
                            Ok(list) => {
                                let list = Arc::new(list);
                                state.contacts = Some(list.clone());
                                state.contacts_entry = Some(CachedEntry::contact_list(&state.env));
                                Ok(list)
                            }
                            Err(e) => Err(SendError::new(ErrorCode::Unavailable, e.to_string())),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            DeviceMsg::InvalidateContacts => {
                state.contacts = None;
                state.contacts_entry = None;
            }
            DeviceMsg::FlushOutbound => {
                state.flush_scheduled = false;
                state.check_conns();
            }
            DeviceMsg::InjectPanic => {
                if state.env.test_hooks {
                    panic!("panic injected into device session {}", state.device.id);
                }
            }
            DeviceMsg::MailboxProbe(sent, reply) => {
                let _ = reply.send(sent.elapsed().as_micros() as u64);
            }
        }
        Ok(())
    }
}

impl DeviceState {
    fn assign_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn touch_last_seen(&mut self) {
        let now = now_ms();
        self.last_seen = Some(now);
        let store = self.env.store.clone();
        let id = self.device.id.clone();
        tokio::spawn(async move {
            if let Err(e) = store.set_last_seen(&id, now).await {
                tracing::warn!(device_id = %id, error = %e, "could not record last seen");
            }
        });
    }

    fn remember(&mut self, client_id: String, entry: Recent) {
        if self.recent.insert(client_id.clone(), entry).is_none() {
            self.recent_order.push_back(client_id);
            while self.recent_order.len() > self.env.settings.idempotency_window {
                if let Some(old) = self.recent_order.pop_front() {
                    if !matches!(self.recent.get(&old), Some(Recent::Pending(_))) {
                        self.recent.remove(&old);
                    } else {
                        // Still in flight: keep it, it is answered soon.
                        self.recent_order.push_back(old);
                        break;
                    }
                }
            }
        }
    }

    /// Queues a frame on every connection but `exclude`. Returns how many took it.
    fn push_all(&mut self, frame: Frame, exclude: Option<u64>) -> usize {
        let mut pushed = 0;
        for conn in &mut self.conns {
            if Some(conn.id) != exclude && conn.push(frame.clone()) == Push::Queued {
                pushed += 1;
            }
        }
        self.check_conns();
        pushed
    }

    /// Drains overflow queues, cuts off stalled readers (4408), and schedules another
    /// pass while frames still wait.
    fn check_conns(&mut self) {
        let stall = self.env.settings.slow_consumer;
        let hard_cap = self.env.settings.outbound_buffer.saturating_mul(8);
        let stats = &self.env.stats;
        let mut waiting = false;
        let before = self.conns.len();
        self.conns.retain_mut(|conn| {
            if conn.waiting() == 0 || !conn.flush() {
                return true;
            }
            if conn.is_stuck(stall, hard_cap) {
                conn.close.close(protocol::error::close::TOO_SLOW);
                Stats::inc(&stats.slow_consumers);
                return false;
            }
            waiting = true;
            true
        });
        if before > 0 && self.conns.is_empty() {
            self.idle_since = Instant::now();
        }
        if waiting && !self.flush_scheduled {
            self.flush_scheduled = true;
            self.me.send_after(std::time::Duration::from_millis(5), || {
                DeviceMsg::FlushOutbound
            });
        }
    }

    fn respond(
        &mut self,
        responder: Responder,
        client_id: Option<&str>,
        result: Result<MessageAccepted, SendError>,
    ) {
        match responder {
            Responder::Rest(tx) => {
                let _ = tx.send(result);
            }
            Responder::Conn(conn_id) => {
                let frame = match &result {
                    Ok(a) => ServerFrame::Ack {
                        id: client_id,
                        message_id: &a.message_id,
                        seq: a.seq,
                        ts: a.ts,
                    }
                    .encode(),
                    Err(e) => ServerFrame::Error {
                        id: client_id,
                        code: e.code,
                        message: &e.message,
                        retry_after_ms: e.retry_after_ms,
                    }
                    .encode(),
                };
                if let Some(conn) = self.conns.iter_mut().find(|c| c.id == conn_id) {
                    conn.push(frame.into());
                    self.check_conns();
                }
            }
        }
    }

    async fn send(&mut self, myself: &ActorRef<DeviceMsg>, req: SendRequest, responder: Responder) {
        let received = Instant::now();
        let client_id = req.client_id.clone();
        if let Some(id) = &client_id {
            match self.recent.get(id) {
                Some(Recent::Done(answer)) => {
                    let answer = answer.clone();
                    self.respond(responder, Some(id), Ok(answer));
                    return;
                }
                Some(Recent::Pending(key)) => {
                    if let Some(p) = self.pending.get_mut(key) {
                        p.responders.push(responder);
                        return;
                    }
                }
                Some(Recent::Recovered(answer)) => {
                    let answer = answer.clone();
                    self.complete_recovered(myself, id.clone(), answer, responder)
                        .await;
                    return;
                }
                None => {}
            }
        }
        if let Err(wait) = self.limiter.check(req.priority) {
            Stats::inc(&self.env.stats.rate_limited);
            self.env.stats.metrics.rate_limited_device.increment(1);
            let err = SendError {
                code: ErrorCode::RateLimited,
                message: format!("over the {:?} budget for this device", req.priority)
                    .to_lowercase(),
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            self.respond(responder, client_id.as_deref(), Err(err));
            return;
        }
        if let Err(err) = self.check_shared_budgets(&req) {
            self.limiter.refund(req.priority);
            Stats::inc(&self.env.stats.rate_limited);
            self.respond(responder, client_id.as_deref(), Err(err));
            return;
        }
        let recipients = match routing::recipients(&self.env, &self.device, &req.target).await {
            Ok(r) => r,
            Err(e) => {
                self.respond(responder, client_id.as_deref(), Err(e));
                return;
            }
        };
        let (to, group) = match &req.target {
            Target::To(a) => (Some(Arc::from(a.as_str())), None),
            Target::Group(g) => (None, Some(Arc::from(g.as_str()))),
        };
        let outgoing = Arc::new(Outgoing {
            message_id: format!("m_{}", ulid::Ulid::new()).into(),
            ts: now_ms(),
            from: self.address.clone(),
            to,
            group,
            body: req.body,
        });
        let seq = self.assign_seq();
        let key = self.next_key;
        self.next_key += 1;
        self.messages_out += 1;
        self.metrics.sent.increment(1);
        let answer = MessageAccepted {
            message_id: outgoing.message_id.to_string(),
            seq,
            ts: outgoing.ts,
        };
        let origin = match &responder {
            Responder::Conn(id) => Some(*id),
            Responder::Rest(_) => None,
        };
        self.pending.insert(
            key,
            PendingSend {
                received,
                recovered: false,
                client_id: client_id.clone(),
                answer,
                responders: vec![responder],
            },
        );
        if let Some(id) = client_id.clone() {
            self.remember(id, Recent::Pending(key));
        }
        let tracker = SendTracker::new(recipients.len() + 1, myself.clone(), key);
        let own = RowGuard::new(&tracker);
        let me = myself.clone();
        let echo = outgoing.clone();
        self.env.persistence.append(
            outgoing.row(&self.id, seq, client_id),
            Box::new(move |result| {
                let ok = result.is_ok();
                own.complete(&result);
                if ok {
                    // The sender's other connections see their own sent message.
                    let _ = me.cast(DeviceMsg::Committed(
                        echo,
                        seq,
                        Audience::SenderCopy { origin },
                    ));
                }
            }),
        );
        self.deliver_rows(&tracker, &outgoing, recipients).await;
    }

    /// Hands `outgoing` to each recipient's session, each row tracked by `tracker`.
    async fn deliver_rows(
        &self,
        tracker: &Arc<SendTracker>,
        outgoing: &Arc<Outgoing>,
        recipients: Vec<String>,
    ) {
        for device_id in recipients {
            let guard = RowGuard::for_recipient(tracker, &self.env, &device_id, outgoing);
            let msg = DeviceMsg::Deliver(outgoing.clone(), guard);
            if let Err(e) = self.env.directory.deliver(&device_id, msg).await {
                // The guard was dropped with the message: it is delivered again or
                // the send reports a failure.
                tracing::warn!(%device_id, error = %e, "could not route message");
            }
        }
    }

    /// The budgets above the device tier: the device→recipient pair (when on), the
    /// tenant and the global one. Takes a token from each or from none.
    fn check_shared_budgets(&mut self, req: &SendRequest) -> Result<(), SendError> {
        let limited = |what: &str, wait: std::time::Duration| SendError {
            code: ErrorCode::RateLimited,
            message: format!("over the {what} budget"),
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        };
        let pair_rate = self.env.settings.pair_rate_per_minute;
        let pair_key = match &req.target {
            Target::To(a) if pair_rate > 0 => Some(a.as_str()),
            _ => None,
        };
        if let Some(to) = pair_key {
            if self.pairs.len() > 4096 {
                self.pairs.retain(|_, b| !b.is_full());
            }
            let bucket = match self.pairs.get_mut(to) {
                Some(b) => b,
                None => self
                    .pairs
                    .entry(to.to_owned())
                    .or_insert_with(|| TokenBucket::spaced(pair_rate)),
            };
            if let Err(w) = bucket.try_take() {
                self.env.stats.metrics.rate_limited_device.increment(1);
                return Err(limited("per-recipient", w));
            }
        }
        if let Err((scope, wait)) = self.env.limits.acquire(&self.device.tenant_id) {
            if let Some(b) = pair_key.and_then(|to| self.pairs.get_mut(to)) {
                b.refund();
            }
            let metrics = &self.env.stats.metrics;
            let what = match scope {
                Scope::Tenant => {
                    metrics.rate_limited_tenant.increment(1);
                    "tenant"
                }
                Scope::Global => {
                    metrics.rate_limited_global.increment(1);
                    "server-wide"
                }
            };
            return Err(limited(what, wait));
        }
        Ok(())
    }

    /// A resend of a request id found in the store at start. The previous incarnation
    /// may have stopped (crash, kill) after the sender's copy was durable but before
    /// every recipient's row was: deliver the same message, same id, to each recipient
    /// whose inbox lacks it, then answer with the original ack. Nothing is duplicated.
    async fn complete_recovered(
        &mut self,
        myself: &ActorRef<DeviceMsg>,
        client_id: String,
        answer: MessageAccepted,
        responder: Responder,
    ) {
        let unavailable =
            |e: crate::store::StoreError| SendError::new(ErrorCode::Unavailable, e.to_string());
        let store = self.env.store.clone();
        let own = match store.inbox_entry(&self.device.id, &answer.message_id).await {
            Ok(own) => own,
            Err(e) => return self.respond(responder, Some(&client_id), Err(unavailable(e))),
        };
        let target = own.as_ref().and_then(|own| match (&own.to, &own.group) {
            (Some(to), _) => Some(Target::To(to.to_string())),
            (None, Some(group)) => Some(Target::Group(group.to_string())),
            (None, None) => None,
        });
        // A target that no longer resolves (device or group gone) has nothing to complete.
        let recipients = match &target {
            Some(t) => routing::recipients(&self.env, &self.device, t)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut missing = Vec::new();
        for device_id in recipients {
            match store.inbox_entry(&device_id, &answer.message_id).await {
                Ok(Some(_)) => {}
                Ok(None) => missing.push(device_id),
                Err(e) => return self.respond(responder, Some(&client_id), Err(unavailable(e))),
            }
        }
        let own = match own {
            Some(own) if !missing.is_empty() => own,
            _ => {
                self.recent
                    .insert(client_id.clone(), Recent::Done(answer.clone()));
                return self.respond(responder, Some(&client_id), Ok(answer));
            }
        };
        tracing::info!(device_id = %self.device.id, message_id = %answer.message_id, recipients = missing.len(), "completing a send interrupted by a restart");
        let outgoing = Arc::new(Outgoing {
            message_id: own.message_id.clone(),
            ts: own.ts,
            from: own.from.clone(),
            to: own.to.clone(),
            group: own.group.clone(),
            body: own.body.clone(),
        });
        let key = self.next_key;
        self.next_key += 1;
        self.pending.insert(
            key,
            PendingSend {
                received: Instant::now(),
                recovered: true,
                client_id: Some(client_id.clone()),
                answer,
                responders: vec![responder],
            },
        );
        self.recent.insert(client_id, Recent::Pending(key));
        let tracker = SendTracker::new(missing.len(), myself.clone(), key);
        self.deliver_rows(&tracker, &outgoing, missing).await;
    }

    fn finish_send(&mut self, key: u64, ok: bool) {
        let Some(p) = self.pending.remove(&key) else {
            return;
        };
        let result = if ok {
            Stats::inc(&self.env.stats.messages_acked);
            self.metrics.acked.increment(1);
            self.env
                .stats
                .metrics
                .ack_latency
                .record(p.received.elapsed().as_secs_f64());
            Ok(p.answer.clone())
        } else {
            Err(SendError::new(
                ErrorCode::Unavailable,
                "the message could not be stored; retry with the same id",
            ))
        };
        if let Some(id) = &p.client_id {
            if ok {
                self.recent
                    .insert(id.clone(), Recent::Done(p.answer.clone()));
            } else if p.recovered {
                self.recent
                    .insert(id.clone(), Recent::Recovered(p.answer.clone()));
            } else {
                self.recent.remove(id);
            }
        }
        for responder in p.responders {
            self.respond(responder, p.client_id.as_deref(), result.clone());
        }
    }
}
