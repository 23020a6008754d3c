//! Statuses of the messages a device sent: a recipient's `receipt` becomes a row of
//! the sender's inbox (so a sender that was offline catches up with `sync`, in seq
//! order with its messages) and a live `status` frame.
//!
//! Statuses only move forward (delivered → read), per message and recipient, and are
//! never stored twice: the session checks the current status (its cache, else the
//! store) before it writes one. A batch of receipts that was not made durable (the
//! session stopped with it in its mailbox, or the commit failed) is delivered again by
//! its [`ReceiptGuard`]; the forward-only check makes a second delivery harmless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::ReceiptStatus;
use tokio::sync::oneshot;

use super::inbox::CommittedRow;
use super::{advances, DeviceMsg, DeviceState};
use crate::store::{RowKind, StatusRecord};
use crate::Env;

/// Deliveries of one receipt batch tried before it is given up.
const MAX_DELIVERIES: u32 = 6;
/// Statuses a session remembers; past this it forgets them all and asks the store.
const CACHE_MAX: usize = 8192;

/// A recipient's receipt for one message.
#[derive(Debug, Clone)]
pub struct ReceiptNote {
    /// The message (sent by the session's device).
    pub message_id: Arc<str>,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// The reporting recipient's address.
    pub by: Arc<str>,
    /// When the receipt came (Unix ms).
    pub ts: i64,
}

/// Receipts for one sender, with the guard that delivers them again if they are lost.
#[derive(Debug)]
pub struct ReceiptBatch {
    /// The receipts.
    pub notes: Vec<ReceiptNote>,
    /// Redelivers the batch unless it is settled.
    pub guard: Arc<ReceiptGuard>,
}

impl ReceiptBatch {
    /// A first delivery of `notes` to `device_id`'s session.
    pub fn new(env: &Arc<Env>, device_id: &str, notes: Vec<ReceiptNote>) -> Self {
        let guard = Arc::new(ReceiptGuard::redelivering(
            env.clone(),
            device_id.to_owned(),
            notes.clone(),
            1,
        ));
        ReceiptBatch { notes, guard }
    }

    /// A batch from a reader on another node: whether it was stored comes out of the
    /// returned receiver (its sender delivers it again if not).
    pub fn answering(notes: Vec<ReceiptNote>) -> (Self, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let guard = Arc::new(ReceiptGuard {
            settled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            then: Then::Answer(Some(tx)),
        });
        (ReceiptBatch { notes, guard }, rx)
    }
}

/// What a [`ReceiptGuard`] does when its last holder drops it.
enum Then {
    /// Unsettled: deliver the batch again (a few times, with backoff).
    Redeliver {
        env: Arc<Env>,
        device_id: String,
        notes: Vec<ReceiptNote>,
        attempt: u32,
    },
    /// Tell the caller on another node whether the batch was stored.
    Answer(Option<oneshot::Sender<bool>>),
}

/// Delivers a receipt batch again when its last holder drops it unsettled (never
/// handled, or a status commit failed), or answers whether it was stored.
pub struct ReceiptGuard {
    settled: AtomicBool,
    failed: AtomicBool,
    then: Then,
}

impl ReceiptGuard {
    fn redelivering(
        env: Arc<Env>,
        device_id: String,
        notes: Vec<ReceiptNote>,
        attempt: u32,
    ) -> Self {
        ReceiptGuard {
            settled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            then: Then::Redeliver {
                env,
                device_id,
                notes,
                attempt,
            },
        }
    }

    /// The batch was handled (its status rows are queued, or another node stored it).
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// A status row of the batch failed to commit.
    fn failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for ReceiptGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ReceiptGuard");
        if let Then::Redeliver {
            device_id, attempt, ..
        } = &self.then
        {
            d.field("device_id", device_id).field("attempt", attempt);
        }
        d.finish()
    }
}

impl Drop for ReceiptGuard {
    fn drop(&mut self) {
        let lost = !self.settled.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire);
        let (env, device_id, notes, attempt) = match &mut self.then {
            Then::Answer(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(!lost);
                }
                return;
            }
            Then::Redeliver {
                env,
                device_id,
                notes,
                attempt,
            } => (
                env.clone(),
                std::mem::take(device_id),
                std::mem::take(notes),
                *attempt,
            ),
        };
        if !lost {
            return;
        }
        if attempt >= MAX_DELIVERIES {
            tracing::warn!(%device_id, receipts = notes.len(), "receipts given up");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let attempt = attempt + 1;
        runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10u64 << attempt)).await;
            let guard = Arc::new(ReceiptGuard::redelivering(
                env.clone(),
                device_id.clone(),
                notes.clone(),
                attempt,
            ));
            let batch = DeviceMsg::Receipts(ReceiptBatch { notes, guard });
            // On failure the batch (with its guard) is dropped: that schedules the next try.
            if let Err(e) = env.directory.deliver(&device_id, batch).await {
                tracing::debug!(%device_id, error = %e, "receipt redelivery failed");
            }
        });
    }
}

/// The statuses a session knows, per (message, recipient), including those not yet
/// durable.
#[derive(Debug, Default)]
pub struct StatusCache {
    known: HashMap<Arc<str>, HashMap<Arc<str>, ReceiptStatus>>,
    entries: usize,
}

impl StatusCache {
    /// Forgets everything (after a resync: what was not durable is not known).
    pub fn clear(&mut self) {
        self.known.clear();
        self.entries = 0;
    }
}

impl DeviceState {
    /// Writes each receipt that moves its message forward as a status row.
    pub(super) async fn receipts(&mut self, batch: ReceiptBatch) {
        if self.resyncing() {
            // Dropped unsettled: delivered again after the resync.
            return;
        }
        for note in batch.notes {
            match self.current_status(&note.message_id, &note.by).await {
                Ok(current) if advances(current, note.status) => {}
                Ok(_) => continue,
                // Dropped unsettled: delivered again later.
                Err(()) => return,
            }
            self.statuses
                .remember(&note.message_id, &note.by, note.status);
            let status = StatusRecord {
                message_id: note.message_id,
                status: note.status,
                by: note.by,
            };
            let guard = batch.guard.clone();
            self.write_row(
                RowKind::Status(status.clone()),
                note.ts,
                None,
                CommittedRow::Status(status, note.ts),
                move |ok| {
                    if !ok {
                        guard.failed();
                    }
                },
            );
        }
        batch.guard.settle();
    }

    /// The status `by` last reported for `message_id` (cache, else store).
    async fn current_status(
        &mut self,
        message_id: &Arc<str>,
        by: &Arc<str>,
    ) -> Result<Option<ReceiptStatus>, ()> {
        if let Some(per_message) = self.statuses.known.get(message_id) {
            return Ok(per_message.get(by).copied());
        }
        let stored = self
            .env
            .store
            .statuses(&self.device.id, message_id)
            .await
            .map_err(|e| {
                tracing::warn!(device_id = %self.device.id, error = %e, "could not read statuses");
            })?;
        let mut per_message: HashMap<Arc<str>, ReceiptStatus> = HashMap::new();
        for s in stored {
            let entry = per_message.entry(s.by.as_str().into()).or_insert(s.status);
            *entry = (*entry).max(s.status);
        }
        let current = per_message.get(by).copied();
        if self.statuses.entries + per_message.len() > CACHE_MAX {
            self.statuses.clear();
        }
        self.statuses.entries += per_message.len();
        self.statuses.known.insert(message_id.clone(), per_message);
        Ok(current)
    }
}

impl StatusCache {
    fn remember(&mut self, message_id: &Arc<str>, by: &Arc<str>, status: ReceiptStatus) {
        let per_message = self.known.entry(message_id.clone()).or_default();
        if per_message.insert(by.clone(), status).is_none() {
            self.entries += 1;
        }
    }
}
