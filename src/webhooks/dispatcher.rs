//! The webhook sender: a task that claims due deliveries from the outbox under a lease,
//! sends each (signed) at most `concurrency` at a time, and writes every outcome back:
//! delivered, retried after a backoff with jitter, or dead after the last attempt.
//!
//! - **Leases.** A claim names this node and holds for `lease` (longer than any
//!   attempt), so several nodes on one MongoDB never send a delivery twice at once, and a
//!   node killed mid-attempt loses only that attempt: its claims are taken back when the
//!   lease runs out (at least once; receivers dedupe on `Switchboard-Delivery`).
//! - **Order per device** and **no status regression** are the store's claim rules
//!   ([`actors::store::Store::claim_webhook_deliveries`]).
//! - **Circuit breaker** per endpoint ([`super::breaker`]): open endpoints are skipped in
//!   claims, so a dead receiver gets one probe per cooldown, not every retry.
//! - **Bounded**: at most `concurrency` attempts in flight, outcomes written in batches
//!   of what finished, the breaker map only holds endpoints that failed lately.
//!
//! Owned by the server (started with the HTTP server, stopped on shutdown), not an actor
//! of the tree: the actor crate names no HTTP client, and the sender needs no mailbox
//! of its own (the outbox is its queue, [`actors::webhooks::Webhooks::wake`] its doorbell).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::clock::now_ms;
use actors::store::JobClaim;
use actors::webhooks::{DeliveryOutcome, DeliveryRecord};
use actors::Env;
use tokio::sync::{mpsc, watch};

use super::breaker::Breakers;
use super::signing::{self, Attempt};
use super::{backoff, WebhookSettings};
use crate::metrics::names;

/// How often old deliveries are pruned.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Most deliveries pruned per housekeeping round.
const PRUNE_BATCH: usize = 1000;
/// Outcomes kept for a store that does not answer, at most (beyond that the lease
/// brings the deliveries back).
const MAX_UNWRITTEN: usize = 10_000;

/// Starts the sender; it stops when `shutdown` turns true.
pub fn spawn(
    env: Arc<Env>,
    settings: WebhookSettings,
    client: reqwest::Client,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let sender = Sender {
        breakers: Breakers::new(settings.breaker_failures, settings.breaker_cooldown),
        env,
        client,
        settings,
        inflight: 0,
        unwritten: Vec::new(),
    };
    tokio::spawn(sender.run(shutdown))
}

struct Sender {
    env: Arc<Env>,
    settings: WebhookSettings,
    client: reqwest::Client,
    breakers: Breakers,
    inflight: usize,
    /// Outcomes not yet written to the store.
    unwritten: Vec<DeliveryOutcome>,
}

/// A finished attempt.
type Done = (DeliveryRecord, Attempt);

impl Sender {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::channel::<Done>(self.settings.concurrency.max(1));
        let mut last_housekeeping = Instant::now()
            .checked_sub(HOUSEKEEPING)
            .unwrap_or_else(Instant::now);
        tracing::info!(
            concurrency = self.settings.concurrency,
            "webhook sender started"
        );
        loop {
            while let Ok(done) = rx.try_recv() {
                self.finished(done);
            }
            self.write_outcomes().await;
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                self.housekeeping().await;
            }
            self.claim(&tx).await;
            tokio::select! {
                _ = self.env.webhooks.woken() => {}
                Some(done) = rx.recv() => self.finished(done),
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // Attempts in flight finish (bounded by the request timeout) and are written, so
        // a drained node leaves nothing for the lease to bring back.
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        while self.inflight > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(done)) => self.finished(done),
                _ => break,
            }
        }
        self.write_outcomes().await;
        tracing::info!("webhook sender stopped");
    }

    /// Claims what may go now and starts sending it.
    async fn claim(&mut self, tx: &mpsc::Sender<Done>) {
        let free = self.settings.concurrency.saturating_sub(self.inflight);
        if free == 0 {
            return;
        }
        let now = now_ms();
        let skip = self.breakers.blocked(Instant::now());
        let claim = JobClaim {
            owner: self.env.settings.node_id.clone(),
            lease_until: now
                .saturating_add(i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)),
        };
        let claimed = match self
            .env
            .store
            .claim_webhook_deliveries(now, free, &skip, &claim)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox: claim failed");
                return;
            }
        };
        for delivery in claimed {
            self.start(delivery, tx).await;
        }
    }

    /// Sends one claimed delivery, or hands it back (breaker open, endpoint disabled).
    async fn start(&mut self, delivery: DeliveryRecord, tx: &mpsc::Sender<Done>) {
        let endpoint = match self.env.webhooks.endpoints(&delivery.tenant_id).await {
            Ok(list) => list.iter().find(|e| e.id == delivery.endpoint_id).cloned(),
            Err(e) => {
                tracing::warn!(error = %e, "webhook endpoints unreadable; retrying later");
                self.unwritten.push(DeliveryOutcome::Release {
                    id: delivery.id,
                    next_at: now_ms() + 1000,
                });
                return;
            }
        };
        let Some(endpoint) = endpoint else {
            // Deleted (its deliveries go with it; this one was claimed in between).
            self.unwritten.push(DeliveryOutcome::Dead {
                id: delivery.id,
                attempts: delivery.attempts,
                error: "the endpoint was deleted".into(),
                code: None,
                latency_ms: 0,
            });
            return;
        };
        if !endpoint.enabled {
            self.unwritten.push(DeliveryOutcome::Release {
                id: delivery.id,
                next_at: now_ms() + 5000,
            });
            return;
        }
        let now = Instant::now();
        if !self.breakers.permit(&endpoint.id, now) {
            let at = self.breakers.retry_at(&endpoint.id, now);
            let wait = i64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0);
            self.unwritten.push(DeliveryOutcome::Release {
                id: delivery.id,
                next_at: now_ms() + wait.max(1),
            });
            return;
        }
        self.inflight += 1;
        let client = self.client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let body = signing::body(&delivery, delivery.attempts + 1);
            let attempt = signing::send(
                &client,
                &endpoint.url,
                &endpoint.secret,
                &delivery.event,
                &delivery.id,
                body,
            )
            .await;
            let _ = tx.send((delivery, attempt)).await;
        });
    }

    /// Turns a finished attempt into its outcome, the breaker's verdict and metrics.
    fn finished(&mut self, (delivery, attempt): Done) {
        self.inflight = self.inflight.saturating_sub(1);
        let attempts = delivery.attempts + 1;
        let endpoint = delivery.endpoint_id.clone();
        let latency_ms = i64::try_from(attempt.latency.as_millis()).unwrap_or(i64::MAX);
        let code = attempt.code.map(i64::from);
        if let Some(state) = self.breakers.record(&endpoint, attempt.ok, Instant::now()) {
            tracing::info!(endpoint_id = %endpoint, state = ?state, "webhook breaker changed");
            ::metrics::gauge!(names::WEBHOOK_BREAKER, "endpoint" => endpoint.clone())
                .set(state.gauge());
        }
        ::metrics::histogram!(names::WEBHOOK_LATENCY, "endpoint" => endpoint.clone())
            .record(attempt.latency.as_secs_f64());
        let error = attempt.error.unwrap_or_default();
        let (result, outcome) = if attempt.ok {
            (
                "delivered",
                DeliveryOutcome::Delivered {
                    id: delivery.id,
                    attempts,
                    code: code.unwrap_or(200),
                    latency_ms,
                },
            )
        } else if attempts >= self.settings.max_attempts {
            tracing::warn!(endpoint_id = %endpoint, delivery_id = %delivery.id, attempts, %error, "webhook delivery dead");
            (
                "dead",
                DeliveryOutcome::Dead {
                    id: delivery.id,
                    attempts,
                    error,
                    code,
                    latency_ms,
                },
            )
        } else {
            let wait = backoff(&self.settings, attempts);
            (
                "retried",
                DeliveryOutcome::Retry {
                    id: delivery.id,
                    attempts,
                    next_at: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                    error,
                    code,
                    latency_ms,
                },
            )
        };
        ::metrics::counter!(names::WEBHOOK_DELIVERIES, "endpoint" => endpoint, "result" => result)
            .increment(1);
        self.unwritten.push(outcome);
    }

    /// Writes the outcomes gathered so far (kept for the next round if the store fails).
    async fn write_outcomes(&mut self) {
        if self.unwritten.is_empty() {
            return;
        }
        let outcomes = std::mem::take(&mut self.unwritten);
        match self
            .env
            .store
            .finish_webhook_deliveries(outcomes.clone(), now_ms(), &self.env.settings.node_id)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, outcomes = outcomes.len(), "webhook outcomes not written; retrying");
                self.unwritten = outcomes;
                if self.unwritten.len() > MAX_UNWRITTEN {
                    let extra = self.unwritten.len() - MAX_UNWRITTEN;
                    self.unwritten.drain(..extra);
                }
            }
        }
    }

    /// Prunes old finished deliveries (the outbox depth gauges are set at scrape time,
    /// `crate::metrics`).
    async fn housekeeping(&mut self) {
        let before = now_ms()
            .saturating_sub(i64::try_from(self.settings.retention.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = self
            .env
            .store
            .prune_webhook_deliveries(before, PRUNE_BATCH)
            .await
        {
            tracing::debug!(error = %e, "webhook deliveries not pruned");
        }
    }
}
