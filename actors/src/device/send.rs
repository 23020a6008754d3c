//! A send, from request to answer: idempotency by request id, budgets (a group send
//! costs one unit per recipient), the sender's own copy and one row per recipient, and
//! the ack once every row is durable. A send that failed or was interrupted after it
//! was accepted is completed by a resend under the same request id, with the same
//! message id: the missing rows are written, nothing is written twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::background::SYSTEM_ADDRESS;
use protocol::rest::MessageAccepted;
use protocol::{ErrorCode, Priority, Target};

use super::inbox::{CommittedRow, Delivery};
use super::outbox::{Dispatch, RowDone, RowGuard, RowOutcome, Settled};
use super::{
    routing, DeviceMsg, DeviceState, Incomplete, PendingSend, Recent, Responder, SendError,
    SendRequest,
};
use crate::clock::now_ms;
use crate::directory::RouteError;
use crate::limits::shared::{Grant, Window};
use crate::limits::{Scope, TokenBucket};
use crate::stats::Stats;
use crate::store::{MessageRecord, RowKind};

impl DeviceState {
    /// Handles one send request.
    pub(super) async fn send(&mut self, req: SendRequest, responder: Responder) {
        let received = Instant::now();
        let client_id = req.client_id.clone();
        if let Some(id) = &client_id {
            match self.recent.get(id) {
                Some(Recent::Done(answer)) => {
                    let answer = answer.clone();
                    self.respond(responder, Some(id), Ok(answer));
                    return;
                }
                Some(Recent::Pending(key)) => {
                    if let Some(p) = self.pending.get_mut(key) {
                        p.responders.push(responder);
                        return;
                    }
                }
                Some(Recent::Incomplete(inc)) => {
                    let inc = (**inc).clone();
                    self.complete(id.clone(), inc, responder).await;
                    return;
                }
                None => {}
            }
            if let Some(earlier) = req.resume {
                // Sent before under this id, longer ago than the idempotency window.
                let inc = Incomplete {
                    answer: MessageAccepted {
                        message_id: earlier.message_id,
                        seq: earlier.seq,
                        ts: earlier.ts,
                    },
                    message: None,
                };
                self.complete(id.clone(), inc, responder).await;
                return;
            }
        }
        if self.resyncing() {
            let err = SendError::new(ErrorCode::Unavailable, "inbox resyncing; retry");
            self.respond(responder, client_id.as_deref(), Err(err));
            return;
        }
        // A media reference must name a file of this tenant (`crate::media`).
        if let Err(e) = crate::media::check_body(&self.env, &self.device.tenant_id, &req.body).await
        {
            self.respond(responder, client_id.as_deref(), Err(e));
            return;
        }
        let recipients = match routing::recipients(&self.env, &self.device, &req.target).await {
            Ok(r) => r,
            Err(e) => {
                self.respond(responder, client_id.as_deref(), Err(e));
                return;
            }
        };
        let cost = u32::try_from(recipients.len().max(1)).unwrap_or(u32::MAX);
        if let Err(e) = self.take_budgets(req.priority, &req.target, cost).await {
            Stats::inc(&self.env.stats.rate_limited);
            self.respond(responder, client_id.as_deref(), Err(e));
            return;
        }
        let (to, group) = match &req.target {
            Target::To(a) => (Some(Arc::from(a.as_str())), None),
            Target::Group(g) => (None, Some(Arc::from(g.as_str()))),
        };
        let message = Arc::new(MessageRecord {
            id: format!("m_{}", ulid::Ulid::new()).into(),
            sender_device: Some(self.id.clone()),
            from: self.address.clone(),
            to,
            group,
            body: req.body,
            ts: now_ms(),
        });
        self.messages_out += 1;
        self.metrics.sent.increment(1);
        let origin = match &responder {
            Responder::Conn(id) => Some(*id),
            Responder::Rest(_) => None,
        };
        let key = self.next_key;
        self.next_key += 1;
        let seq = self.write_own(key, &message, client_id.clone(), origin);
        self.pending.insert(
            key,
            PendingSend {
                received,
                client_id: client_id.clone(),
                answer: MessageAccepted {
                    message_id: message.id.to_string(),
                    seq,
                    ts: message.ts,
                },
                message: message.clone(),
                responders: vec![responder],
                remaining: recipients.len() + 1,
                failed: false,
            },
        );
        if let Some(id) = client_id {
            self.remember(id, Recent::Pending(key));
        }
        self.deliver_all(key, &message, recipients).await;
    }

    fn write_own(
        &mut self,
        key: u64,
        message: &Arc<MessageRecord>,
        client_id: Option<String>,
        origin: Option<u64>,
    ) -> u64 {
        self.write_row(
            RowKind::Message(message.clone()),
            message.ts,
            client_id,
            CommittedRow::Own {
                key,
                message: message.clone(),
                origin,
            },
            |_| {},
        )
    }

    /// Queues a row of send `key` to each recipient, and hands over those that may go now.
    async fn deliver_all(
        &mut self,
        key: u64,
        message: &Arc<MessageRecord>,
        recipients: Vec<String>,
    ) {
        for recipient in recipients {
            let recipient: Arc<str> = recipient.into();
            if let Some(d) = self.outbox.push(&recipient, key, message.clone()) {
                self.dispatch(&recipient, d).await;
            }
        }
    }

    /// Hands one row to the recipient's session (started if needed).
    async fn dispatch(&mut self, recipient: &Arc<str>, d: Dispatch) {
        let guard = RowGuard::new(self.me.clone(), recipient.clone(), d.order.n, d.attempt);
        let (n, attempt) = (d.order.n, d.attempt);
        let msg = DeviceMsg::Deliver(Delivery {
            from_device: self.id.clone(),
            order: d.order,
            message: d.message,
            guard,
        });
        match self.env.directory.deliver(recipient, msg).await {
            Ok(()) => {}
            // The recipient was deleted: nothing to write (the dropped guard's report of
            // this try comes after and is ignored).
            Err(RouteError::NoDevice) => self.row_done(RowDone {
                recipient: recipient.clone(),
                n,
                attempt,
                outcome: RowOutcome::Gone,
            }),
            // The guard, dropped with the message, reports the row as lost.
            Err(e) => tracing::debug!(%recipient, error = %e, "could not route a row"),
        }
    }

    /// A recipient row's outcome.
    pub(super) fn row_done(&mut self, report: RowDone) {
        let (settled, resend) = self.outbox.done(&report);
        if resend {
            let delay = self.outbox.backoff(&report.recipient);
            let recipient = report.recipient.clone();
            self.me
                .send_after(delay, move || DeviceMsg::Resend(recipient));
        }
        if let Settled::Row { key, ok } = settled {
            self.row_settled(key, ok);
        }
    }

    /// Sends again, in order, what was lost to `recipient`.
    pub(super) async fn resend(&mut self, recipient: &Arc<str>) {
        for d in self.outbox.resend(recipient) {
            Stats::inc(&self.env.stats.rows_resent);
            self.dispatch(recipient, d).await;
        }
    }

    /// The sender's own copy of send `key` settled. If it failed, the send is answered
    /// at once (its recipient rows may still land; a resend under the same request id
    /// completes it).
    pub(super) fn own_row_settled(&mut self, key: u64, ok: bool) {
        self.row_settled(key, ok);
        if !ok {
            self.finish_send(key);
        }
    }

    fn row_settled(&mut self, key: u64, ok: bool) {
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        p.failed |= !ok;
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0 {
            self.finish_send(key);
        }
    }

    fn finish_send(&mut self, key: u64) {
        let Some(p) = self.pending.remove(&key) else {
            return;
        };
        let result = if !p.failed {
            Stats::inc(&self.env.stats.messages_acked);
            self.metrics.acked.increment(1);
            self.env
                .stats
                .metrics
                .ack_latency
                .record(p.received.elapsed().as_secs_f64());
            Ok(p.answer.clone())
        } else {
            Err(SendError::new(
                ErrorCode::Unavailable,
                "the message could not be stored everywhere; retry with the same id",
            ))
        };
        if let Some(id) = &p.client_id {
            let entry = if p.failed {
                Recent::Incomplete(Box::new(Incomplete {
                    answer: p.answer.clone(),
                    message: Some(p.message.clone()),
                }))
            } else {
                Recent::Done(p.answer.clone())
            };
            self.recent.insert(id.clone(), entry);
        }
        for responder in p.responders {
            self.respond(responder, p.client_id.as_deref(), result.clone());
        }
    }

    /// Completes an accepted send: writes the sender's copy if it is missing and
    /// delivers the message (same id) to each recipient whose inbox lacks it, then
    /// answers with the original ack (the seq of the sender's copy).
    async fn complete(&mut self, client_id: String, inc: Incomplete, responder: Responder) {
        if self.resyncing() {
            let err = SendError::new(ErrorCode::Unavailable, "inbox resyncing; retry");
            return self.respond(responder, Some(&client_id), Err(err));
        }
        let store = self.env.store.clone();
        let message = match inc.message {
            Some(m) => m,
            None => {
                let ids = [inc.answer.message_id.clone()];
                match store.inbox_messages(&self.device.id, &ids).await {
                    Ok(rows) => match rows.into_iter().find_map(|r| match r.kind {
                        RowKind::Message(m) => Some(m),
                        RowKind::Status(_) => None,
                    }) {
                        Some(m) => m,
                        // Nothing to complete from.
                        None => {
                            self.recent
                                .insert(client_id.clone(), Recent::Done(inc.answer.clone()));
                            return self.respond(responder, Some(&client_id), Ok(inc.answer));
                        }
                    },
                    Err(e) => {
                        return self.respond(
                            responder,
                            Some(&client_id),
                            Err(SendError::storage(&e)),
                        )
                    }
                }
            }
        };
        let target = match (&message.to, &message.group) {
            (Some(to), _) => Some(Target::To(to.to_string())),
            (None, Some(group)) => Some(Target::Group(group.to_string())),
            (None, None) => None,
        };
        // A target that no longer resolves (device or group gone) has nothing to complete.
        let recipients = match &target {
            Some(t) => routing::recipients(&self.env, &self.device, t)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let holders: HashSet<String> = match store.message_copies(&message.id).await {
            Ok(copies) => copies.into_iter().map(|c| c.device_id).collect(),
            Err(e) => {
                return self.respond(responder, Some(&client_id), Err(SendError::storage(&e)))
            }
        };
        let key = self.next_key;
        // A recipient whose row is still outstanding in the outbox gets it from there
        // (delivering it here too would write it twice); this send waits for it.
        let mut adopted = 0;
        let missing: Vec<String> = recipients
            .into_iter()
            .filter(|r| !holders.contains(r))
            .filter(|r| {
                let held = self.outbox.adopt(r, &message.id, key);
                adopted += usize::from(held);
                !held
            })
            .collect();
        let own_missing = !holders.contains(&self.device.id);
        let mut answer = inc.answer;
        if !own_missing && missing.is_empty() && adopted == 0 {
            self.recent
                .insert(client_id.clone(), Recent::Done(answer.clone()));
            return self.respond(responder, Some(&client_id), Ok(answer));
        }
        tracing::info!(device_id = %self.device.id, message_id = %message.id, recipients = missing.len(), own_missing, "completing an interrupted send");
        self.next_key += 1;
        if own_missing {
            let origin = match &responder {
                Responder::Conn(id) => Some(*id),
                Responder::Rest(_) => None,
            };
            answer.seq = self.write_own(key, &message, Some(client_id.clone()), origin);
        }
        self.pending.insert(
            key,
            PendingSend {
                received: Instant::now(),
                client_id: Some(client_id.clone()),
                answer,
                message: message.clone(),
                responders: vec![responder],
                remaining: missing.len() + adopted + usize::from(own_missing),
                failed: false,
            },
        );
        self.recent.insert(client_id, Recent::Pending(key));
        self.deliver_all(key, &message, missing).await;
    }

    /// Takes `cost` units from every budget of a send, or from none: the device tier,
    /// the device→recipient pair (when on), the tenant and the global one. In a
    /// cluster the device, tenant and global windows shared by every node are taken
    /// after the in-process budgets (one store call); if they refuse, the in-process
    /// ones are given back, and if the store does not answer (bounded), the in-process
    /// verdict stands. The pair budget stays in the session: a device has one owner.
    async fn take_budgets(
        &mut self,
        priority: Priority,
        target: &Target,
        cost: u32,
    ) -> Result<(), SendError> {
        // The tenant's `system` device (notifications) is paced by the tenant and
        // server budgets only: one phone number's budget would hold a notification to
        // every device of the tenant at that number's rate.
        let own = self.device.address != SYSTEM_ADDRESS;
        if own {
            if let Err(wait) = self.limiter.check(priority, cost) {
                return Err(self.refusal(Scope::Device, priority, wait));
            }
        }
        let pair_rate = self.env.settings.pair_rate_per_minute;
        let pair_key = match target {
            Target::To(a) if own && pair_rate > 0 => Some(a.as_str()),
            _ => None,
        };
        if let Some(to) = pair_key {
            if self.pairs.len() > 4096 {
                self.pairs.retain(|_, b| !b.is_full());
            }
            let bucket = match self.pairs.get_mut(to) {
                Some(b) => b,
                None => self
                    .pairs
                    .entry(to.to_owned())
                    .or_insert_with(|| TokenBucket::spaced(pair_rate)),
            };
            if let Err(wait) = bucket.try_take(1) {
                self.limiter.refund(priority);
                self.env.stats.metrics.rate_limited_device.increment(1);
                return Err(SendError::rate_limited("per-recipient budget", wait));
            }
        }
        if let Err((scope, wait)) = self.env.limits.acquire(&self.device.tenant_id, cost) {
            if own {
                self.refund_device(priority, pair_key);
            }
            return Err(self.refusal(scope, priority, wait));
        }
        if let Some(shared) = &self.env.shared_budgets {
            let settings = &self.env.settings;
            let device_key = format!("{}:{}", self.device.id, tier_name(priority));
            let mut windows = [Window {
                scope: Scope::Device,
                key: &device_key,
                per_minute: settings.rate_per_minute[priority.index()],
            }; 3];
            let mut n = usize::from(own);
            for (scope, key, per_minute) in [
                (
                    Scope::Tenant,
                    self.device.tenant_id.as_str(),
                    settings.tenant_rate_per_minute,
                ),
                (Scope::Global, "all", settings.global_rate_per_minute),
            ] {
                // 0 is unlimited for these two.
                if per_minute > 0 {
                    windows[n] = Window {
                        scope,
                        key,
                        per_minute,
                    };
                    n += 1;
                }
            }
            let grant = match n {
                0 => None,
                _ => shared.take(&windows[..n], cost).await,
            };
            if let Some(Grant::Refused { scope, wait }) = grant {
                self.env.limits.refund(&self.device.tenant_id, cost);
                if own {
                    self.refund_device(priority, pair_key);
                }
                return Err(self.refusal(scope, priority, wait));
            }
        }
        Ok(())
    }

    /// Gives back what a refused send took from the session's own budgets.
    fn refund_device(&mut self, priority: Priority, pair_key: Option<&str>) {
        self.limiter.refund(priority);
        if let Some(b) = pair_key.and_then(|to| self.pairs.get_mut(to)) {
            b.refund(1);
        }
    }

    /// The answer to a send `scope`'s budget refused (counted).
    fn refusal(&self, scope: Scope, priority: Priority, wait: Duration) -> SendError {
        let metrics = &self.env.stats.metrics;
        match scope {
            Scope::Device => {
                metrics.rate_limited_device.increment(1);
                let what = format!("{} budget for this device", tier_name(priority));
                SendError::rate_limited(&what, wait)
            }
            Scope::Tenant => {
                metrics.rate_limited_tenant.increment(1);
                SendError::rate_limited("tenant budget", wait)
            }
            Scope::Global => {
                metrics.rate_limited_global.increment(1);
                SendError::rate_limited("server-wide budget", wait)
            }
        }
    }
}

/// A tier's name in refusals and shared budget keys.
fn tier_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}
