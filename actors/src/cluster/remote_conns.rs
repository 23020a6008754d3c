//! Connections whose socket and session are on different nodes.
//!
//! - **Attached** (socket here, session elsewhere): frames from the owner arrive as
//!   [`Cast::Frames`] and go into the connection's channel; a connection that cannot
//!   take them is closed 4408 and detached.
//! - **Forwarded** (session here, socket elsewhere): the session holds an ordinary
//!   [`ConnHandle`]; a forwarder task drains its channel and publishes the frames to
//!   the socket's node, in order, then the close code when the handle closes.
//!
//! When a node is gone, every connection attached to it here is closed 1012 (its
//! client reconnects and reaches the new owner), and every forwarder to it stops.

use std::sync::Arc;

use dashmap::DashMap;
use protocol::error::close;

use super::bus::Bus;
use super::envelope::Cast;
use crate::conn::{
    frame_queue, CloseSignal, ConnHandle, Frame, FrameReceiver, FrameSender, Progress,
};

/// Frames per [`Cast::Frames`], at most.
const FRAMES_PER_CAST: usize = 256;

struct Attachment {
    device: String,
    node: String,
    tx: FrameSender,
    close: Arc<CloseSignal>,
}

struct Forwarded {
    node: String,
    stop: Arc<CloseSignal>,
}

/// Both kinds, by connection id (ids are unique across nodes).
#[derive(Default)]
pub struct RemoteConns {
    attached: DashMap<u64, Attachment>,
    forwarded: DashMap<u64, Forwarded>,
}

impl std::fmt::Debug for RemoteConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConns")
            .field("attached", &self.attached.len())
            .field("forwarded", &self.forwarded.len())
            .finish()
    }
}

impl RemoteConns {
    /// Connections here attached to sessions elsewhere.
    pub fn attached_count(&self) -> usize {
        self.attached.len()
    }

    /// Connections elsewhere attached to sessions here.
    pub fn forwarded_count(&self) -> usize {
        self.forwarded.len()
    }

    /// Registers a connection here whose session runs on `node`.
    pub fn attach(&self, handle: ConnHandle, device: &str, node: &str) {
        let (id, tx, close, _) = handle.into_parts();
        self.attached.insert(
            id,
            Attachment {
                device: device.to_owned(),
                node: node.to_owned(),
                tx,
                close,
            },
        );
    }

    /// Forgets an attached connection; answers its device and owner node.
    pub fn detach(&self, conn: u64) -> Option<(String, String)> {
        self.attached.remove(&conn).map(|(_, a)| (a.device, a.node))
    }

    /// The owner node of an attached connection.
    pub fn owner_of(&self, conn: u64) -> Option<String> {
        self.attached.get(&conn).map(|a| a.node.clone())
    }

    /// Frames from the owner for an attached connection. Answers the device and node to
    /// tell `Detach` when the connection could not take them (it is gone, or too slow:
    /// closed 4408).
    pub fn frames(&self, conn: u64, frames: Vec<Frame>) -> Option<(String, String)> {
        let gone = {
            let a = self.attached.get(&conn)?;
            let mut gone = false;
            for f in frames {
                match a.tx.try_send(f) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        a.close.close(close::TOO_SLOW);
                        gone = true;
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                        gone = true;
                        break;
                    }
                }
            }
            gone
        };
        if gone {
            return self.detach(conn);
        }
        None
    }

    /// The owner closed an attached connection.
    pub fn close(&self, conn: u64, code: u16) {
        if let Some((_, a)) = self.attached.remove(&conn) {
            a.close.close(code);
        }
    }

    /// `node` is gone: its attached connections here close 1012 (they reconnect to the
    /// next owner), the forwarders to it stop.
    pub fn node_gone(&self, node: &str) {
        let ids: Vec<u64> = self
            .attached
            .iter()
            .filter(|a| a.node == node)
            .map(|a| *a.key())
            .collect();
        for id in ids {
            self.close(id, close::RESTARTING);
        }
        for f in self.forwarded.iter().filter(|f| f.node == node) {
            f.stop.close(close::RESTARTING);
        }
    }

    /// Closes every attached connection with `code` (a rejoin).
    pub fn close_all(&self, code: u16) {
        let ids: Vec<u64> = self.attached.iter().map(|a| *a.key()).collect();
        for id in ids {
            self.close(id, code);
        }
    }

    /// A handle for a session here on a connection of `node`; its frames are forwarded
    /// there until the handle closes.
    pub fn forward(
        self: &Arc<Self>,
        bus: Arc<Bus>,
        node: &str,
        conn: u64,
        buffer: usize,
    ) -> ConnHandle {
        let (tx, rx) = frame_queue(buffer);
        let signal = Arc::new(CloseSignal::default());
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(CloseSignal::default());
        self.forwarded.insert(
            conn,
            Forwarded {
                node: node.to_owned(),
                stop: stop.clone(),
            },
        );
        tokio::spawn(forward_loop(
            Arc::downgrade(self),
            bus,
            node.to_owned(),
            conn,
            rx,
            signal.clone(),
            stop,
            progress.clone(),
        ));
        ConnHandle::new(conn, tx, signal, progress)
    }
}

/// Publishes a forwarded connection's frames until its handle closes, then its close
/// code (after the frames queued before it).
#[allow(clippy::too_many_arguments)]
async fn forward_loop(
    conns: std::sync::Weak<RemoteConns>,
    bus: Arc<Bus>,
    node: String,
    conn: u64,
    mut rx: FrameReceiver,
    signal: Arc<CloseSignal>,
    stop: Arc<CloseSignal>,
    progress: Arc<Progress>,
) {
    let drain = |rx: &mut FrameReceiver, first: Option<Frame>| {
        let mut frames: Vec<Frame> = first.into_iter().collect();
        while frames.len() < FRAMES_PER_CAST {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(_) => break,
            }
        }
        frames
    };
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => {
                    let frames = drain(&mut rx, Some(f));
                    bus.cast(&node, Cast::Frames { conn, frames });
                    progress.touch();
                }
                None => break,
            },
            _ = signal.wait() => break,
            _ = stop.wait() => break,
        }
    }
    loop {
        let rest = drain(&mut rx, None);
        if rest.is_empty() {
            break;
        }
        bus.cast(&node, Cast::Frames { conn, frames: rest });
    }
    if stop.code().is_none() {
        let code = signal.code().unwrap_or(close::RESTARTING);
        bus.cast(&node, Cast::Close { conn, code });
    }
    if let Some(conns) = conns.upgrade() {
        conns.forwarded.remove(&conn);
    }
}
