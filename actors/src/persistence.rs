//! The persistence pool: writer actors that batch inbox rows (group commit).
//!
//! A writer collects rows until it holds `batch_max` of them or `linger` has passed
//! since the first, then commits them in one call and only then runs each row's
//! completion with that row's outcome. Rows of one device always go to the same writer,
//! and a writer commits one batch at a time, so each inbox becomes durable in seq order.
//!
//! **Fence.** When a row of a device fails, a later row of the same device must not be
//! written (the failed seq would be a hole in the inbox). The store aborts the device's
//! later rows within the batch, and the writer refuses its rows in later batches until
//! the device's session, once none of its rows is in flight, lifts the fence with
//! [`PersistencePool::reset`].
//!
//! **In a cluster** (`docs/cluster.md`) a writer holds at most `fence_rows` rows of one
//! device per batch (a takeover fences that many seqs), starts a commit only while the
//! node's lease is valid and for rows of the node's current incarnation, and reports a
//! row durable only if the lease still held when the commit returned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::stats::Stats;
use crate::store::{InboxRow, RowResult, Store, StoreError};

/// How long a writer keeps retrying one batch.
const RETRY_BUDGET: Duration = Duration::from_millis(500);

/// Runs once the row it came with is durable (or failed for good).
pub type Completion = Box<dyn FnOnce(RowResult) + Send>;

/// The writer actor.
pub struct Writer;

/// Arguments of a writer.
pub struct WriterArgs {
    /// Where rows go.
    pub store: Arc<dyn Store>,
    /// Rows per batch, at most.
    pub batch_max: usize,
    /// Wait for more rows this long.
    pub linger: Duration,
    /// Shared counters.
    pub stats: Arc<WriterStats>,
    /// Process counters.
    pub global: Arc<crate::Env>,
}

/// Counters of one writer, for the admin page.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Rows committed.
    pub rows: AtomicU64,
    /// Size of the last batch.
    pub last_batch: AtomicU64,
    /// Commit time of the last batch, microseconds.
    pub last_commit_us: AtomicU64,
    /// Rows waiting for the next commit.
    pub backlog: AtomicU64,
    /// Append messages queued in the writer's mailbox (ractor does not expose its
    /// mailbox length: counted on cast, uncounted when handled).
    pub mailbox: AtomicU64,
}

/// State of a writer.
pub struct WriterState {
    args: WriterArgs,
    rows: Vec<InboxRow>,
    /// The node incarnation each row was queued under (cluster only).
    incarnations: Vec<Option<u64>>,
    /// Rows of each device in the pending batch (cluster only).
    per_device: HashMap<Arc<str>, usize>,
    completions: Vec<Completion>,
    barriers: Vec<RpcReplyPort<()>>,
    timer_armed: bool,
    /// Devices whose rows are refused until their session resets them.
    fenced: HashSet<std::sync::Arc<str>>,
}

/// Messages of a writer.
pub enum WriterMsg {
    /// Make a row durable, then run the completion; in a cluster, only while the node
    /// is still in the incarnation given.
    Append(InboxRow, Option<u64>, Completion),
    /// Answer once everything appended before is durable.
    Barrier(RpcReplyPort<()>),
    /// Answer once everything appended before is durable, and take the device's rows
    /// again.
    Reset(String, RpcReplyPort<()>),
    /// The linger timer fired.
    Flush,
}

#[ractor::async_trait]
impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WriterMsg>,
        args: WriterArgs,
    ) -> Result<WriterState, ActorProcessingErr> {
        // What the previous incarnation's mailbox held is gone with it.
        args.stats.mailbox.store(0, Ordering::Relaxed);
        Ok(WriterState {
            rows: Vec::new(),
            incarnations: Vec::new(),
            per_device: HashMap::new(),
            completions: Vec::with_capacity(args.batch_max),
            barriers: Vec::new(),
            timer_armed: false,
            fenced: HashSet::new(),
            args,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Append(row, incarnation, done) => {
                uncount(&state.args.stats.mailbox);
                if state.fenced.contains(&row.device_id) {
                    done(Err(StoreError::Aborted));
                    return Ok(());
                }
                if let Some(cluster) = &state.args.global.cluster {
                    // A takeover fences `fence_rows` seqs: no batch may hold more rows of
                    // one device.
                    let cap = cluster.settings.fence_rows.max(1);
                    let n = state.per_device.get(&row.device_id).copied().unwrap_or(0);
                    if n >= cap {
                        commit(state).await;
                    }
                    *state.per_device.entry(row.device_id.clone()).or_default() += 1;
                }
                state.rows.push(row);
                state.incarnations.push(incarnation);
                state.completions.push(done);
                state
                    .args
                    .stats
                    .backlog
                    .store(state.rows.len() as u64, Ordering::Relaxed);
                if state.rows.len() >= state.args.batch_max {
                    commit(state).await;
                } else if !state.timer_armed {
                    state.timer_armed = true;
                    myself.send_after(state.args.linger, || WriterMsg::Flush);
                }
            }
            WriterMsg::Barrier(reply) => {
                if state.rows.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.barriers.push(reply);
                    commit(state).await;
                }
            }
            WriterMsg::Reset(device_id, reply) => {
                if !state.rows.is_empty() {
                    commit(state).await;
                }
                state.fenced.remove(device_id.as_str());
                let _ = reply.send(());
            }
            WriterMsg::Flush => {
                state.timer_armed = false;
                if !state.rows.is_empty() {
                    commit(state).await;
                }
            }
        }
        Ok(())
    }
}

/// Takes one from a counter that a writer restart may have reset (never below zero).
fn uncount(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(1))
    });
}

/// Commits the pending batch, retrying a call that wrote nothing, then answers
/// everyone waiting, each row with its own outcome.
async fn commit(state: &mut WriterState) {
    let mut rows = std::mem::take(&mut state.rows);
    let mut completions = std::mem::take(&mut state.completions);
    let incarnations = std::mem::take(&mut state.incarnations);
    state.per_device.clear();
    let barriers = std::mem::take(&mut state.barriers);
    let cluster = state.args.global.cluster.clone();
    if let Some(c) = &cluster {
        // Rows of an incarnation before a rejoin, or any row once the lease ran out, are
        // not written: another node may own their devices by now.
        let mut kept_rows = Vec::with_capacity(rows.len());
        let mut kept_done = Vec::with_capacity(rows.len());
        for ((row, done), inc) in rows.into_iter().zip(completions).zip(incarnations) {
            if inc.is_some_and(|i| c.membership.writable(i)) {
                kept_rows.push(row);
                kept_done.push(done);
            } else {
                state.fenced.insert(row.device_id.clone());
                done(Err(StoreError::Unavailable("node lease lapsed".into())));
            }
        }
        rows = kept_rows;
        completions = kept_done;
        if rows.is_empty() {
            for reply in barriers {
                let _ = reply.send(());
            }
            return;
        }
    }
    let rows = Arc::new(rows);
    let n = rows.len() as u64;
    let started = Instant::now();
    let mut result = Err(StoreError::Unavailable("not tried".into()));
    for attempt in 0..4u32 {
        if cluster.as_ref().is_some_and(|c| !c.membership.may_write()) {
            result = Err(StoreError::Unavailable("node lease lapsed".into()));
            break;
        }
        result = state.args.store.commit_rows(Arc::clone(&rows)).await;
        match &result {
            Ok(_) => break,
            Err(e) if !e.is_transient() => break,
            // A store that is away costs a timeout per try: give up on this batch
            // (its senders answer `unavailable`) rather than hold every sender.
            Err(_) if started.elapsed() > RETRY_BUDGET => break,
            Err(e) => {
                tracing::warn!(error = %e, attempt, rows = n, "inbox commit failed, retrying");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    // Written, but the lease ran out meanwhile: not reported durable (its sender is
    // answered `unavailable` and resends under the same request id).
    if result.is_ok() && cluster.as_ref().is_some_and(|c| !c.membership.may_write()) {
        tracing::warn!(
            rows = n,
            "lease lapsed during a commit; rows not acknowledged"
        );
        result = Err(StoreError::Unavailable("node lease lapsed".into()));
    }
    let stats = &state.args.stats;
    stats.backlog.store(0, Ordering::Relaxed);
    let result_was_ok = result.is_ok();
    let outcomes: Vec<RowResult> = match result {
        Ok(outcomes) if outcomes.len() == rows.len() => outcomes,
        Ok(outcomes) => {
            tracing::error!(
                rows = n,
                answers = outcomes.len(),
                "store answered the wrong number of rows"
            );
            vec![Err(StoreError::Corrupt("row count mismatch".into())); rows.len()]
        }
        Err(e) => {
            tracing::error!(error = %e, rows = n, "inbox commit failed");
            vec![Err(e); rows.len()]
        }
    };
    let written = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    let mut first_refused = None;
    for (row, outcome) in rows.iter().zip(&outcomes) {
        if let Err(e) = outcome {
            state.fenced.insert(row.device_id.clone());
            first_refused.get_or_insert((row, e));
        }
    }
    if let (Some((row, e)), true) = (first_refused, result_was_ok) {
        tracing::warn!(device_id = %row.device_id, seq = row.seq, error = %e, "the store refused a row");
    }
    if written > 0 {
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(written, Ordering::Relaxed);
        stats.last_batch.store(written, Ordering::Relaxed);
        stats
            .last_commit_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let global: &Stats = &state.args.global.stats;
        global.metrics.batch_size.record(written as f64);
        global
            .metrics
            .commit_latency
            .record(started.elapsed().as_secs_f64());
        global.rows_committed.fetch_add(written, Ordering::Relaxed);
        Stats::inc(&global.batches_committed);
    }
    tracing::debug!(
        rows = n,
        written,
        commit_us = started.elapsed().as_micros() as u64,
        "batch committed"
    );
    // Before anyone is answered: an acknowledged message has its webhook events in the
    // outbox (a crash in between loses neither, see `crate::webhooks`).
    if written > 0 {
        record_webhook_events(&state.args.global, &rows, &outcomes).await;
    }
    for (done, outcome) in completions.into_iter().zip(outcomes) {
        done(outcome);
    }
    for reply in barriers {
        let _ = reply.send(());
    }
}

/// Records the `message.received` / `message.status` webhook events of the rows just
/// written, for the tenants with an endpoint taking them (a cached lookup per device).
async fn record_webhook_events(env: &crate::Env, rows: &[InboxRow], outcomes: &[RowResult]) {
    use crate::webhooks::EventKind;
    const KINDS: [EventKind; 2] = [EventKind::MessageReceived, EventKind::MessageStatus];
    let mut tenant_of: HashMap<Arc<str>, String> = HashMap::new();
    let mut skipped: HashSet<Arc<str>> = HashSet::new();
    let mut written = Vec::new();
    for (row, outcome) in rows.iter().zip(outcomes) {
        if outcome.is_err() || skipped.contains(&row.device_id) {
            continue;
        }
        if !tenant_of.contains_key(&row.device_id) {
            let tenant = match env.directory.device(&row.device_id).await {
                Ok(Some(d)) => d.tenant_id.clone(),
                _ => {
                    skipped.insert(row.device_id.clone());
                    continue;
                }
            };
            if !env.webhooks.wants_any(&tenant, &KINDS).await {
                skipped.insert(row.device_id.clone());
                continue;
            }
            tenant_of.insert(row.device_id.clone(), tenant);
        }
        written.push(row);
    }
    if written.is_empty() {
        return;
    }
    let events = env.webhooks.row_events(&written, &tenant_of);
    env.webhooks.record_or_log(events).await;
}

/// The pool of writers; a device's rows always go to the same writer.
pub struct PersistencePool {
    writers: RwLock<Vec<Option<ActorRef<WriterMsg>>>>,
    /// One stats block per writer slot.
    pub stats: Vec<Arc<WriterStats>>,
}

impl PersistencePool {
    /// A pool with `n` empty writer slots (filled by the root supervisor).
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        PersistencePool {
            writers: RwLock::new(vec![None; n]),
            stats: (0..n).map(|_| Arc::new(WriterStats::default())).collect(),
        }
    }

    /// Number of writer slots.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// Whether the pool has no slots (never: it has at least one).
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Installs the writer of slot `i` (after a start or restart).
    pub fn set(&self, i: usize, writer: ActorRef<WriterMsg>) {
        if let Ok(mut w) = self.writers.write() {
            w[i] = Some(writer);
        }
    }

    /// Slot of a device's writer.
    pub fn slot_of(&self, device_id: &str) -> usize {
        // FNV-1a: stable across restarts, cheap.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in device_id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        (h % self.len() as u64) as usize
    }

    fn writer(&self, slot: usize) -> Option<ActorRef<WriterMsg>> {
        self.writers.read().ok().and_then(|w| w[slot].clone())
    }

    /// Queues a row (of node incarnation `incarnation`, in a cluster); `done` runs after
    /// it is durable. If no writer can take it, `done` runs at once with an error.
    pub fn append(&self, row: InboxRow, incarnation: Option<u64>, done: Completion) {
        let slot = self.slot_of(&row.device_id);
        let Some(writer) = self.writer(slot) else {
            done(Err(StoreError::Unavailable("no writer".into())));
            return;
        };
        let mailbox = &self.stats[slot].mailbox;
        mailbox.fetch_add(1, Ordering::Relaxed);
        if let Err(ractor::MessagingErr::SendErr(WriterMsg::Append(_, _, done))) =
            writer.cast(WriterMsg::Append(row, incarnation, done))
        {
            uncount(mailbox);
            done(Err(StoreError::Unavailable("writer restarting".into())));
        }
    }

    /// Waits until every row queued for `device_id`'s writer so far is durable.
    pub async fn barrier(&self, device_id: &str) {
        if let Some(w) = self.writer(self.slot_of(device_id)) {
            let _ = ractor::call!(w, WriterMsg::Barrier);
        }
    }

    /// Waits until every row queued for `device_id` so far has settled, then lets the
    /// writer take the device's rows again after a failed one (see the module doc).
    pub async fn reset(&self, device_id: &str) {
        if let Some(w) = self.writer(self.slot_of(device_id)) {
            let _ = ractor::call!(w, WriterMsg::Reset, device_id.to_owned());
        }
    }

    /// Whether every writer slot holds a running writer.
    pub fn all_running(&self) -> bool {
        self.writers.read().is_ok_and(|w| {
            w.iter().all(|slot| {
                slot.as_ref()
                    .is_some_and(|a| a.get_status() == ractor::ActorStatus::Running)
            })
        })
    }

    /// Waits until every writer has committed what it holds.
    pub async fn flush_all(&self) {
        for slot in 0..self.len() {
            if let Some(w) = self.writer(slot) {
                let _ = ractor::call!(w, WriterMsg::Barrier);
            }
        }
    }
}
