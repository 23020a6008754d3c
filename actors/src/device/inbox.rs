//! The receiving side of a session's inbox: which rows it accepts, the seqs it hands
//! out, what is durable, and the resync after a failed commit.
//!
//! - **Order per sender.** A row is accepted only right after the row it must follow
//!   (its [`PairOrder::prev`]), as accepted by this incarnation; anything else is
//!   refused and its sender delivers it again later, in order (see `outbox.rs`).
//! - **Durable seq.** Rows of one inbox are committed in seq order (one writer per
//!   device, one batch at a time), so the highest committed seq is a prefix: every seq
//!   up to it is durable. `ready.last_seq` is this value, never a seq still in flight.
//! - **Resync.** A failed commit leaves a hole at its seq. The writer then refuses the
//!   device's later rows (fence), the session refuses new work, and once none of its
//!   rows is in flight it lifts the fence and goes on from the durable seq, so the
//!   inbox stays gap-free. Rows lost that way are delivered again by their senders.

use std::collections::HashMap;
use std::sync::Arc;

use super::outbox::{PairOrder, RowGuard, RowOutcome};
use super::{DeviceMsg, DeviceState};
use crate::conn::Frame;
use crate::metrics::secs_since_ms;
use crate::stats::Stats;
use crate::store::{InboxRow, MessageRecord, RowKind, RowResult, StatusRecord};

/// Senders whose order this incarnation remembers; past this it forgets them all (a
/// forgotten sender's next row is refused once, then resent in order: safe).
const MAX_SENDERS: usize = 4096;

/// A row for this inbox, from a sender session.
#[derive(Debug)]
pub struct Delivery {
    /// The sending device.
    pub from_device: Arc<str>,
    /// Where the row sits in the sender's stream.
    pub order: PairOrder,
    /// The message.
    pub message: Arc<MessageRecord>,
    /// Reports the outcome to the sender.
    pub guard: RowGuard,
}

/// A row of this inbox was committed (or failed), and what to do about it.
#[derive(Debug)]
pub struct Committed {
    /// Its seq.
    pub seq: u64,
    /// Whether it is durable.
    pub ok: bool,
    /// What the row was.
    pub what: CommittedRow,
}

/// What a committed row of this inbox was.
#[derive(Debug)]
pub enum CommittedRow {
    /// The sender's own copy of send `key`.
    Own {
        /// The send.
        key: u64,
        /// The message.
        message: Arc<MessageRecord>,
        /// The connection that sent it (it gets the ack, not the echo).
        origin: Option<u64>,
    },
    /// A message received.
    Received(Arc<MessageRecord>),
    /// A status of a sent message, reported at `ts`.
    Status(StatusRecord, i64),
}

#[derive(Debug, Clone, Copy)]
struct Accepted {
    epoch: u64,
    last_n: u64,
}

/// Seq bookkeeping of one inbox.
#[derive(Debug, Default)]
pub struct InboxState {
    next_seq: u64,
    /// Every seq up to this one is durable.
    pub durable_seq: u64,
    /// Rows handed to the writer and not yet settled.
    pub in_flight: usize,
    /// A commit failed: new work is refused until the in-flight rows settle.
    pub resyncing: bool,
    senders: HashMap<Arc<str>, Accepted>,
}

impl InboxState {
    /// Starts after `last` (the store's last seq).
    pub fn start_at(&mut self, last: u64) {
        self.durable_seq = last;
        self.next_seq = last + 1;
    }

    fn assign(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn accepts(&self, from: &str, order: &PairOrder) -> bool {
        match order.prev {
            None => true,
            Some(prev) => self
                .senders
                .get(from)
                .is_some_and(|a| a.epoch == order.epoch && a.last_n == prev),
        }
    }
}

impl DeviceState {
    /// Hands a row of this inbox to its writer; `done` runs with the outcome, on the
    /// writer, and must tell the session through [`DeviceMsg::Committed`].
    fn append(&mut self, row: InboxRow, done: impl FnOnce(RowResult) + Send + 'static) {
        self.inbox.in_flight += 1;
        let incarnation = self.tenure.map(|t| t.incarnation);
        self.env
            .persistence
            .append(row, incarnation, Box::new(done));
    }

    /// Assigns the next seq to a row of `kind` and writes it; the session hears of the
    /// commit as `what`, after `also` ran with the outcome on the writer.
    pub(super) fn write_row(
        &mut self,
        kind: RowKind,
        ts: i64,
        client_id: Option<String>,
        what: CommittedRow,
        also: impl FnOnce(bool) + Send + 'static,
    ) -> u64 {
        let seq = self.inbox.assign();
        let row = InboxRow {
            device_id: self.id.clone(),
            seq,
            kind,
            ts,
            client_id,
            epoch: self.tenure.map_or(0, |t| t.epoch),
            into_fence: self.tenure.is_some_and(|t| seq <= t.fence_top),
        };
        let me = self.me.clone();
        self.append(row, move |result| {
            let ok = result.is_ok();
            also(ok);
            let _ = me.cast(DeviceMsg::Committed(Committed { seq, ok, what }));
        });
        seq
    }

    /// A row from a sender: accepted in order, or refused. A row delivered again may
    /// already be here (its first try's answer was lost between nodes): then it is
    /// answered as committed and not written twice.
    pub(super) async fn accept(&mut self, d: Delivery) {
        if self.inbox.resyncing || !self.inbox.accepts(&d.from_device, &d.order) {
            d.guard.complete(RowOutcome::Rejected);
            return;
        }
        if d.guard.attempt() > 1 {
            let ids = [d.message.id.to_string()];
            match self.env.store.inbox_messages(&self.device.id, &ids).await {
                Ok(found) if !found.is_empty() => {
                    self.note_accepted(&d.from_device, &d.order);
                    d.guard.complete(RowOutcome::Committed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(device_id = %self.device.id, error = %e, "could not check a redelivered row");
                    d.guard.complete(RowOutcome::Failed);
                    return;
                }
            }
        }
        if let Some(faults) = self.env.test_faults() {
            if faults.take_row_panic(&self.device.id) {
                panic!("row panic injected into device session {}", self.device.id);
            }
        }
        self.note_accepted(&d.from_device, &d.order);
        self.messages_in += 1;
        let guard = d.guard;
        let message = d.message;
        self.write_row(
            RowKind::Message(message.clone()),
            message.ts,
            None,
            CommittedRow::Received(message),
            move |ok| {
                guard.complete(if ok {
                    RowOutcome::Committed
                } else {
                    RowOutcome::Failed
                })
            },
        );
    }

    /// Remembers the last row accepted from a sender (the next must follow it).
    fn note_accepted(&mut self, from: &Arc<str>, order: &PairOrder) {
        if self.inbox.senders.len() >= MAX_SENDERS && !self.inbox.senders.contains_key(from) {
            self.inbox.senders.clear();
        }
        self.inbox.senders.insert(
            from.clone(),
            Accepted {
                epoch: order.epoch,
                last_n: order.n,
            },
        );
    }

    /// A row of this inbox settled.
    pub(super) async fn committed(&mut self, note: Committed) {
        self.inbox.in_flight = self.inbox.in_flight.saturating_sub(1);
        if note.ok {
            self.inbox.durable_seq = self.inbox.durable_seq.max(note.seq);
            match note.what {
                CommittedRow::Own {
                    key,
                    message,
                    origin,
                } => {
                    // The sender's other connections see their own sent message.
                    if !self.conns.is_empty() {
                        let frame = super::message_frame(&message, note.seq);
                        self.push_all(frame, origin);
                    }
                    self.own_row_settled(key, true);
                }
                CommittedRow::Received(message) => {
                    if !self.conns.is_empty() {
                        let frame = super::message_frame(&message, note.seq);
                        if self.push_all(frame, None) > 0 {
                            Stats::inc(&self.env.stats.messages_delivered);
                            self.metrics.delivered.increment(1);
                            self.env
                                .stats
                                .metrics
                                .delivery_latency
                                .record(secs_since_ms(message.ts));
                        }
                    }
                }
                CommittedRow::Status(status, ts) => {
                    let frame: Frame = protocol::StatusRef {
                        message_id: &status.message_id,
                        seq: note.seq,
                        ts,
                        status: status.status,
                        by: &status.by,
                    }
                    .encode()
                    .into();
                    self.push_all(frame, None);
                }
            }
        } else {
            if !self.inbox.resyncing {
                tracing::warn!(device_id = %self.device.id, seq = note.seq, "inbox commit failed; resyncing");
                self.inbox.resyncing = true;
            }
            if let CommittedRow::Own { key, .. } = note.what {
                self.own_row_settled(key, false);
            }
        }
        if self.inbox.resyncing && self.inbox.in_flight == 0 {
            self.finish_resync().await;
        }
    }

    /// Every row is settled after a failed commit: go on from the durable seq, as the
    /// store has it (a commit reported failed may have landed after all, e.g. when the
    /// store went away before answering; its seq is then taken, and its sender, told
    /// it failed, delivers it again and finds it there). Until the store answers, the
    /// resync stays on and is tried again.
    async fn finish_resync(&mut self) {
        let stored = match self.env.store.last_seq(&self.device.id).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::debug!(device_id = %self.device.id, error = %e, "resync: the durable seq could not be read; trying again");
                self.me
                    .send_after(std::time::Duration::from_millis(200), || DeviceMsg::Resync);
                return;
            }
        };
        self.env.persistence.reset(&self.device.id).await;
        if stored > self.inbox.durable_seq {
            tracing::info!(device_id = %self.device.id, durable_seq = self.inbox.durable_seq, stored, "a commit reported failed had landed");
            self.inbox.durable_seq = stored;
        }
        self.inbox.next_seq = self.inbox.durable_seq + 1;
        self.inbox.senders.clear();
        self.statuses.clear();
        self.inbox.resyncing = false;
        tracing::info!(device_id = %self.device.id, durable_seq = self.inbox.durable_seq, "inbox resynced");
    }

    /// A resync waiting for the store: finish it once nothing is in flight.
    pub(super) async fn retry_resync(&mut self) {
        if self.inbox.resyncing && self.inbox.in_flight == 0 {
            self.finish_resync().await;
        }
    }

    /// Whether new work must wait for a resync.
    pub(super) fn resyncing(&self) -> bool {
        self.inbox.resyncing
    }
}
