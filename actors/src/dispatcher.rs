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
//!   `active` when the process died goes back to `waiting` on start and its resend is
//!   answered from the device session's idempotency window.
//! - At most `queue_concurrency` jobs are in flight, of which at most
//!   `queue_contact_concurrency` contact syncs.
//! - **Lanes can be paused** by an operator: the claim skips a paused lane's jobs (they
//!   stay `waiting`). The paused set, the per-lane in-flight counts and the completion
//!   rates live in the [`DispatcherHandle`] (in the `Env`), not in the actor's state, so
//!   a paused lane stays paused across a dispatcher restart.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::rest::Contact;
use protocol::{ErrorCode, Priority, Target};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::device::{DeviceMsg, Responder, SendError, SendRequest};
use crate::directory::RouteError;
use crate::jobs::{JobKind, JobRecord, JobUpdate};
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
}

/// Where the running dispatcher is, for waking it and restarting it, plus what outlives
/// one dispatcher incarnation: the paused lanes and the per-lane live counters.
#[derive(Default)]
pub struct DispatcherHandle {
    slot: Mutex<Option<ActorRef<DispatcherMsg>>>,
    paused: [AtomicBool; 4],
    active: [AtomicU64; 4],
    /// Completions per whole second (Unix seconds, per lane), newest last.
    completions: Mutex<VecDeque<(i64, [u64; 4])>>,
}

/// What the dispatcher knows of one lane right now (depth comes from the store).
#[derive(Debug, Clone, Copy)]
pub struct LaneLive {
    /// The lane.
    pub lane: Priority,
    /// Whether the dispatcher skips it when claiming.
    pub paused: bool,
    /// Jobs of the lane in flight.
    pub active: u64,
    /// Jobs of the lane completed per second, over the last [`RATE_WINDOW_SECS`]
    /// whole seconds.
    pub rate: f64,
}

impl DispatcherHandle {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ActorRef<DispatcherMsg>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running dispatcher, if any.
    pub fn current(&self) -> Option<ActorRef<DispatcherMsg>> {
        self.slot().clone()
    }

    /// Tells the dispatcher new jobs are due.
    pub fn wake(&self) {
        if let Some(d) = self.current() {
            let _ = d.cast(DispatcherMsg::Wake);
        }
    }

    /// Stops the running dispatcher; the root supervisor starts a fresh one, which puts
    /// in-flight jobs back in the queue. Returns whether one was running.
    pub fn restart(&self) -> bool {
        match self.slot().take() {
            Some(d) => {
                d.stop(Some("restart requested".into()));
                true
            }
            None => false,
        }
    }

    /// Stops claiming jobs of `lane` (they stay waiting; jobs in flight finish).
    /// Returns whether it was running before.
    pub fn pause(&self, lane: Priority) -> bool {
        !self.paused[lane.index()].swap(true, Ordering::SeqCst)
    }

    /// Claims jobs of `lane` again. Returns whether it was paused before.
    pub fn resume(&self, lane: Priority) -> bool {
        let was = self.paused[lane.index()].swap(false, Ordering::SeqCst);
        self.wake();
        was
    }

    /// Whether `lane` is paused.
    pub fn is_paused(&self, lane: Priority) -> bool {
        self.paused[lane.index()].load(Ordering::SeqCst)
    }

    fn paused_lanes(&self) -> Vec<Priority> {
        Priority::ALL
            .into_iter()
            .filter(|p| self.is_paused(*p))
            .collect()
    }

    /// Paused flag, in-flight count and completion rate of every lane, critical first.
    pub fn lanes(&self) -> [LaneLive; 4] {
        let now = now_ms().div_euclid(1000);
        let mut done = [0u64; 4];
        {
            let ring = self.completions.lock().unwrap_or_else(|p| p.into_inner());
            let from = now - RATE_WINDOW_SECS as i64;
            for (_, counts) in ring.iter().filter(|(s, _)| *s >= from && *s < now) {
                for (d, c) in done.iter_mut().zip(counts) {
                    *d += c;
                }
            }
        }
        Priority::ALL.map(|lane| LaneLive {
            lane,
            paused: self.is_paused(lane),
            active: self.active[lane.index()].load(Ordering::Relaxed),
            rate: done[lane.index()] as f64 / RATE_WINDOW_SECS as f64,
        })
    }

    fn claimed(&self, lane: Priority) {
        self.active[lane.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, lane: Priority, completed: bool) {
        let _ = self.active[lane.index()].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
        if !completed {
            return;
        }
        let now = now_ms().div_euclid(1000);
        let mut ring = self.completions.lock().unwrap_or_else(|p| p.into_inner());
        match ring.back_mut() {
            Some((sec, counts)) if *sec == now => counts[lane.index()] += 1,
            _ => {
                let mut counts = [0u64; 4];
                counts[lane.index()] = 1;
                ring.push_back((now, counts));
            }
        }
        while ring
            .front()
            .is_some_and(|(sec, _)| *sec < now - RATE_WINDOW_SECS as i64)
        {
            ring.pop_front();
        }
    }

    /// A new incarnation starts with nothing in flight (the old one's jobs were
    /// requeued).
    fn reset_active(&self) {
        for a in &self.active {
            a.store(0, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for DispatcherHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherHandle")
            .field("running", &self.current().is_some())
            .finish()
    }
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
        process_started();
        let requeued = env.store.requeue_active_jobs().await?;
        if requeued > 0 {
            tracing::info!(requeued, "dispatcher: active jobs back in the queue");
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
                state.poll(&myself).await?;
            }
            DispatcherMsg::Tick => state.poll(&myself).await?,
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
                    state.flush(&myself).await?;
                } else if !state.flush_scheduled {
                    state.flush_scheduled = true;
                    myself.send_after(FLUSH_LINGER, || DispatcherMsg::Flush);
                }
            }
            DispatcherMsg::Flush => state.flush(&myself).await?,
        }
        Ok(())
    }
}

impl DispatcherState {
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

    async fn flush(&mut self, myself: &ActorRef<DispatcherMsg>) -> Result<(), ActorProcessingErr> {
        self.flush_scheduled = false;
        if !self.updates.is_empty() {
            let updates = std::mem::take(&mut self.updates);
            let retried = updates
                .iter()
                .any(|u| matches!(u, JobUpdate::Delayed { .. }));
            self.env.store.finish_jobs(updates, now_ms()).await?;
            if retried {
                self.maybe_waiting = true;
            }
        }
        self.poll(myself).await
    }

    async fn poll(&mut self, myself: &ActorRef<DispatcherMsg>) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        if self.env.store.promote_due_jobs(now).await? > 0 {
            self.maybe_waiting = true;
        }
        self.pacing.retain(|_, p| p.next.max(p.until) > now);
        let free = self
            .env
            .settings
            .queue_concurrency
            .saturating_sub(self.inflight);
        if !self.maybe_waiting || free == 0 {
            return Ok(());
        }
        let paused = self.env.dispatcher.paused_lanes();
        if paused.len() == Priority::ALL.len() {
            // Every lane paused: nothing to claim until one resumes (which wakes us).
            self.maybe_waiting = false;
            return Ok(());
        }
        let limit = free.min(CLAIM_BATCH);
        let jobs = self
            .env
            .store
            .claim_jobs_except(now, limit, &paused)
            .await?;
        self.maybe_waiting = jobs.len() == limit;
        for job in jobs {
            let contacts = job.kind == JobKind::Contacts;
            if contacts {
                if self.contacts_inflight >= self.env.settings.queue_contact_concurrency {
                    // QUEUE_CONTACT_CONCURRENCY syncs at once: this one waits its turn.
                    self.updates.push(JobUpdate::Delayed {
                        id: job.id.clone(),
                        not_before: now + 250,
                        attempts: job.attempts,
                    });
                    continue;
                }
                self.contacts_inflight += 1;
            }
            self.inflight += 1;
            let lane = job.lane;
            self.env.dispatcher.claimed(lane);
            let env = self.env.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let (update, blocked) = match job.kind {
                    JobKind::Message => send_job(&env, &job).await,
                    JobKind::Contacts => (sync_contacts(&env, &job).await, None),
                };
                let _ = me.cast(DispatcherMsg::Done(update, blocked, contacts, lane));
            });
        }
        if !self.updates.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(FLUSH_LINGER, || DispatcherMsg::Flush);
        }
        Ok(())
    }
}

fn transient(env: &Env, job: &JobRecord, attempts: u32, error: String) -> JobUpdate {
    if attempts >= env.settings.queue_attempts {
        JobUpdate::Failed {
            id: job.id.clone(),
            error,
            attempts,
        }
    } else {
        let backoff = 500i64.saturating_mul(1 << attempts.saturating_sub(1).min(7));
        JobUpdate::Delayed {
            id: job.id.clone(),
            not_before: now_ms() + backoff,
            attempts,
        }
    }
}

/// Sends one message job through its device session.
async fn send_job(env: &Env, job: &JobRecord) -> (JobUpdate, Option<Blocked>) {
    let attempts = job.attempts + 1;
    let target = match (&job.target_to, &job.target_group) {
        (Some(to), _) => Target::To(to.clone()),
        (None, Some(g)) => Target::Group(g.clone()),
        (None, None) => {
            let error = "bad_request: job has no recipient".to_owned();
            return (
                JobUpdate::Failed {
                    id: job.id.clone(),
                    error,
                    attempts,
                },
                None,
            );
        }
    };
    // A job touched before (requeued after a crash, retried, delayed) may already have
    // been sent: its stored copy answers for it, however far back the send was.
    let mut client_id = job.id.clone();
    if job.updated_at != job.created_at || job.attempts > 0 {
        let sends = match env.store.job_sends(&job.device_id, &job.id).await {
            Ok(s) => s,
            Err(e) => {
                let error = format!("unavailable: {e}");
                return (transient(env, job, attempts, error), None);
            }
        };
        let mut live: Option<&str> = None;
        for sent in &sends {
            if sent.ts >= process_started() {
                // Written by this process: the session that wrote it still tracks it
                // (and redelivers a lost recipient row), so if it is not complete yet a
                // resend under the same id gets its true answer.
                live = Some(&sent.client_id);
            }
            match delivered(env, job, &sent.message_id).await {
                Ok(true) => {
                    let update = JobUpdate::Completed {
                        id: job.id.clone(),
                        message_id: Some(sent.message_id.clone()),
                        attempts: job.attempts.max(1),
                    };
                    return (update, None);
                }
                Ok(false) => {}
                Err(e) => {
                    let error = format!("unavailable: {e}");
                    return (transient(env, job, attempts, error), None);
                }
            }
        }
        if let Some(id) = live {
            client_id = id.to_owned();
        } else if !sends.is_empty() {
            // Stored for the sender but not for the recipient: the process died between
            // the two commits, and the send was never acked. Send it again under a new
            // request id (the old one would be answered from the half-written copy).
            client_id = format!("{}.{}", job.id, sends.len());
        }
    }
    let (tx, rx) = oneshot::channel();
    let req = SendRequest {
        client_id: Some(client_id),
        target,
        body: Arc::from(job.body.as_str()),
        priority: job.lane,
    };
    let routed = env
        .directory
        .deliver(&job.device_id, DeviceMsg::Send(req, Responder::Rest(tx)))
        .await;
    let result = match routed {
        Ok(()) => rx.await.unwrap_or_else(|_| {
            Err(SendError::new(
                ErrorCode::Unavailable,
                "device session restarted",
            ))
        }),
        Err(RouteError::NoDevice) => Err(SendError::new(
            ErrorCode::NotFound,
            "the sending device no longer exists",
        )),
        Err(e) => Err(SendError::new(ErrorCode::Unavailable, e.to_string())),
    };
    match result {
        Ok(accepted) => (
            JobUpdate::Completed {
                id: job.id.clone(),
                message_id: Some(accepted.message_id),
                attempts,
            },
            None,
        ),
        Err(e) if e.code == ErrorCode::RateLimited => {
            let wait = e.retry_after_ms.unwrap_or(1000);
            let wait_ms = i64::try_from(wait).unwrap_or(i64::MAX / 2);
            (
                JobUpdate::Delayed {
                    id: job.id.clone(),
                    not_before: now_ms().saturating_add(wait_ms),
                    attempts: job.attempts,
                },
                Some(Blocked {
                    device_id: job.device_id.clone(),
                    lane: job.lane,
                    retry_after_ms: wait_ms,
                }),
            )
        }
        Err(e) if e.code.retryable() || e.code == ErrorCode::Internal => (
            transient(
                env,
                job,
                attempts,
                format!("{}: {}", e.code.as_str(), e.message),
            ),
            None,
        ),
        Err(e) => (
            JobUpdate::Failed {
                id: job.id.clone(),
                error: format!("{}: {}", e.code.as_str(), e.message),
                attempts,
            },
            None,
        ),
    }
}

/// When this process started its first dispatcher (Unix ms). A job's stored copy older
/// than that was written by a process that died; one newer is still tracked here.
fn process_started() -> i64 {
    static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(now_ms)
}

/// Whether the recipient's row of a 1:1 job's message is stored. Group sends are taken
/// as delivered once the sender's copy is (their members are not checked one by one).
async fn delivered(
    env: &Env,
    job: &JobRecord,
    message_id: &str,
) -> Result<bool, crate::store::StoreError> {
    let Some(to) = &job.target_to else {
        return Ok(true);
    };
    let Some(device) = env.store.get_device(&job.device_id).await? else {
        return Ok(true);
    };
    if device.address == *to {
        return Ok(true);
    }
    match env.directory.resolve(&job.tenant_id, to).await? {
        Some(recipient) => Ok(env
            .store
            .inbox_entry(&recipient, message_id)
            .await?
            .is_some()),
        None => Ok(true),
    }
}

/// Upserts a contact-sync job's contacts in batches, recording progress after each.
async fn sync_contacts(env: &Env, job: &JobRecord) -> JobUpdate {
    let attempts = job.attempts + 1;
    let contacts: Vec<Contact> = match serde_json::from_str(&job.body) {
        Ok(c) => c,
        Err(e) => {
            return JobUpdate::Failed {
                id: job.id.clone(),
                error: format!("bad_request: stored contacts unreadable: {e}"),
                attempts,
            }
        }
    };
    let start = usize::try_from(job.progress_done)
        .unwrap_or(0)
        .min(contacts.len());
    let mut done = start;
    for chunk in contacts[start..].chunks(CONTACT_BATCH) {
        if let Err(e) = env.store.upsert_contacts(&job.device_id, chunk).await {
            return transient(env, job, attempts, format!("unavailable: {e}"));
        }
        done += chunk.len();
        if let Err(e) = env
            .store
            .set_job_progress(&job.id, done as u64, now_ms())
            .await
        {
            tracing::warn!(job_id = %job.id, error = %e, "could not record progress");
        }
    }
    env.directory
        .deliver_if_running(&job.device_id, DeviceMsg::InvalidateContacts);
    JobUpdate::Completed {
        id: job.id.clone(),
        message_id: None,
        attempts,
    }
}
