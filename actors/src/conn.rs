//! The session's handle on one client connection.
//!
//! A connection task owns the socket; the device session owns a [`ConnHandle`]: a
//! bounded sender of encoded frames and a close signal. When the session drops the
//! handle (it detached the client, cut off a slow reader, or the session itself died
//! and its state was dropped), the connection closes, with 1012 unless a code was set.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

/// An encoded text frame.
pub type Frame = Arc<str>;

/// Tells a connection task to close, and with which code.
#[derive(Debug, Default)]
pub struct CloseSignal {
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    /// Asks the connection to close with `code`; the first code set wins.
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// The requested code, if any.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Waits until a close is requested.
    pub async fn wait(&self) {
        if self.code().is_some() {
            return;
        }
        self.notify.notified().await;
    }
}

/// The session's side of one connection. Not `Clone`: dropping it closes the connection.
#[derive(Debug)]
pub struct ConnHandle {
    /// Connection id, unique in the process.
    pub id: u64,
    /// Outbound frames (bounded).
    pub tx: mpsc::Sender<Frame>,
    /// Close request.
    pub close: Arc<CloseSignal>,
}

impl ConnHandle {
    /// Queues a frame; false when the buffer is full or the connection is gone.
    pub fn push(&self, frame: Frame) -> bool {
        self.tx.try_send(frame).is_ok()
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.close.close(protocol::error::close::RESTARTING);
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id.
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}
