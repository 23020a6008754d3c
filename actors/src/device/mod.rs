//! The device session: one actor per device (one phone-number endpoint).
//!
//! It owns the device's client connections, online state and last seen, its rate
//! budgets, its recent request ids (idempotent resends), its inbox seq counter (it is
//! the single writer of its inbox order) and its outbox (the recipient rows of its sends
//! until they are durable). The parts:
//!
//! - `send.rs`: a send from start to ack (idempotency, budgets, fan-out, completion of
//!   an interrupted send);
//! - `outbox.rs`: the sender's side of delivery, in order, with redelivery;
//! - `inbox.rs`: the receiving side: accepting rows in order, seqs, commits, what is
//!   durable, resync after a failed commit;
//! - `receipts.rs`: statuses of sent messages (forward-only, stored in this inbox);
//! - `conns.rs`: pushing frames to the attached connections;
//! - `routing.rs`: who a message, typing indicator or receipt goes to.
//!
//! A session stops when idle only once nothing is in flight (no pending send, no
//! uncommitted row, no outstanding recipient row), so nothing it accepted is dropped.

mod conns;
mod gauge;
mod inbox;
mod limiter;
pub mod outbox;
mod receipts;
pub mod routing;
mod send;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use protocol::rest::MessageAccepted;
use protocol::{ErrorCode, Priority, ReceiptStatus, Target};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use conns::message_frame;
pub use gauge::{GaugeReading, SessionGauge};
pub use inbox::{Committed, Delivery};
pub use limiter::TierLimiter;
pub use outbox::{RowDone, RowGuard, RowOutcome};
pub use receipts::{ReceiptBatch, ReceiptNote};

use crate::conn::{ConnHandle, Frame};
use crate::limits::ControlBudgets;
use crate::metrics::SessionMetrics;
use crate::store::{AcceptedSend, DeviceRecord, MessageRecord};
use crate::tenant::TenantMsg;
use crate::Env;

/// The device session actor.
pub struct DeviceSession;

/// How often sessions without clients are asked whether they have been idle for
/// `session_idle` (and stop if so).
pub fn idle_check_period(settings: &crate::settings::Settings) -> std::time::Duration {
    (settings.session_idle / 2).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(30),
    )
}

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

    /// The store failed: logged with its detail, answered without it (clients never see
    /// internal error text).
    pub fn storage(e: &crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store call failed");
        SendError::new(ErrorCode::Unavailable, "storage unavailable; retry")
    }

    /// Over a budget: `what` names it (`"tenant budget"`).
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        SendError {
            code: ErrorCode::RateLimited,
            message: format!("over the {what}"),
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        }
    }
}

/// One send request, from a WebSocket frame, REST or the queue.
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
    /// A send under this request id that was accepted before (found in the store by
    /// the queue dispatcher): complete it instead of sending anew.
    pub resume: Option<AcceptedSend>,
}

/// Where the answer to a send goes.
#[derive(Debug)]
pub enum Responder {
    /// The connection with this id gets an `ack` / `error` frame.
    Conn(u64),
    /// A REST handler (or the dispatcher) waits for it.
    Rest(oneshot::Sender<Result<MessageAccepted, SendError>>),
}

/// What a client gets when it attaches.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Highest seq such that it and every seq before it are durable.
    pub last_seq: u64,
    /// The device's budgets for receipts, typing and sync (shared by its clients).
    pub budgets: Arc<ControlBudgets>,
}

/// Whether a device has clients, and when it last had one: kept in the cache by its
/// session (`device_status`), for views of the device from anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    /// At least one client is connected.
    pub connected: bool,
    /// When a client was last connected (Unix ms).
    pub last_seen: Option<i64>,
}

/// A session's live view, for GET device and the admin tree.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Connected clients.
    pub connections: usize,
    /// Last time a client was connected.
    pub last_seen: Option<i64>,
    /// Highest durable seq.
    pub last_seq: u64,
    /// Messages this device sent.
    pub messages_out: u64,
    /// Messages delivered into its inbox.
    pub messages_in: u64,
    /// The node running the session.
    pub node: String,
}

/// Messages of a device session.
pub enum DeviceMsg {
    /// A client connected.
    Attach(ConnHandle, RpcReplyPort<Result<Attached, SendError>>),
    /// A client went away.
    Detach(u64),
    /// This device sends a message.
    Send(SendRequest, Responder),
    /// A row for this device's inbox, from a sender.
    Deliver(Delivery),
    /// The outcome of one of this device's recipient rows.
    RowDone(RowDone),
    /// A row of this device's inbox was committed, or failed.
    Committed(Committed),
    /// Statuses for messages this device sent.
    Receipts(ReceiptBatch),
    /// Send again the lost rows to a recipient (after a backoff).
    Resend(Arc<str>),
    /// Push an encoded frame (typing) to every connection.
    Push(Frame),
    /// Close every connection with this code.
    Kick(u16),
    /// Live view.
    Info(RpcReplyPort<SessionInfo>),
    /// From the tenant supervisor, periodically while no client is attached: stop when
    /// idle long enough.
    IdleCheck,
    /// Try again to finish a resync whose read of the durable seq failed.
    Resync,
    /// Move frames waiting behind full connection channels; cut off stalled readers.
    FlushOutbound,
    /// Test hook: panic inside the session (only when test hooks are enabled).
    InjectPanic,
    /// Admin tree: answers how long this message waited in the mailbox (µs), given
    /// when it was sent. ractor does not expose mailbox length; this wait is the
    /// observable backlog.
    MailboxProbe(Instant, RpcReplyPort<u64>),
}

/// A request id this session answered, or is answering.
enum Recent {
    /// In flight under this send key.
    Pending(u64),
    /// Done: every row durable.
    Done(MessageAccepted),
    /// Accepted but not complete: the sender's copy or some recipient rows may be
    /// missing (a failure, or a restart). A resend under the same id completes it with
    /// the same message id.
    Incomplete(Box<Incomplete>),
}

/// What is known of an accepted, incomplete send.
#[derive(Clone)]
struct Incomplete {
    answer: MessageAccepted,
    /// The message, when this incarnation sent it (else read from the store).
    message: Option<Arc<MessageRecord>>,
}

struct PendingSend {
    /// When the session received the send (ack latency).
    received: Instant,
    client_id: Option<String>,
    answer: MessageAccepted,
    message: Arc<MessageRecord>,
    responders: Vec<Responder>,
    /// Rows not yet settled (the sender's copy and each recipient's).
    remaining: usize,
    /// Whether a row failed for good.
    failed: bool,
}

/// State of a device session.
pub struct DeviceState {
    env: Arc<Env>,
    me: ActorRef<DeviceMsg>,
    device: DeviceRecord,
    address: Arc<str>,
    id: Arc<str>,
    tenant: ActorRef<TenantMsg>,
    conns: Vec<ConnHandle>,
    flush_scheduled: bool,
    last_seen: Option<i64>,
    limiter: TierLimiter,
    budgets: Arc<ControlBudgets>,
    pairs: HashMap<String, crate::limits::TokenBucket>,
    recent: HashMap<String, Recent>,
    recent_order: VecDeque<String>,
    pending: HashMap<u64, PendingSend>,
    next_key: u64,
    outbox: outbox::Outbox,
    inbox: inbox::InboxState,
    statuses: receipts::StatusCache,
    idle_since: Instant,
    messages_in: u64,
    messages_out: u64,
    /// Tenant-labelled message counters, registered once per session start.
    metrics: SessionMetrics,
    gauge: Arc<SessionGauge>,
    /// This session's claim on its device, in a cluster.
    tenure: Option<Tenure>,
    /// Whether `device.connected` was the last webhook event recorded for the device.
    announced_connected: bool,
    /// Answered when the task recording the last connect / disconnect event is done:
    /// the next one waits for it, so they reach the outbox in order. (A signal rather
    /// than the task's `JoinHandle`, which would keep the finished task's memory for as
    /// long as the device stays connected.)
    last_announcement: Option<oneshot::Receiver<()>>,
}

/// A session's claim on its device in a cluster (`docs/cluster.md`).
#[derive(Debug, Clone, Copy)]
struct Tenure {
    /// The fencing epoch, written on every row.
    epoch: u64,
    /// Seqs up to this one hold this epoch's fence rows (a takeover): rows there
    /// replace them.
    fence_top: u64,
    /// The node's incarnation when the claim was made.
    incarnation: u64,
}

/// Why a session could not start.
#[derive(Debug)]
enum LoadError {
    /// The store failed.
    Store(crate::store::StoreError),
    /// Another live node owns the device.
    Elsewhere(String),
}

impl From<crate::store::StoreError> for LoadError {
    fn from(e: crate::store::StoreError) -> Self {
        LoadError::Store(e)
    }
}

/// A fresh incarnation number (numbers of a sender's stream restart with it).
fn new_epoch() -> u64 {
    let u = ulid::Ulid::new().0;
    (u as u64) ^ ((u >> 64) as u64)
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
            budgets: Arc::new(ControlBudgets::new(&env.settings.control_rate_per_minute)),
            pairs: HashMap::new(),
            address: args.device.address.as_str().into(),
            id: args.device.id.as_str().into(),
            last_seen: args.device.last_seen,
            metrics: SessionMetrics::new(&args.device.tenant_id),
            device: args.device,
            tenant: args.tenant,
            conns: Vec::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            pending: HashMap::new(),
            next_key: 0,
            outbox: outbox::Outbox::new(new_epoch(), env.settings.cluster.send_timeout),
            announced_connected: false,
            last_announcement: None,
            inbox: inbox::InboxState::default(),
            statuses: receipts::StatusCache::default(),
            idle_since: Instant::now(),
            messages_in: 0,
            messages_out: 0,
            gauge: args.gauge,
            tenure: None,
            env,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<DeviceMsg>,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(faults) = state.env.test_faults() {
            if faults.take_start_panic(&state.device.id) {
                panic!(
                    "start panic injected into device session {}",
                    state.device.id
                );
            }
        }
        // A store that cannot be read is not a crash: stop (requests waiting for this
        // session get `unavailable`; the next one starts it again), so a store outage
        // never becomes a restart storm.
        match state.load().await {
            Ok(()) => {}
            Err(LoadError::Store(e)) => {
                tracing::warn!(device_id = %state.device.id, error = %e, "device session could not load its state; stopping");
                myself.stop(Some("store unavailable".into()));
                return Ok(());
            }
            // What is in the mailbox is dropped: its senders route it again, there.
            Err(LoadError::Elsewhere(node)) => {
                tracing::debug!(device_id = %state.device.id, %node, "device owned by another node");
                myself.stop(Some("owned elsewhere".into()));
                return Ok(());
            }
        }
        // No timer of its own: the tenant supervisor sends `IdleCheck` to its sessions
        // without clients every `idle_check_period` (one timer per tenant, not one task
        // per session).
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

    /// In a cluster, gives the device up once every row of it is durable (unless the
    /// node rejoined since the claim: then the next owner fences).
    async fn post_stop(
        &self,
        _myself: ActorRef<DeviceMsg>,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        if let (Some(cluster), Some(t)) = (state.env.cluster.clone(), state.tenure) {
            state.env.persistence.barrier(&state.device.id).await;
            cluster
                .ownership
                .release(&state.device.id, t.epoch, t.incarnation)
                .await;
        }
        Ok(())
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
                // Most devices hold one connection: no room for four kept per session.
                state.conns.reserve_exact(1);
                state.conns.push(conn);
                state.touch_last_seen();
                let _ = reply.send(Ok(Attached {
                    last_seq: state.inbox.durable_seq,
                    budgets: state.budgets.clone(),
                }));
            }
            DeviceMsg::Detach(conn_id) => {
                state.conns.retain(|c| c.id != conn_id);
                if state.conns.is_empty() {
                    state.idle_since = Instant::now();
                    state.touch_last_seen();
                }
            }
            DeviceMsg::Send(req, responder) => state.send(req, responder).await,
            DeviceMsg::Deliver(delivery) => state.accept(delivery).await,
            DeviceMsg::RowDone(report) => state.row_done(report),
            DeviceMsg::Committed(note) => state.committed(note).await,
            DeviceMsg::Receipts(batch) => state.receipts(batch).await,
            DeviceMsg::Resend(recipient) => state.resend(&recipient).await,
            DeviceMsg::Push(frame) => {
                state.push_all(frame, None);
            }
            DeviceMsg::Kick(code) => state.kick(code),
            DeviceMsg::Info(reply) => {
                let _ = reply.send(SessionInfo {
                    connections: state.conns.len(),
                    last_seen: state.last_seen,
                    last_seq: state.inbox.durable_seq,
                    messages_out: state.messages_out,
                    messages_in: state.messages_in,
                    node: state.env.settings.node_id.clone(),
                });
            }
            DeviceMsg::Resync => state.retry_resync().await,
            DeviceMsg::IdleCheck => {
                if state.quiescent()
                    && state.idle_since.elapsed() >= state.env.settings.session_idle
                {
                    state
                        .env
                        .directory
                        .unregister(&state.device.id, &myself.get_cell());
                    let _ = state
                        .tenant
                        .cast(TenantMsg::Stopping(state.device.id.clone()));
                    // Nothing is in flight: what arrives from now on (routed before the
                    // unregister) is dropped and retried by its sender against the next
                    // session, which starts once this one has stopped.
                    myself.stop(Some("idle".into()));
                }
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
    /// Reads what the session needs from the store: the last seq (after the rows a
    /// previous incarnation queued are durable, or a seq would be handed out twice) and
    /// the recent request ids.
    async fn load(&mut self) -> Result<(), LoadError> {
        let env = self.env.clone();
        env.persistence.reset(&self.device.id).await;
        if let Some(cluster) = &env.cluster {
            self.tenure = Some(self.claim(cluster).await?);
        }
        let last = env.store.last_seq(&self.device.id).await?;
        self.inbox.start_at(last);
        let window = env.settings.idempotency_window;
        let mut recent = env.store.recent_client_ids(&self.device.id, window).await?;
        recent.reverse();
        for r in recent {
            let answer = MessageAccepted {
                message_id: r.message_id,
                seq: r.seq,
                ts: r.ts,
            };
            self.remember(
                r.client_id,
                Recent::Incomplete(Box::new(Incomplete {
                    answer,
                    message: None,
                })),
            );
        }
        Ok(())
    }

    /// Claims the device for this node; a takeover from a node that did not release it
    /// fences the seqs its last commit could still reach (`docs/cluster.md`).
    async fn claim(&self, cluster: &crate::cluster::Cluster) -> Result<Tenure, LoadError> {
        let id = &self.device.id;
        let incarnation = cluster.membership.incarnation();
        match cluster.ownership.claim(id).await? {
            crate::cluster::Claim::Elsewhere(node) => Err(LoadError::Elsewhere(node)),
            crate::cluster::Claim::Owned { epoch, unclean } => {
                let mut fence_top = 0;
                if unclean {
                    let last = self.env.store.last_seq(id).await?;
                    let rows = cluster.settings.fence_rows as u64;
                    self.env
                        .store
                        .fence_inbox(id, last + 1, rows, epoch)
                        .await?;
                    fence_top = last + rows;
                    tracing::info!(device_id = %id, epoch, from = last + 1, rows, "inbox fenced after a takeover");
                }
                Ok(Tenure {
                    epoch,
                    fence_top,
                    incarnation,
                })
            }
        }
    }

    /// Nothing in flight: no pending send, no uncommitted row, no outstanding recipient
    /// row, no connection.
    fn quiescent(&self) -> bool {
        self.conns.is_empty()
            && self.pending.is_empty()
            && self.outbox.is_empty()
            && self.inbox.in_flight == 0
    }

    /// Records that a client came or went: last seen in the store, and the device's
    /// status (connected, last seen) in the cache, where every node reads it.
    fn touch_last_seen(&mut self) {
        let now = crate::clock::now_ms();
        self.last_seen = Some(now);
        let env = self.env.clone();
        let id = self.device.id.clone();
        let status = Arc::new(DeviceStatus {
            connected: !self.conns.is_empty(),
            last_seen: Some(now),
        });
        self.announce(status.connected, now);
        tokio::spawn(async move {
            env.cache
                .set(crate::cache::CacheKind::DeviceStatus, &id, status)
                .await;
            if let Err(e) = env.store.set_last_seen(&id, now).await {
                tracing::warn!(device_id = %id, error = %e, "could not record last seen");
            }
        });
    }

    /// Records `device.connected` (first client) or `device.disconnected` (last one
    /// gone) for webhooks, after the previous such event.
    fn announce(&mut self, connected: bool, now: i64) {
        if connected == self.announced_connected {
            return;
        }
        self.announced_connected = connected;
        let kind = if connected {
            crate::webhooks::EventKind::DeviceConnected
        } else {
            crate::webhooks::EventKind::DeviceDisconnected
        };
        // The id is taken now, so the event is ordered where it happened.
        let event = self.env.webhooks.event(
            &self.device.tenant_id,
            &self.device.id,
            kind,
            serde_json::json!({
                "address": &*self.address,
                "connections": self.conns.len(),
                "ts": now,
            }),
        );
        let env = self.env.clone();
        let previous = self.last_announcement.take();
        let (done, finished) = oneshot::channel();
        self.last_announcement = Some(finished);
        tokio::spawn(async move {
            if let Some(p) = previous {
                // Answered or dropped (the task ended either way).
                let _ = p.await;
            }
            if env.webhooks.wants_any(&event.tenant_id, &[kind]).await {
                env.webhooks.record_or_log(vec![event]).await;
            }
            let _ = done.send(());
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
}

/// The status a receipt moves a message to, if it moves it forward from `current`.
pub fn advances(current: Option<ReceiptStatus>, new: ReceiptStatus) -> bool {
    current.is_none_or(|c| new > c)
}
