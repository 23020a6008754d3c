//! The sender's side of delivery: every recipient row of every send, until it is
//! durable in the recipient's inbox, delivered again (in order) when it is lost.
//!
//! Rows to one recipient must land in its inbox in the order they were sent, even when
//! some are lost on the way (the recipient's session died with them in its mailbox, or
//! their commit failed) and delivered again. So each row carries its place in the
//! sender's stream ([`PairOrder`]): a number `n` and `prev`, the row to the same
//! recipient it must follow (`None` when every earlier row to that recipient is
//! durable). The recipient accepts a row only right after `prev` (see the inbox side in
//! `inbox.rs`), so a row that overtook a lost one is refused. The sender then waits
//! until none of the recipient's rows is in flight and sends every lost or held row
//! again, in order, the first with `prev = None` — go-back-N, as in TCP.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::oneshot;

use super::DeviceMsg;
use crate::store::MessageRecord;

/// Tries of one recipient row before its send counts as failed.
pub const MAX_ATTEMPTS: u32 = 6;

/// A row's place in its sender's outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOrder {
    /// The sender session's incarnation: numbers restart with it.
    pub epoch: u64,
    /// This row's number in the sender's stream (all recipients).
    pub n: u64,
    /// The row to the same recipient this one must follow; `None` when every earlier
    /// row to that recipient is durable.
    pub prev: Option<u64>,
}

/// How a recipient row ended, as reported back to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOutcome {
    /// Durable in the recipient's inbox.
    Committed,
    /// Refused: it came before the row it must follow, or the inbox was resyncing.
    Rejected,
    /// Accepted, but its commit failed.
    Failed,
    /// Never handled (the recipient's session stopped with it in its mailbox, or it
    /// could not be routed).
    Dropped,
    /// The recipient device no longer exists: nothing to write.
    Gone,
    /// Not handled because the recipient's owner could not be reached (another node,
    /// gone or not yet taken over): delivered again, not counted as a try.
    Deferred,
}

/// A recipient row's outcome, for its sender session.
#[derive(Debug, Clone)]
pub struct RowDone {
    /// The recipient device.
    pub recipient: Arc<str>,
    /// The row's number in the sender's stream.
    pub n: u64,
    /// Which try of the row this was.
    pub attempt: u32,
    /// What happened.
    pub outcome: RowOutcome,
}

/// Where a [`RowGuard`] reports.
enum Reporter {
    /// The sender session, on this node.
    Session(ActorRef<DeviceMsg>),
    /// A sender on another node: the outcome goes back over the bus.
    Remote(oneshot::Sender<RowOutcome>),
}

/// Travels with a recipient row and reports its outcome to the sender exactly once:
/// explicitly, or [`RowOutcome::Dropped`] when dropped unreported.
pub struct RowGuard {
    sender: Option<Reporter>,
    recipient: Arc<str>,
    n: u64,
    attempt: u32,
}

impl RowGuard {
    /// A guard reporting to `sender` for row `n` (try `attempt`) to `recipient`.
    pub fn new(sender: ActorRef<DeviceMsg>, recipient: Arc<str>, n: u64, attempt: u32) -> Self {
        RowGuard {
            sender: Some(Reporter::Session(sender)),
            recipient,
            n,
            attempt,
        }
    }

    /// A guard for a row from a sender on another node: the outcome comes out of the
    /// returned receiver.
    pub fn remote(
        recipient: Arc<str>,
        n: u64,
        attempt: u32,
    ) -> (Self, oneshot::Receiver<RowOutcome>) {
        let (tx, rx) = oneshot::channel();
        let guard = RowGuard {
            sender: Some(Reporter::Remote(tx)),
            recipient,
            n,
            attempt,
        };
        (guard, rx)
    }

    /// The row's number in its sender's stream.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Which try of the row this is (a later try may find the row already written).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports the outcome.
    pub fn complete(mut self, outcome: RowOutcome) {
        self.report(outcome);
    }

    fn report(&mut self, outcome: RowOutcome) {
        match self.sender.take() {
            Some(Reporter::Session(sender)) => {
                let _ = sender.cast(DeviceMsg::RowDone(RowDone {
                    recipient: self.recipient.clone(),
                    n: self.n,
                    attempt: self.attempt,
                    outcome,
                }));
            }
            Some(Reporter::Remote(tx)) => {
                let _ = tx.send(outcome);
            }
            None => {}
        }
    }
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        self.report(RowOutcome::Dropped);
    }
}

impl std::fmt::Debug for RowGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowGuard")
            .field("recipient", &self.recipient)
            .field("n", &self.n)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowState {
    /// Sent; its outcome is awaited.
    InFlight,
    /// Lost; sent again by the next resend pass.
    Lost,
    /// Not sent yet: an earlier row to the same recipient was lost.
    Held,
}

#[derive(Debug)]
struct OutRow {
    n: u64,
    key: u64,
    message: Arc<MessageRecord>,
    state: RowState,
    /// Identifies the current try (reports of older tries are ignored).
    attempt: u32,
    /// Tries that counted against [`MAX_ATTEMPTS`] (deferrals do not).
    tries: u32,
    since: Instant,
}

#[derive(Debug, Default)]
struct Pair {
    rows: VecDeque<OutRow>,
    resend_scheduled: bool,
}

impl Pair {
    fn in_flight(&self) -> bool {
        self.rows.iter().any(|r| r.state == RowState::InFlight)
    }

    fn waiting(&self) -> bool {
        self.rows.iter().any(|r| r.state != RowState::InFlight)
    }
}

/// A row to hand to the recipient now.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Its place in the stream.
    pub order: PairOrder,
    /// Which try this is.
    pub attempt: u32,
    /// The message.
    pub message: Arc<MessageRecord>,
}

/// What a [`RowDone`] settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing (a stale report, or the row will be tried again).
    Nothing,
    /// The row of send `key` is done: written (or its recipient is gone) when `ok`,
    /// given up when not.
    Row {
        /// The send.
        key: u64,
        /// Whether it counts as written.
        ok: bool,
    },
}

/// Every recipient row of a sender session not yet durable, per recipient.
#[derive(Debug)]
pub struct Outbox {
    epoch: u64,
    next_n: u64,
    pairs: HashMap<Arc<str>, Pair>,
    give_up_after: Duration,
}

impl Outbox {
    /// An empty outbox for a session incarnation; a row not durable `give_up_after` it
    /// was queued is given up at its next failure.
    pub fn new(epoch: u64, give_up_after: Duration) -> Self {
        Outbox {
            epoch,
            next_n: 1,
            pairs: HashMap::new(),
            give_up_after,
        }
    }

    /// Whether no row is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Hands a row of `message_id` to `recipient` that is still outstanding over to send
    /// `key` (its outcome now settles that send), answering whether there was one. Such
    /// a row is delivered (or given up) by this outbox; nobody may deliver it meanwhile.
    pub fn adopt(&mut self, recipient: &str, message_id: &str, key: u64) -> bool {
        let Some(row) = self
            .pairs
            .get_mut(recipient)
            .and_then(|p| p.rows.iter_mut().find(|r| &*r.message.id == message_id))
        else {
            return false;
        };
        row.key = key;
        true
    }

    /// Rows outstanding, over every recipient.
    pub fn len(&self) -> usize {
        self.pairs.values().map(|p| p.rows.len()).sum()
    }

    /// Adds a row of send `key` to `recipient`. Answers what to send now, or `None` if
    /// it is held behind a lost row (the next resend pass sends it).
    pub fn push(
        &mut self,
        recipient: &Arc<str>,
        key: u64,
        message: Arc<MessageRecord>,
    ) -> Option<Dispatch> {
        let n = self.next_n;
        self.next_n += 1;
        let pair = self.pairs.entry(recipient.clone()).or_default();
        let held = pair.waiting();
        let prev = pair.rows.back().map(|r| r.n);
        pair.rows.push_back(OutRow {
            n,
            key,
            message: message.clone(),
            state: if held {
                RowState::Held
            } else {
                RowState::InFlight
            },
            attempt: 1,
            tries: 0,
            since: Instant::now(),
        });
        (!held).then_some(Dispatch {
            order: PairOrder {
                epoch: self.epoch,
                n,
                prev,
            },
            attempt: 1,
            message,
        })
    }

    /// Applies a row's outcome. `resend` is set when a resend pass for the recipient
    /// should be scheduled (after a backoff, see [`Outbox::backoff`]).
    pub fn done(&mut self, report: &RowDone) -> (Settled, bool) {
        let Some(pair) = self.pairs.get_mut(&report.recipient) else {
            return (Settled::Nothing, false);
        };
        let Some(i) = pair
            .rows
            .iter()
            .position(|r| r.n == report.n && r.attempt == report.attempt)
        else {
            return (Settled::Nothing, false);
        };
        if pair.rows[i].state != RowState::InFlight {
            return (Settled::Nothing, false);
        }
        let settled = match report.outcome {
            RowOutcome::Committed | RowOutcome::Gone => {
                let row = pair.rows.remove(i);
                row.map_or(Settled::Nothing, |r| Settled::Row {
                    key: r.key,
                    ok: true,
                })
            }
            RowOutcome::Rejected
            | RowOutcome::Failed
            | RowOutcome::Dropped
            | RowOutcome::Deferred => {
                let row = &mut pair.rows[i];
                if report.outcome != RowOutcome::Deferred {
                    row.tries += 1;
                }
                if row.tries >= MAX_ATTEMPTS || row.since.elapsed() >= self.give_up_after {
                    let row = pair.rows.remove(i);
                    row.map_or(Settled::Nothing, |r| Settled::Row {
                        key: r.key,
                        ok: false,
                    })
                } else {
                    pair.rows[i].state = RowState::Lost;
                    Settled::Nothing
                }
            }
        };
        let resend = !pair.in_flight() && pair.waiting() && !pair.resend_scheduled;
        if resend {
            pair.resend_scheduled = true;
        }
        if pair.rows.is_empty() {
            self.pairs.remove(&report.recipient);
        }
        (settled, resend)
    }

    /// How long to wait before resending to `recipient`: grows with the tries of its
    /// oldest waiting row.
    pub fn backoff(&self, recipient: &str) -> Duration {
        let attempt = self
            .pairs
            .get(recipient)
            .and_then(|p| p.rows.iter().find(|r| r.state != RowState::InFlight))
            .map_or(1, |r| r.attempt);
        Duration::from_millis(10u64 << attempt.min(6))
    }

    /// The resend pass for `recipient`: every lost or held row, in order, the first
    /// after no row (everything before it is durable). Empty while a row is still in
    /// flight (the pass is scheduled again once it settles).
    pub fn resend(&mut self, recipient: &Arc<str>) -> Vec<Dispatch> {
        let epoch = self.epoch;
        let Some(pair) = self.pairs.get_mut(recipient) else {
            return Vec::new();
        };
        pair.resend_scheduled = false;
        if pair.in_flight() {
            return Vec::new();
        }
        let mut prev = None;
        let mut out = Vec::with_capacity(pair.rows.len());
        for row in pair.rows.iter_mut() {
            if row.state == RowState::Lost {
                row.attempt += 1;
            }
            row.state = RowState::InFlight;
            out.push(Dispatch {
                order: PairOrder {
                    epoch,
                    n: row.n,
                    prev,
                },
                attempt: row.attempt,
                message: row.message.clone(),
            });
            prev = Some(row.n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(id: &str) -> Arc<MessageRecord> {
        Arc::new(MessageRecord {
            id: id.into(),
            sender_device: Some("s".into()),
            from: "+1".into(),
            to: Some("+2".into()),
            group: None,
            body: "{}".into(),
            ts: 1,
        })
    }

    fn report(r: &Arc<str>, d: &Dispatch, outcome: RowOutcome) -> RowDone {
        RowDone {
            recipient: r.clone(),
            n: d.order.n,
            attempt: d.attempt,
            outcome,
        }
    }

    #[test]
    fn pipelined_rows_follow_each_other() {
        let mut o = Outbox::new(7, Duration::from_secs(3600));
        let r: Arc<str> = "r".into();
        let a = o.push(&r, 1, msg("a")).unwrap();
        let b = o.push(&r, 2, msg("b")).unwrap();
        assert_eq!(a.order.prev, None);
        assert_eq!(b.order.prev, Some(a.order.n));
        assert_eq!(
            o.done(&report(&r, &a, RowOutcome::Committed)),
            (Settled::Row { key: 1, ok: true }, false)
        );
        // After `a` is durable, a new row needs no predecessor... but `b` is in flight.
        let c = o.push(&r, 3, msg("c")).unwrap();
        assert_eq!(c.order.prev, Some(b.order.n));
        o.done(&report(&r, &b, RowOutcome::Committed));
        o.done(&report(&r, &c, RowOutcome::Committed));
        assert!(o.is_empty());
        let d = o.push(&r, 4, msg("d")).unwrap();
        assert_eq!(d.order.prev, None);
    }

    #[test]
    fn a_lost_row_is_resent_before_the_rows_after_it() {
        let mut o = Outbox::new(1, Duration::from_secs(3600));
        let r: Arc<str> = "r".into();
        let a = o.push(&r, 1, msg("a")).unwrap();
        let b = o.push(&r, 2, msg("b")).unwrap();
        // `a` dropped; `b` refused (it came without `a` before it).
        assert_eq!(
            o.done(&report(&r, &a, RowOutcome::Dropped)),
            (Settled::Nothing, false)
        );
        // A new row while one is lost is held, not sent.
        assert!(o.push(&r, 3, msg("c")).is_none());
        // Still `b` in flight: no pass yet.
        assert!(o.resend(&r).is_empty());
        let (_, resend) = o.done(&report(&r, &b, RowOutcome::Rejected));
        assert!(resend, "nothing in flight: schedule the pass");
        let again = o.resend(&r);
        let ids: Vec<&str> = again.iter().map(|d| &*d.message.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(again[0].order.prev, None);
        assert_eq!(again[1].order.prev, Some(again[0].order.n));
        assert_eq!(again[2].order.prev, Some(again[1].order.n));
        assert_eq!(again[0].attempt, 2);
        assert_eq!(again[2].attempt, 1, "a held row's first try");
        // A stale report of the first try changes nothing.
        assert_eq!(
            o.done(&report(&r, &a, RowOutcome::Committed)),
            (Settled::Nothing, false)
        );
        for d in &again {
            o.done(&report(&r, d, RowOutcome::Committed));
        }
        assert!(o.is_empty());
    }

    #[test]
    fn a_row_is_given_up_after_the_last_try_and_gone_counts_as_written() {
        let mut o = Outbox::new(1, Duration::from_secs(3600));
        let r: Arc<str> = "r".into();
        let mut d = o.push(&r, 9, msg("a")).unwrap();
        for _ in 1..MAX_ATTEMPTS {
            let (settled, resend) = o.done(&report(&r, &d, RowOutcome::Failed));
            assert_eq!((settled, resend), (Settled::Nothing, true));
            d = o.resend(&r).pop().unwrap();
        }
        assert_eq!(
            o.done(&report(&r, &d, RowOutcome::Failed)).0,
            Settled::Row { key: 9, ok: false }
        );
        assert!(o.is_empty());
        let g = o.push(&r, 10, msg("b")).unwrap();
        assert_eq!(
            o.done(&report(&r, &g, RowOutcome::Gone)).0,
            Settled::Row { key: 10, ok: true }
        );
    }

    #[test]
    fn deferrals_do_not_count_as_tries_but_the_deadline_does() {
        let mut o = Outbox::new(1, Duration::from_secs(3600));
        let r: Arc<str> = "r".into();
        let mut d = o.push(&r, 1, msg("a")).unwrap();
        for _ in 0..(MAX_ATTEMPTS * 3) {
            let (settled, resend) = o.done(&report(&r, &d, RowOutcome::Deferred));
            assert_eq!((settled, resend), (Settled::Nothing, true));
            d = o.resend(&r).pop().unwrap();
        }
        assert_eq!(
            o.done(&report(&r, &d, RowOutcome::Committed)).0,
            Settled::Row { key: 1, ok: true }
        );
        // Past its deadline, a row is given up at its next failure, deferred or not.
        let mut o = Outbox::new(1, Duration::ZERO);
        let d = o.push(&r, 2, msg("b")).unwrap();
        assert_eq!(
            o.done(&report(&r, &d, RowOutcome::Deferred)).0,
            Settled::Row { key: 2, ok: false }
        );
    }

    #[test]
    fn an_adopted_row_settles_the_send_that_took_it_over() {
        let mut o = Outbox::new(1, Duration::from_secs(3600));
        let r: Arc<str> = "r".into();
        let d = o.push(&r, 1, msg("a")).unwrap();
        assert!(!o.adopt(&r, "other", 2));
        assert!(!o.adopt("someone else", "a", 2));
        assert!(o.adopt(&r, "a", 2));
        assert_eq!(
            o.done(&report(&r, &d, RowOutcome::Committed)).0,
            Settled::Row { key: 2, ok: true }
        );
        assert!(!o.adopt(&r, "a", 3), "settled rows are not outstanding");
    }
}
