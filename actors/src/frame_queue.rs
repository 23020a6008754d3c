//! The outbound frame queue of one connection: bounded, many senders, one receiver.
//!
//! Why not a tokio `mpsc` channel: one is created per connection, and tokio's channel
//! allocates its shared state and a first block of 32 slots up front, about 1 KiB that
//! an idle connection keeps for its whole life. This queue is a `VecDeque` behind a
//! mutex with a `Notify`: about 150 bytes while empty, and a burst's buffer is released
//! again once drained. Senders never wait (`try_send`), as with the channel it
//! replaces: the session keeps what does not fit in its own overflow queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::Notify;

use crate::conn::Frame;

/// A drained queue keeps its buffer up to this many frames; a larger one is released.
const KEEP_FRAMES: usize = 8;

struct Shared {
    frames: Mutex<VecDeque<Frame>>,
    capacity: usize,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    notify: Notify,
}

impl Shared {
    fn frames(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        // A panic while holding the lock leaves a consistent queue (push or pop only).
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bounded queue of frames: `capacity` frames at most.
pub fn frame_queue(capacity: usize) -> (FrameSender, FrameReceiver) {
    let shared = Arc::new(Shared {
        frames: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        notify: Notify::new(),
    });
    (
        FrameSender {
            shared: shared.clone(),
        },
        FrameReceiver { shared },
    )
}

/// The sending side (cloneable).
pub struct FrameSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Queues `frame` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, frame: Frame) -> Result<(), TrySendError<Frame>> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(frame));
        }
        {
            let mut frames = self.shared.frames();
            if frames.len() >= self.shared.capacity {
                return Err(TrySendError::Full(frame));
            }
            frames.push_back(frame);
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl Clone for FrameSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        FrameSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: the receiver ends once it has taken what is queued.
            self.shared.notify.notify_one();
        }
    }
}

/// The receiving side.
pub struct FrameReceiver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver").finish_non_exhaustive()
    }
}

impl FrameReceiver {
    /// The next frame; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: the queue is looked at before every wait, so a frame is never
    /// missed and never taken by a dropped call.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.try_recv() {
                Ok(frame) => return Some(frame),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.shared.notify.notified().await,
            }
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Frame, TryRecvError> {
        // Senders are counted before the queue is read: a last sender that queued and
        // then dropped is seen with its frame still in the queue.
        let senders = self.shared.senders.load(Ordering::Acquire);
        let mut frames = self.shared.frames();
        match frames.pop_front() {
            Some(frame) => {
                if frames.is_empty() && frames.capacity() > KEEP_FRAMES {
                    *frames = VecDeque::new();
                }
                Ok(frame)
            }
            None if senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        self.shared.frames().clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(s: &str) -> Frame {
        Arc::from(s)
    }

    #[tokio::test]
    async fn frames_come_out_in_order_up_to_the_capacity() {
        let (tx, mut rx) = frame_queue(2);
        tx.try_send(frame("a")).unwrap();
        tx.try_send(frame("b")).unwrap();
        assert!(matches!(
            tx.try_send(frame("c")),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(&*rx.recv().await.unwrap(), "a");
        tx.try_send(frame("c")).unwrap();
        assert_eq!(&*rx.recv().await.unwrap(), "b");
        assert_eq!(&*rx.try_recv().unwrap(), "c");
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn the_receiver_ends_after_the_last_sender_and_what_it_queued() {
        let (tx, mut rx) = frame_queue(4);
        let tx2 = tx.clone();
        drop(tx);
        tx2.try_send(frame("last")).unwrap();
        drop(tx2);
        assert_eq!(&*rx.recv().await.unwrap(), "last");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = frame_queue(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(frame("x")).unwrap();
        assert_eq!(&*waiter.await.unwrap().unwrap(), "x");
    }

    #[tokio::test]
    async fn sends_fail_once_the_receiver_is_gone() {
        let (tx, rx) = frame_queue(4);
        drop(rx);
        assert!(matches!(
            tx.try_send(frame("x")),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn a_drained_burst_releases_its_buffer() {
        let (tx, mut rx) = frame_queue(1024);
        for i in 0..100 {
            tx.try_send(frame(&i.to_string())).unwrap();
        }
        for _ in 0..100 {
            rx.try_recv().unwrap();
        }
        assert_eq!(rx.shared.frames().capacity(), 0);
    }
}
