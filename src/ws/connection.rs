//! One WebSocket connection, served by one task: frames in from the socket, frames out
//! from the device session's bounded buffer, heartbeats and close. Frames are parsed and
//! validated here and handed to the device session; a slow client never blocks it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::conn::{
    frame_queue, next_conn_id, CloseSignal, ConnHandle, Frame, FrameReceiver, FrameSender, Progress,
};
use actors::device::{routing, Attached, DeviceMsg, Responder, SendRequest};
use actors::limits::{Control, ControlBudgets};
use actors::store::DeviceRecord;
use protocol::error::close;
use protocol::{ClientFrame, ErrorCode, ServerFrame};

use super::socket::{Incoming, InputError, Socket};
use crate::http::messages::read_page;
use crate::state::AppState;

/// Bytes queued for the socket above which the connection stops taking more (frames
/// wait in the session's buffer, and the client's input waits in the kernel).
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Longest time the final frames (and the close frame) may take to reach a slow reader.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// Longest time the answer to a client's close frame may take.
const CLOSE_ECHO: Duration = Duration::from_secs(1);
/// Longest wait for the client to close its side after the server's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A connection before it runs.
pub struct Connection {
    state: Arc<AppState>,
    device: DeviceRecord,
    token_exp_s: u64,
    id: u64,
    /// Counts this connection against its client IP's limit until dropped.
    _slot: super::guard::OpenSlot,
}

/// How the serving loop ended.
enum End {
    /// The client vanished: nothing to send.
    ClientGone,
    /// The client closed: answer its close frame with this code.
    ClientClosed(u16),
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
    pub async fn run(self, mut socket: Socket) {
        let (tx, mut rx) = frame_queue(self.state.env.settings.outbound_buffer);
        let progress = Arc::new(Progress::default());
        // The slow-reader clock starts at the connect.
        progress.touch();
        // Boxed (here and below): short-lived steps stay out of the connection's state.
        let Some((attached, signal)) = Box::pin(self.attach(&tx, &progress)).await else {
            socket.queue_close(close::RESTARTING, "server restarting");
            Box::pin(socket.finish(CLOSE_ECHO, CLOSE_LINGER)).await;
            return;
        };
        let ready = ServerFrame::Ready {
            device_id: &self.device.id,
            tenant_id: &self.device.tenant_id,
            address: &self.device.address,
            last_seq: attached.last_seq,
            heartbeat_ms: self.state.config.heartbeat_ms,
        }
        .encode();
        send_text(&mut socket, &ready);
        drop(ready);
        let _open = crate::metrics::OpenConnection::open(&self.state.env);
        tracing::debug!(last_seq = attached.last_seq, "connected");
        let end = self
            .serve(&mut socket, &mut rx, &signal, &attached.budgets, &progress)
            .await;
        self.state.env.directory.detach(&self.device.id, self.id);
        let (code, reason, bound) = match end {
            End::ClientGone => return,
            End::ClientClosed(code) => (code, "", CLOSE_ECHO),
            End::Close(code, reason) => {
                tracing::debug!(code, reason, "closing connection");
                (code, reason, CLOSE_FLUSH)
            }
        };
        socket.queue_close(code, reason);
        // A slow reader's socket may never drain: bound the close.
        Box::pin(socket.finish(bound, CLOSE_LINGER)).await;
    }

    /// Attaches to the device's session, wherever it runs; retries while sessions stop
    /// and start (in a cluster, while a dead node's devices wait to be taken over). Each
    /// try has its own close signal: a handle dropped unhandled (its session stopped
    /// first) closes only that try's signal, never the connection that attaches next.
    async fn attach(
        &self,
        tx: &FrameSender,
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

    /// The connection's loop: reads and answers the client's frames, writes the
    /// session's frames, sends heartbeats, and ends on a close from either side.
    async fn serve(
        &self,
        socket: &mut Socket,
        rx: &mut FrameReceiver,
        signal: &CloseSignal,
        budgets: &ControlBudgets,
        progress: &Progress,
    ) -> End {
        let heartbeat = Duration::from_millis(self.state.config.heartbeat_ms.max(10));
        let stall = self.state.env.settings.slow_consumer;
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        let now_s = (actors::clock::now_ms() / 1000) as u64;
        let expiry =
            tokio::time::sleep(Duration::from_secs(self.token_exp_s.saturating_sub(now_s)));
        tokio::pin!(expiry);
        let mut shutdown = self.state.shutdown.clone();
        loop {
            if socket.pending() > 0 {
                match socket.write_available() {
                    Ok(0) => {}
                    Ok(_) => progress.touch(),
                    Err(_) => return End::ClientGone,
                }
            }
            let room = socket.pending() < OUTPUT_HIGH_WATER;
            tokio::select! {
                biased;
                _ = signal.wait() => {
                    let code = signal.code().unwrap_or(close::RESTARTING);
                    return End::Close(code, close_reason(code));
                }
                _ = &mut expiry => return End::Close(close::TOKEN_EXPIRED, "token expired"),
                _ = shutdown.changed() => return End::Close(close::RESTARTING, "server restarting"),
                _ = ticker.tick() => {
                    if socket.pending() > 0 && progress.idle_for() > stall {
                        return End::Close(close::TOO_SLOW, "too slow");
                    }
                    // While output is full the client's input is not read: no timeout then.
                    if room && last_heard.elapsed() > heartbeat * 2 {
                        return End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    }
                    if room {
                        socket.queue_ping(b"hb");
                    }
                }
                ready = socket.writable(), if socket.pending() > 0 => {
                    if ready.is_err() {
                        return End::ClientGone;
                    }
                }
                ready = socket.readable(), if room => {
                    match ready.map(|()| socket.read_available()) {
                        Ok(Ok(true)) => last_heard = Instant::now(),
                        _ => return End::ClientGone,
                    }
                    loop {
                        match socket.next_message() {
                            Ok(None) => break,
                            Ok(Some(message)) => {
                                if let Err(end) = self.on_message(message, socket, budgets).await {
                                    return end;
                                }
                            }
                            Err(InputError::TooLarge) => {
                                return End::Close(close::TOO_LARGE, "frame too large");
                            }
                            Err(InputError::Protocol) => return End::Close(1002, "protocol error"),
                        }
                    }
                }
                frame = rx.recv(), if room => {
                    let Some(frame) = frame else { return End::Close(close::RESTARTING, "server restarting") };
                    send_text(socket, &frame);
                    while socket.pending() < OUTPUT_HIGH_WATER {
                        let Ok(frame) = rx.try_recv() else { break };
                        send_text(socket, &frame);
                    }
                }
            }
        }
    }

    /// Handles one message from the client; `Err` ends the connection.
    async fn on_message(
        &self,
        message: Incoming,
        socket: &mut Socket,
        budgets: &ControlBudgets,
    ) -> Result<(), End> {
        let frames_in = &crate::metrics::ws().frames_in;
        match message {
            Incoming::Text(bytes) => {
                frames_in.increment(1);
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return Err(End::Close(1007, "text frame is not UTF-8"));
                };
                // Boxed: the answer's state exists only while a frame is handled, so an
                // idle connection's task stays small.
                if let Some(frame) = Box::pin(self.answer(text, budgets)).await {
                    send_text(socket, &frame);
                }
            }
            Incoming::Binary => {
                frames_in.increment(1);
                let frame = error_frame(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                    None,
                );
                send_text(socket, &frame);
            }
            Incoming::Ping(payload) => socket.queue_pong(&payload),
            Incoming::Pong => {}
            Incoming::Close(reason) => {
                let code = reason.map_or(1000, |r| u16::from(r.code));
                return Err(End::ClientClosed(code));
            }
        }
        Ok(())
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

/// Queues a text frame for the client and counts it.
fn send_text(socket: &mut Socket, text: &str) {
    socket.queue_text(text);
    crate::metrics::ws().frames_out.increment(1);
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
