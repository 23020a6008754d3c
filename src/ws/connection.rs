//! One WebSocket connection: a reader task (frames in, heartbeats, close) and a writer
//! task (frames out from a bounded buffer). The reader parses and validates frames and
//! hands them to the device session; it never blocks on a slow client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use actors::conn::{next_conn_id, CloseSignal, ConnHandle, Frame, Progress};
use actors::device::{routing, Attached, DeviceMsg, Responder, SendRequest};
use actors::limits::{Control, ControlBudgets};
use actors::store::DeviceRecord;
use protocol::error::close;
use protocol::{ClientFrame, ErrorCode, ServerFrame};
use tokio::sync::mpsc;

use crate::http::messages::read_page;
use crate::state::AppState;

/// A connection before it runs.
pub struct Connection {
    state: Arc<AppState>,
    device: DeviceRecord,
    token_exp_s: u64,
    id: u64,
    /// Counts this connection against its client IP's limit until dropped.
    _slot: super::guard::OpenSlot,
}

/// How the reader loop ended.
enum End {
    /// The client closed or vanished: nothing to send.
    ClientGone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

impl Connection {
    /// A connection for an authenticated device.
    pub fn new(
        state: Arc<AppState>,
        device: DeviceRecord,
        token_exp_s: u64,
        slot: super::guard::OpenSlot,
    ) -> Self {
        Connection {
            state,
            device,
            token_exp_s,
            id: next_conn_id(),
            _slot: slot,
        }
    }

    /// This connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connected device.
    pub fn device_id(&self) -> &str {
        &self.device.id
    }

    /// The device's tenant.
    pub fn tenant_id(&self) -> &str {
        &self.device.tenant_id
    }

    /// Attaches to the device session, sends `ready`, then serves frames until closed.
    pub async fn run(self, mut session: Session, stream: actix_ws::MessageStream) {
        let max = self.state.config.max_frame_bytes;
        let mut stream = stream
            .max_frame_size(max)
            .aggregate_continuations()
            .max_continuation_size(max);
        let (tx, rx) = mpsc::channel::<Frame>(self.state.env.settings.outbound_buffer);
        let progress = Arc::new(Progress::default());
        let Some((attached, signal)) = self.attach(&tx, &progress).await else {
            close_with(session, close::RESTARTING, "server restarting").await;
            return;
        };
        let last_seq = attached.last_seq;
        let ready = ServerFrame::Ready {
            device_id: &self.device.id,
            tenant_id: &self.device.tenant_id,
            address: &self.device.address,
            last_seq,
            heartbeat_ms: self.state.config.heartbeat_ms,
        }
        .encode();
        let _open = crate::metrics::OpenConnection::open(&self.state.env);
        crate::metrics::ws().frames_out.increment(1);
        let directory = &self.state.env.directory;
        if session.text(ready).await.is_err() {
            directory.detach(&self.device.id, self.id);
            return;
        }
        tracing::debug!(last_seq, "connected");
        let writer = actix_web::rt::spawn(write_frames(session.clone(), rx, progress));
        let end = self
            .read_frames(&mut session, &mut stream, &tx, &signal, &attached.budgets)
            .await;
        writer.abort();
        directory.detach(&self.device.id, self.id);
        if let End::Close(code, reason) = end {
            tracing::debug!(code, reason, "closing connection");
            // A slow reader's socket may never drain: bound the close.
            actix_web::rt::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    close_with(session, code, reason),
                )
                .await;
            });
        }
    }

    /// Attaches to the device's session, wherever it runs; retries while sessions stop
    /// and start (in a cluster, while a dead node's devices wait to be taken over). Each
    /// try has its own close signal: a handle dropped unhandled (its session stopped
    /// first) closes only that try's signal, never the connection that attaches next.
    async fn attach(
        &self,
        tx: &mpsc::Sender<Frame>,
        progress: &Arc<Progress>,
    ) -> Option<(Attached, Arc<CloseSignal>)> {
        let env = &self.state.env;
        let deadline = Instant::now()
            + match &env.cluster {
                // A dead owner's devices are free once its lease (and the skew) ran out.
                Some(c) => c.settings.lease + c.settings.skew * 2,
                None => Duration::from_millis(100),
            };
        let mut tries = 0u32;
        loop {
            tries += 1;
            let signal = Arc::new(CloseSignal::default());
            let handle = ConnHandle::new(self.id, tx.clone(), signal.clone(), progress.clone());
            match env.directory.attach(&self.device.id, handle).await {
                Ok(attached) => return Some((attached, signal)),
                Err(actors::directory::RouteError::NoDevice) => return None,
                // The session is draining, or starting elsewhere: try again.
                Err(_) if tries < 5 || Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries.min(10)))).await
                }
                Err(_) => return None,
            }
        }
    }

    async fn read_frames(
        &self,
        session: &mut Session,
        stream: &mut actix_ws::AggregatedMessageStream,
        tx: &mpsc::Sender<Frame>,
        signal: &CloseSignal,
        budgets: &ControlBudgets,
    ) -> End {
        let heartbeat = Duration::from_millis(self.state.config.heartbeat_ms.max(10));
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        let now_s = (actors::clock::now_ms() / 1000) as u64;
        let expiry =
            tokio::time::sleep(Duration::from_secs(self.token_exp_s.saturating_sub(now_s)));
        tokio::pin!(expiry);
        let mut shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                _ = signal.wait() => {
                    let code = signal.code().unwrap_or(close::RESTARTING);
                    return End::Close(code, close_reason(code));
                }
                _ = &mut expiry => return End::Close(close::TOKEN_EXPIRED, "token expired"),
                _ = shutdown.changed() => return End::Close(close::RESTARTING, "server restarting"),
                _ = ticker.tick() => {
                    if last_heard.elapsed() > heartbeat * 2 {
                        return End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    }
                    // A full socket buffer means a slow reader; the writer side handles it.
                    let _ = tokio::time::timeout(Duration::from_millis(50), session.ping(b"hb")).await;
                }
                msg = stream.recv() => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            crate::metrics::ws().frames_in.increment(1);
                            if let Err(end) = self.on_text(&text, tx, budgets).await {
                                return end;
                            }
                        }
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            crate::metrics::ws().frames_in.increment(1);
                            let frame = error_frame(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text", None);
                            if tx.try_send(frame).is_err() {
                                return End::Close(close::TOO_SLOW, "too slow");
                            }
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            let _ = tokio::time::timeout(Duration::from_millis(50), session.pong(&bytes)).await;
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Close(_))) | None => return End::ClientGone,
                        Some(Err(actix_ws::ProtocolError::Overflow)) => {
                            return End::Close(close::TOO_LARGE, "frame too large");
                        }
                        // The aggregator reports an over-long fragmented message as I/O.
                        Some(Err(actix_ws::ProtocolError::Io(e)))
                            if e.to_string().contains("maximum continuation size") =>
                        {
                            return End::Close(close::TOO_LARGE, "message too large");
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "protocol error");
                            return End::Close(1002, "protocol error");
                        }
                    }
                }
            }
        }
    }

    /// Handles one text frame. `Err` ends the connection.
    async fn on_text(
        &self,
        text: &str,
        tx: &mpsc::Sender<Frame>,
        budgets: &ControlBudgets,
    ) -> Result<(), End> {
        let Some(frame) = self.answer(text, budgets).await else {
            return Ok(());
        };
        // A direct answer waits for room in the buffer, as long as a reader may stall.
        let stall = self.state.env.settings.slow_consumer;
        match tokio::time::timeout(stall, tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Close(close::TOO_SLOW, "too slow")),
        }
    }

    /// Acts on one text frame; returns the frame to answer with directly, if any
    /// (acks come later from the device session).
    async fn answer(&self, text: &str, budgets: &ControlBudgets) -> Option<Frame> {
        let frame = match ClientFrame::decode(text) {
            Ok(f) => f,
            Err(e) => return Some(error_frame(e.id.as_deref(), e.code, &e.message, None)),
        };
        // Receipts, typing and sync have budgets of their own, per device.
        let control = match &frame {
            ClientFrame::Receipt {
                id, message_ids, ..
            } => Some((id, Control::Receipt, message_ids.len())),
            ClientFrame::Typing { id, .. } => Some((id, Control::Typing, 1)),
            ClientFrame::Sync { id, .. } => Some((id, Control::Sync, 1)),
            _ => None,
        };
        if let Some((id, what, n)) = control {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            if let Err(wait) = budgets.take(what, n) {
                let e = actors::device::SendError::rate_limited(
                    &format!("{} budget for this device", control_name(what)),
                    wait,
                );
                return Some(error_frame(
                    id.as_deref(),
                    e.code,
                    &e.message,
                    e.retry_after_ms,
                ));
            }
        }
        let env = &self.state.env;
        match frame {
            ClientFrame::Send {
                id,
                target,
                body,
                priority,
            } => {
                if let Err(e) = crate::http::messages::check_body_size(&self.state, body.get()) {
                    return Some(error_frame(id.as_deref(), e.code, &e.message, None));
                }
                let req = SendRequest {
                    client_id: id.clone(),
                    target,
                    body: Arc::from(body.get()),
                    priority,
                    resume: None,
                };
                let sent = env
                    .directory
                    .deliver(
                        &self.device.id,
                        DeviceMsg::Send(req, Responder::Conn(self.id)),
                    )
                    .await;
                sent.is_err().then(|| {
                    error_frame(
                        id.as_deref(),
                        ErrorCode::Unavailable,
                        "device session restarting; retry",
                        None,
                    )
                })
            }
            ClientFrame::Receipt {
                id,
                message_ids,
                status,
            } => routing::receipts(env, &self.device, &message_ids, status)
                .await
                .err()
                .map(|e| error_frame(id.as_deref(), e.code, &e.message, None)),
            ClientFrame::Sync {
                id,
                after_seq,
                limit,
            } => Some(
                match read_page(env, &self.device.id, after_seq, limit, Some(id.as_deref())).await {
                    Ok(page) => page.into(),
                    Err(e) => error_frame(id.as_deref(), e.code, &e.message, None),
                },
            ),
            ClientFrame::Typing { id, target, state } => {
                routing::typing(env, &self.device, &target, state)
                    .await
                    .err()
                    .map(|e| error_frame(id.as_deref(), e.code, &e.message, None))
            }
            ClientFrame::Ping { id } => {
                Some(ServerFrame::Pong { id: id.as_deref() }.encode().into())
            }
        }
    }
}

fn control_name(what: Control) -> &'static str {
    match what {
        Control::Receipt => "receipt",
        Control::Typing => "typing",
        Control::Sync => "sync",
    }
}

fn error_frame(
    id: Option<&str>,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Frame {
    ServerFrame::Error {
        id,
        code,
        message,
        retry_after_ms,
    }
    .encode()
    .into()
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::TOO_SLOW => "too slow: outbound buffer full",
        close::TOKEN_EXPIRED => "token expired",
        close::DEVICE_DELETED => "device deleted",
        close::KICKED => "disconnected by an operator",
        close::TOO_LARGE => "frame too large",
        _ => "server restarting",
    }
}

async fn close_with(session: Session, code: u16, reason: &str) {
    let _ = session
        .close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }))
        .await;
}

/// Writes queued frames to the socket, in order, recording progress for the session's
/// slow-reader check.
async fn write_frames(
    mut session: Session,
    mut rx: mpsc::Receiver<Frame>,
    progress: Arc<Progress>,
) {
    let frames_out = &crate::metrics::ws().frames_out;
    while let Some(frame) = rx.recv().await {
        if session.text(frame.to_string()).await.is_err() {
            break;
        }
        progress.touch();
        frames_out.increment(1);
    }
}
