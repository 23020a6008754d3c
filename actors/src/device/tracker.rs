//! Tracks one send until every inbox row it wrote is durable, then tells the sender's
//! session. A recipient row whose guard is dropped unfinished (the recipient's session
//! died with the message in its mailbox) or whose commit failed was not written, so it
//! is delivered again, a few times with backoff, before the send counts as failed. A
//! send is never acked on a lost write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;

use super::{DeviceMsg, Outgoing};
use crate::store::StoreError;
use crate::Env;

/// Deliveries of one recipient row tried before the send fails.
const MAX_DELIVERIES: u32 = 6;

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

/// What is needed to deliver a recipient row again.
struct Redelivery {
    env: Arc<Env>,
    device_id: String,
    outgoing: Arc<Outgoing>,
    attempt: u32,
}

/// One row's share of a [`SendTracker`].
pub struct RowGuard {
    tracker: Option<Arc<SendTracker>>,
    redelivery: Option<Redelivery>,
}

impl RowGuard {
    /// A guard for the sender's own row.
    pub fn new(tracker: &Arc<SendTracker>) -> Self {
        RowGuard {
            tracker: Some(tracker.clone()),
            redelivery: None,
        }
    }

    /// A guard for a recipient's row, delivered again if it is lost.
    pub fn for_recipient(
        tracker: &Arc<SendTracker>,
        env: &Arc<Env>,
        device_id: &str,
        outgoing: &Arc<Outgoing>,
    ) -> Self {
        RowGuard {
            tracker: Some(tracker.clone()),
            redelivery: Some(Redelivery {
                env: env.clone(),
                device_id: device_id.to_owned(),
                outgoing: outgoing.clone(),
                attempt: 1,
            }),
        }
    }

    /// Reports the row's outcome.
    pub fn complete(mut self, result: &Result<(), StoreError>) {
        if result.is_ok() {
            if let Some(t) = self.tracker.take() {
                t.finish_one(true);
            }
        } else {
            self.fail();
        }
    }

    fn fail(&mut self) {
        let Some(tracker) = self.tracker.take() else {
            return;
        };
        let runtime = tokio::runtime::Handle::try_current();
        match (self.redelivery.take(), runtime) {
            (Some(r), Ok(runtime)) if r.attempt < MAX_DELIVERIES => {
                runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10 << r.attempt)).await;
                    let guard = RowGuard {
                        tracker: Some(tracker),
                        redelivery: Some(Redelivery {
                            attempt: r.attempt + 1,
                            env: r.env.clone(),
                            device_id: r.device_id.clone(),
                            outgoing: r.outgoing.clone(),
                        }),
                    };
                    let msg = DeviceMsg::Deliver(r.outgoing, guard);
                    // On failure the message, and with it the guard, is dropped: that
                    // schedules the next attempt.
                    if let Err(e) = r.env.directory.deliver(&r.device_id, msg).await {
                        tracing::warn!(device_id = %r.device_id, error = %e, "redelivery failed");
                    }
                });
            }
            _ => tracker.finish_one(false),
        }
    }
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        self.fail();
    }
}
