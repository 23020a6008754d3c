//! Tracks one send until every inbox row it wrote is durable, then tells the sender's
//! session. A row whose guard is dropped unfinished (its session or writer died)
//! counts as failed, so a send is never acked on a lost write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;

use super::DeviceMsg;
use crate::store::StoreError;

/// Shared by the rows of one send.
pub struct SendTracker {
    remaining: AtomicUsize,
    failed: AtomicBool,
    session: ActorRef<DeviceMsg>,
    key: u64,
}

impl SendTracker {
    /// A tracker expecting `rows` completions, reporting to `session` under `key`.
    pub fn new(rows: usize, session: ActorRef<DeviceMsg>, key: u64) -> Arc<Self> {
        Arc::new(SendTracker {
            remaining: AtomicUsize::new(rows),
            failed: AtomicBool::new(false),
            session,
            key,
        })
    }

    fn finish_one(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ok = !self.failed.load(Ordering::Acquire);
            let _ = self.session.cast(DeviceMsg::SendDone(self.key, ok));
        }
    }
}

/// One row's share of a [`SendTracker`].
pub struct RowGuard {
    tracker: Option<Arc<SendTracker>>,
}

impl RowGuard {
    /// A guard for one row of `tracker`.
    pub fn new(tracker: &Arc<SendTracker>) -> Self {
        RowGuard {
            tracker: Some(tracker.clone()),
        }
    }

    /// Reports the row's outcome.
    pub fn complete(mut self, result: &Result<(), StoreError>) {
        if let Some(t) = self.tracker.take() {
            t.finish_one(result.is_ok());
        }
    }
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracker.take() {
            t.finish_one(false);
        }
    }
}
