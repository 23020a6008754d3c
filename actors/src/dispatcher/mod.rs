//! The queue dispatcher: drains durable jobs (see [`crate::jobs`]) through the device
//! sessions, in priority order, within every rate budget.
//!
//! Why it is shaped this way:
//! - **Batches, not rows.** Each poll promotes due `delayed` jobs and claims up to a
//!   thousand `waiting` ones in one transaction each; outcomes are buffered and written
//!   back in one transaction per few milliseconds. The store never sees a query per job.
//! - **Lanes with aging.** The claim order is the job's `rank`: its due time plus
//!   lane × `queue_aging` (critical 0 … low 3). A low job that has waited three aging
//!   periods outranks a critical job enqueued now, so low never starves.
//! - **Pacing, not failing.** A send refused with `rate_limited` puts the job back as
//!   `delayed` until the budget refills; later refusals for the same device and lane are
//!   spread one budget interval apart so they do not all come back at once.
//! - **Idempotent resend.** The job id is the send's client request id: a job that was
//!   `active` when the process died goes back to `waiting` on start; before it is sent
//!   again its earlier send is looked up in the store, and if found the device session
//!   completes that one (same message id) instead of sending a second.
//! - **Fair across tenants.** Ranks are assigned at enqueue by virtual-time fair
//!   queuing ([`crate::jobs::FairRanker`]): one tenant's backlog does not hold back
//!   another tenant's jobs.
//! - **Shared bodies.** A campaign's body is stored once; the dispatcher reads it once
//!   and keeps the last few in memory.
//! - **Retention.** Finished jobs are pruned `job_retention` after they finished.
//! - **A store outage is not a crash.** A failed store call is logged and retried on
//!   the next tick; the dispatcher does not fail (and restart) over it.
//! - At most `queue_concurrency` jobs are in flight, of which at most
//!   `queue_contact_concurrency` contact syncs.
//! - **Lanes can be paused** by an operator: the claim skips a paused lane's jobs (they
//!   stay `waiting`). The paused set, the per-lane in-flight counts and the completion
//!   rates live in the [`DispatcherHandle`] (in the `Env`), not in the actor's state, so
//!   a paused lane stays paused across a dispatcher restart.

mod background;
mod handle;
mod media;
mod work;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::Priority;
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use background::{notification_client_id, NotificationBody, GROUP_BATCH, NOTIFY_WINDOW};
pub use handle::{DispatcherHandle, LaneLive};

use crate::clock::now_ms;
use crate::jobs::{JobBody, JobKind, JobUpdate};
use crate::store::{JobClaim, StoreError};
use crate::Env;

/// Most jobs claimed per poll.
const CLAIM_BATCH: usize = 1000;
/// Buffered outcomes that force a write at once.
const FLUSH_AT: usize = 512;
/// How long outcomes may wait to be written together.
const FLUSH_LINGER: Duration = Duration::from_millis(5);
/// Period of the poll for jobs whose delay ran out.
const TICK: Duration = Duration::from_millis(100);
/// Contacts per transaction in a contact-sync job.
pub const CONTACT_BATCH: usize = 10_000;
/// Whole seconds of completions a lane's rate is averaged over.
pub const RATE_WINDOW_SECS: usize = 5;
/// Shared bodies kept in memory.
const BODY_CACHE: usize = 64;
/// How often a cluster node reads the paused lanes again while idle.
const LANES_EVERY: Duration = Duration::from_secs(1);
/// How old the paused lanes a cluster node claims under may be, at most. A pause or
/// resume answers only after twice this, so once it is answered no node claims under
/// the old set (see `http/queues.rs`).
pub const LANES_FRESH: Duration = Duration::from_millis(100);
/// Finished jobs deleted per prune call.
const PRUNE_BATCH: usize = 10_000;

/// The dispatcher actor.
pub struct Dispatcher;

/// Messages of the dispatcher.
pub enum DispatcherMsg {
    /// New jobs were stored (or retried): poll now.
    Wake,
    /// Periodic poll for delayed jobs that came due.
    Tick,
    /// A job's outcome, whether it was a contact sync, and its lane.
    Done(JobUpdate, Option<Blocked>, bool, Priority),
    /// Write buffered outcomes.
    Flush,
}

/// A rate-limit refusal seen for a device and lane.
#[derive(Debug, Clone)]
pub struct Blocked {
    device_id: String,
    lane: Priority,
    retry_after_ms: i64,
}

struct Pacing {
    until: i64,
    step: i64,
    next: i64,
}

/// State of the dispatcher.
pub struct DispatcherState {
    env: Arc<Env>,
    inflight: usize,
    contacts_inflight: usize,
    updates: Vec<JobUpdate>,
    flush_scheduled: bool,
    maybe_waiting: bool,
    pacing: HashMap<(String, Priority), Pacing>,
    /// Recently read shared bodies, by id, with when each was last used.
    bodies: HashMap<String, (Arc<str>, Instant)>,
    last_prune: Instant,
    /// When the paused lanes were last read from the store (cluster only).
    last_lanes: Instant,
    /// When the paused lanes were last read before a claim (cluster only).
    last_fresh_lanes: Instant,
    /// Whether the last store call failed (logged once per outage).
    store_down: bool,
    /// Tenant and device of each claimed job until its outcome is written, for the
    /// `job.completed` / `job.failed` webhook events (bounded by the jobs in flight).
    claimed: HashMap<String, (String, String)>,
}

#[ractor::async_trait]
impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = Arc<Env>;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        env: Arc<Env>,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        // Jobs active in a previous incarnation go back to the queue; if the store is
        // down now, they do on a later start (a job is never lost, only late). In a
        // cluster only this node's: another node's claims are its own until their lease
        // runs out.
        let requeued = match &env.cluster {
            Some(_) => env.store.release_job_claims(&env.settings.node_id).await,
            None => env.store.requeue_active_jobs().await,
        };
        match requeued {
            Ok(0) => {}
            Ok(requeued) => tracing::info!(requeued, "dispatcher: active jobs back in the queue"),
            Err(e) => tracing::warn!(error = %e, "dispatcher: could not requeue active jobs"),
        }
        // Lanes paused by an operator stay paused across restarts, and for every node.
        match env.store.paused_lanes().await {
            Ok(paused) => env.dispatcher.set_paused(&paused),
            Err(e) => tracing::warn!(error = %e, "dispatcher: could not read paused lanes"),
        }
        env.dispatcher.reset_active();
        *env.dispatcher.slot() = Some(myself.clone());
        myself.send_interval(TICK, || DispatcherMsg::Tick);
        let _ = myself.cast(DispatcherMsg::Wake);
        Ok(DispatcherState {
            env,
            inflight: 0,
            contacts_inflight: 0,
            updates: Vec::new(),
            flush_scheduled: false,
            maybe_waiting: true,
            pacing: HashMap::new(),
            bodies: HashMap::new(),
            last_prune: Instant::now(),
            last_lanes: Instant::now(),
            last_fresh_lanes: Instant::now() - LANES_FRESH,
            store_down: false,
            claimed: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let mut slot = state.env.dispatcher.slot();
        if slot.as_ref().is_some_and(|d| d.get_id() == myself.get_id()) {
            *slot = None;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Wake => {
                state.maybe_waiting = true;
                state.poll(&myself).await;
            }
            DispatcherMsg::Tick => {
                state.prune().await;
                if !state.updates.is_empty() && !state.flush_scheduled {
                    state.flush(&myself).await;
                } else {
                    state.poll(&myself).await;
                }
            }
            DispatcherMsg::Done(update, blocked, contacts, lane) => {
                state.inflight = state.inflight.saturating_sub(1);
                state
                    .env
                    .dispatcher
                    .finished(lane, matches!(update, JobUpdate::Completed { .. }));
                if contacts {
                    state.contacts_inflight = state.contacts_inflight.saturating_sub(1);
                }
                let update = match blocked {
                    Some(b) => state.pace(b, update),
                    None => update,
                };
                state.updates.push(update);
                if state.updates.len() >= FLUSH_AT {
                    state.flush(&myself).await;
                } else if !state.flush_scheduled {
                    state.flush_scheduled = true;
                    myself.send_after(FLUSH_LINGER, || DispatcherMsg::Flush);
                }
            }
            DispatcherMsg::Flush => state.flush(&myself).await,
        }
        Ok(())
    }
}

impl DispatcherState {
    /// Notes a store call's outcome; false (and logged once per outage) on failure.
    fn store_ok<T>(&mut self, what: &str, result: Result<T, StoreError>) -> Option<T> {
        match result {
            Ok(v) => {
                if self.store_down {
                    tracing::info!("dispatcher: store reachable again");
                    self.store_down = false;
                }
                Some(v)
            }
            Err(e) => {
                if !self.store_down {
                    tracing::warn!(error = %e, what, "dispatcher: store call failed; retrying on the next tick");
                    self.store_down = true;
                }
                None
            }
        }
    }

    /// Spreads rate-limited jobs of one device and lane one budget interval apart.
    fn pace(&mut self, b: Blocked, update: JobUpdate) -> JobUpdate {
        let JobUpdate::Delayed { id, attempts, .. } = update else {
            return update;
        };
        let now = now_ms();
        let per_minute = i64::from(self.env.settings.rate_per_minute[b.lane.index()].max(1));
        let step = (60_000 / per_minute).max(1);
        let entry = self.pacing.entry((b.device_id, b.lane)).or_insert(Pacing {
            until: 0,
            step,
            next: 0,
        });
        let not_before = if entry.until > now {
            entry.next = entry.next.max(entry.until) + entry.step;
            entry.next
        } else {
            entry.until = now + b.retry_after_ms.max(1);
            entry.step = step;
            entry.next = entry.until;
            entry.until
        };
        JobUpdate::Delayed {
            id,
            not_before,
            attempts,
        }
    }

    /// Deletes finished jobs past their retention, at most every half retention.
    async fn prune(&mut self) {
        let retention = self.env.settings.job_retention;
        let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        if self.last_prune.elapsed() < every {
            return;
        }
        self.last_prune = Instant::now();
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let pruned = self.env.store.prune_jobs(before, PRUNE_BATCH).await;
        if let Some(n) = self.store_ok("prune", pruned) {
            if n > 0 {
                tracing::debug!(pruned = n, "finished jobs pruned");
            }
        }
    }

    async fn flush(&mut self, myself: &ActorRef<DispatcherMsg>) {
        self.flush_scheduled = false;
        if !self.updates.is_empty() {
            let updates = std::mem::take(&mut self.updates);
            let retried = updates
                .iter()
                .any(|u| matches!(u, JobUpdate::Delayed { .. }));
            let written = self
                .env
                .store
                .finish_jobs(updates.clone(), now_ms(), &self.env.settings.node_id)
                .await;
            if self.store_ok("finish", written).is_none() {
                // Kept, and written with the next flush: an outcome is never dropped.
                self.updates = updates;
                return;
            }
            self.record_job_events(&updates).await;
            if retried {
                self.maybe_waiting = true;
            }
        }
        self.poll(myself).await
    }

    /// Records `job.completed` / `job.failed` webhook events of outcomes just written.
    async fn record_job_events(&mut self, updates: &[JobUpdate]) {
        use crate::webhooks::EventKind;
        let mut events = Vec::new();
        for update in updates {
            let (id, kind, data) = match update {
                JobUpdate::Completed {
                    id,
                    message_id,
                    attempts,
                } => (
                    id,
                    EventKind::JobCompleted,
                    serde_json::json!({"job_id": id, "message_id": message_id, "attempts": attempts}),
                ),
                JobUpdate::Failed {
                    id,
                    error,
                    attempts,
                } => (
                    id,
                    EventKind::JobFailed,
                    serde_json::json!({"job_id": id, "error": error, "attempts": attempts}),
                ),
                JobUpdate::Delayed { id, .. } => {
                    self.claimed.remove(id);
                    continue;
                }
            };
            let Some((tenant, device)) = self.claimed.remove(id) else {
                continue;
            };
            if self.env.webhooks.wants_any(&tenant, &[kind]).await {
                events.push(self.env.webhooks.event(&tenant, &device, kind, data));
            }
        }
        if !events.is_empty() {
            self.env.webhooks.record_or_log(events).await;
        }
    }

    /// The body of a claimed job: its own, or a shared one (cached).
    async fn body(&mut self, body: &JobBody) -> Result<Option<Arc<str>>, StoreError> {
        let id = match body {
            JobBody::Inline(s) => return Ok(Some(Arc::from(s.as_str()))),
            JobBody::Shared(id) => id,
        };
        if let Some((b, used)) = self.bodies.get_mut(id) {
            *used = Instant::now();
            return Ok(Some(b.clone()));
        }
        let found = self.env.store.job_body(id).await?;
        if let Some(b) = &found {
            if self.bodies.len() >= BODY_CACHE {
                if let Some(oldest) = self
                    .bodies
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
                {
                    self.bodies.remove(&oldest);
                }
            }
            self.bodies.insert(id.clone(), (b.clone(), Instant::now()));
        }
        Ok(found)
    }

    async fn poll(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self
            .env
            .stats
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // A draining node claims nothing more; its claims go back at the end.
            return;
        }
        if self.env.cluster.is_some() && self.last_lanes.elapsed() >= LANES_EVERY {
            // Another node may have resumed a lane (or queued jobs): look again.
            self.last_lanes = Instant::now();
            self.maybe_waiting = true;
        }
        let now = now_ms();
        let promoted = self.env.store.promote_due_jobs(now).await;
        match self.store_ok("promote", promoted) {
            Some(n) if n > 0 => self.maybe_waiting = true,
            Some(_) => {}
            None => return,
        }
        self.pacing.retain(|_, p| p.next.max(p.until) > now);
        let free = self
            .env
            .settings
            .queue_concurrency
            .saturating_sub(self.inflight);
        if !self.maybe_waiting || free == 0 {
            return;
        }
        if self.env.cluster.is_some() && self.last_fresh_lanes.elapsed() >= LANES_FRESH {
            // Another node may have paused a lane a moment ago: claim under a paused
            // set at most `LANES_FRESH` old (a table of four rows).
            self.last_fresh_lanes = Instant::now();
            let read = self.env.store.paused_lanes().await;
            let Some(paused) = self.store_ok("paused lanes", read) else {
                return;
            };
            self.env.dispatcher.set_paused(&paused);
        }
        let paused = self.env.dispatcher.paused_lanes();
        if paused.len() == Priority::ALL.len() {
            // Every lane paused: nothing to claim until one resumes (which wakes us).
            self.maybe_waiting = false;
            return;
        }
        let limit = free.min(CLAIM_BATCH);
        let claim = JobClaim {
            owner: self.env.settings.node_id.clone(),
            lease_until: now.saturating_add(
                i64::try_from(self.env.settings.job_lease.as_millis()).unwrap_or(i64::MAX),
            ),
        };
        let claimed = self.env.store.claim_jobs(now, limit, &paused, &claim).await;
        let Some(jobs) = self.store_ok("claim", claimed) else {
            return;
        };
        self.maybe_waiting = jobs.len() == limit;
        for job in &jobs {
            self.claimed.insert(
                job.id.clone(),
                (job.tenant_id.clone(), job.device_id.clone()),
            );
        }
        for job in jobs {
            // Contact and group syncs are heavy store work: at most
            // QUEUE_CONTACT_CONCURRENCY of them run at once.
            let contacts = matches!(job.kind, JobKind::Contacts | JobKind::Groups);
            if contacts && self.contacts_inflight >= self.env.settings.queue_contact_concurrency {
                // QUEUE_CONTACT_CONCURRENCY syncs at once: this one waits its turn.
                self.updates.push(JobUpdate::Delayed {
                    id: job.id.clone(),
                    not_before: now + 250,
                    attempts: job.attempts,
                });
                continue;
            }
            let body = match self.body(&job.body).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    tracing::error!(job_id = %job.id, "job body missing");
                    self.updates.push(JobUpdate::Failed {
                        id: job.id.clone(),
                        error: "internal: job body missing".into(),
                        attempts: job.attempts + 1,
                    });
                    continue;
                }
                Err(e) => {
                    let _ = self.store_ok::<()>("body", Err(e));
                    self.updates.push(JobUpdate::Delayed {
                        id: job.id.clone(),
                        not_before: now + 500,
                        attempts: job.attempts,
                    });
                    continue;
                }
            };
            if contacts {
                self.contacts_inflight += 1;
            }
            self.inflight += 1;
            let lane = job.lane;
            self.env.dispatcher.claimed(lane);
            let env = self.env.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let (update, blocked) = match job.kind {
                    JobKind::Message => work::send_job(&env, &job, body).await,
                    JobKind::Contacts => (work::sync_contacts(&env, &job, &body).await, None),
                    JobKind::Groups => (background::sync_groups(&env, &job, &body).await, None),
                    JobKind::Notification => background::notify(&env, &job, &body).await,
                    JobKind::Media => (media::process(&env, &job).await, None),
                };
                let _ = me.cast(DispatcherMsg::Done(update, blocked, contacts, lane));
            });
        }
        if !self.updates.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(FLUSH_LINGER, || DispatcherMsg::Flush);
        }
    }
}
