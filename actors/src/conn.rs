//! The session's handle on one client connection.
//!
//! A connection task owns the socket; the device session owns a [`ConnHandle`]: a
//! bounded sender of encoded frames, an overflow queue, and a close signal. When the
//! session drops the handle (it detached the client, cut off a slow reader, or the
//! session itself died and its state was dropped), the connection closes, with 1012
//! unless a code was set.
//!
//! Slow readers: one group commit can complete hundreds of rows for one device at once,
//! so a burst may be larger than the channel even for a client that reads steadily.
//! Frames that do not fit wait, in order, in the overflow queue, which the session
//! drains as the writer makes room. A client is cut off (4408) when its writer has
//! written nothing for the stall timeout while frames wait, or when the overflow holds
//! more than the hard cap: a client that stops reading is dropped, one that keeps
//! reading is not, and memory stays bounded either way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Notify;

pub use crate::frame_queue::{frame_queue, FrameReceiver, FrameSender};

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

/// Written by the connection's writer: when it last put a frame on the socket.
#[derive(Debug, Default)]
pub struct Progress {
    last_write_ms: AtomicU64,
}

fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Progress {
    /// Records that a frame was written now.
    pub fn touch(&self) {
        self.last_write_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since a frame was last written.
    pub fn idle_for(&self) -> Duration {
        let last = self.last_write_ms.load(Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }
}

/// Result of queueing a frame on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// In the channel or the overflow queue.
    Queued,
    /// The connection is gone.
    Gone,
}

/// The session's side of one connection. Not `Clone`: dropping it closes the connection.
#[derive(Debug)]
pub struct ConnHandle {
    /// Connection id, unique in the process.
    pub id: u64,
    /// Outbound frames (bounded).
    pub tx: FrameSender,
    /// Close request.
    pub close: Arc<CloseSignal>,
    /// The writer's progress.
    pub progress: Arc<Progress>,
    overflow: VecDeque<Frame>,
    /// Whether dropping the handle closes the connection.
    armed: bool,
}

impl ConnHandle {
    /// A handle over a connection's channel, close signal and writer progress.
    pub fn new(id: u64, tx: FrameSender, close: Arc<CloseSignal>, progress: Arc<Progress>) -> Self {
        progress.touch();
        ConnHandle {
            id,
            tx,
            close,
            progress,
            overflow: VecDeque::new(),
            armed: true,
        }
    }

    /// The handle's parts, without closing the connection (another holder takes it).
    pub fn into_parts(mut self) -> (u64, FrameSender, Arc<CloseSignal>, Arc<Progress>) {
        self.armed = false;
        (
            self.id,
            self.tx.clone(),
            self.close.clone(),
            self.progress.clone(),
        )
    }

    /// Queues a frame, in order, behind any that are waiting.
    pub fn push(&mut self, frame: Frame) -> Push {
        if !self.overflow.is_empty() {
            self.overflow.push_back(frame);
            return Push::Queued;
        }
        match self.tx.try_send(frame) {
            Ok(()) => Push::Queued,
            Err(TrySendError::Full(frame)) => {
                self.overflow.push_back(frame);
                Push::Queued
            }
            Err(TrySendError::Closed(_)) => Push::Gone,
        }
    }

    /// Moves waiting frames into the channel as far as it has room; true if some still wait.
    pub fn flush(&mut self) -> bool {
        while let Some(frame) = self.overflow.pop_front() {
            match self.tx.try_send(frame) {
                Ok(()) => {}
                Err(TrySendError::Full(frame)) => {
                    self.overflow.push_front(frame);
                    return true;
                }
                Err(TrySendError::Closed(_)) => {
                    self.overflow.clear();
                    return false;
                }
            }
        }
        false
    }

    /// Frames waiting behind the channel.
    pub fn waiting(&self) -> usize {
        self.overflow.len()
    }

    /// Whether this client must be cut off: frames wait and the writer has written
    /// nothing for `stall`, or more than `hard_cap` frames wait.
    pub fn is_stuck(&self, stall: Duration, hard_cap: usize) -> bool {
        !self.overflow.is_empty()
            && (self.overflow.len() > hard_cap || self.progress.idle_for() >= stall)
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        if self.armed {
            self.close.close(protocol::error::close::RESTARTING);
        }
    }
}

static NEXT_CONN_ID: OnceLock<AtomicU64> = OnceLock::new();

/// A fresh connection id: a counter from a random start, so ids of different nodes do
/// not meet (the sessions of a cluster hold connections of several nodes).
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID
        .get_or_init(|| {
            // 2^62 ids from a random point: far from wrapping, unlikely to meet another's.
            let start = (ulid::Ulid::new().random() as u64) >> 2;
            AtomicU64::new(start.max(1))
        })
        .fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn handle(capacity: usize) -> (ConnHandle, FrameReceiver, Arc<CloseSignal>) {
        let (tx, rx) = frame_queue(capacity);
        let close = Arc::new(CloseSignal::default());
        let h = ConnHandle::new(1, tx, close.clone(), Arc::new(Progress::default()));
        (h, rx, close)
    }

    #[tokio::test]
    async fn overflow_keeps_order_and_drains() {
        let (mut h, mut rx, _) = handle(2);
        for i in 0..5 {
            assert_eq!(h.push(Arc::from(i.to_string())), Push::Queued);
        }
        assert_eq!(h.waiting(), 3);
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(rx.recv().await.unwrap().to_string());
            h.flush();
        }
        assert_eq!(got, ["0", "1", "2", "3", "4"]);
        assert_eq!(h.waiting(), 0);
    }

    #[tokio::test]
    async fn stuck_only_when_frames_wait_and_the_writer_stalls() {
        let (mut h, _rx, _) = handle(1);
        h.push(Arc::from("a"));
        assert!(!h.is_stuck(Duration::ZERO, 10), "nothing waits yet");
        h.push(Arc::from("b"));
        assert!(h.is_stuck(Duration::ZERO, 10), "waiting and stalled");
        assert!(
            !h.is_stuck(Duration::from_secs(60), 10),
            "the writer wrote recently"
        );
        for _ in 0..10 {
            h.push(Arc::from("c"));
        }
        assert!(h.is_stuck(Duration::from_secs(60), 10), "over the hard cap");
    }

    #[tokio::test]
    async fn dropping_the_handle_closes_with_1012_unless_a_code_was_set() {
        let (h, _rx, close) = handle(1);
        drop(h);
        assert_eq!(close.code(), Some(protocol::error::close::RESTARTING));
        let (h, _rx, close) = handle(1);
        close.close(protocol::error::close::TOO_SLOW);
        drop(h);
        assert_eq!(close.code(), Some(protocol::error::close::TOO_SLOW));
        close.wait().await;
    }
}
