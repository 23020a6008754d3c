//! Durable jobs: queued sends and background contact syncs, as the store keeps them.
//!
//! State machine of a job (the store enforces the "from" side of every move):
//!
//! ```text
//!              enqueue (send_at in the future)
//!   ┌──────────────────────────────┐
//!   │ enqueue                      ▼
//!   ├──────────► waiting ◄──── delayed ◄─────────────┐ rate_limited (not_before = retry),
//!   │              │  ▲  promote when not_before ≤ now│ transient error with attempts left
//!   │        claim │  │ restart (active → waiting)    │ (not_before = backoff)
//!   │              ▼  │                               │
//!   │            active ──────────────────────────────┘
//!   │              │ ╲
//!   │      sent ok │  ╲ permanent error, or transient with no attempts left
//!   │              ▼   ▼
//!   │       completed  failed ──── retry ───► waiting
//!   │
//!   └── waiting | delayed ── cancel ──► cancelled
//! ```
//!
//! `completed`, `failed` and `cancelled` are final except that `failed` may be retried.
//! A message job is sent with its job id as the send's client request id, so a send
//! repeated after a crash (the job was `active` when the process died and went back to
//! `waiting`) is answered from the device session's idempotency window and creates no
//! second message.

use std::sync::Arc;

use protocol::Priority;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Due, waiting for a worker.
    Waiting,
    /// Waiting for a rate budget, a backoff or its `send_at`.
    Delayed,
    /// Claimed by the dispatcher, being sent.
    Active,
    /// Sent; has a `message_id`.
    Completed,
    /// Gave up; has an `error`.
    Failed,
    /// Cancelled before it was sent.
    Cancelled,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 6] = [
        JobState::Waiting,
        JobState::Delayed,
        JobState::Active,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Delayed => "delayed",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Send one message (`target_to` / `target_group`, `body`).
    Message,
    /// Upsert a device's contacts (`body` is the JSON array), with progress.
    Contacts,
    /// Group sync: create or replace a tenant's groups (`body` is the JSON array of
    /// [`protocol::rest::GroupUpsert`] with resolved ids), with progress. No device.
    Groups,
    /// A system notification: one message from the tenant's reserved `system` device
    /// (the job's device) to each address of `body`'s list, with progress.
    Notification,
    /// Process an uploaded file (`body` is the media id): size, SHA-256, type, image
    /// dimensions and a thumbnail, with progress (see `crate::media`).
    Media,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Message => "message",
            JobKind::Contacts => "contacts",
            JobKind::Groups => "groups",
            JobKind::Notification => "notification",
            JobKind::Media => "media",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "message" => Some(JobKind::Message),
            "contacts" => Some(JobKind::Contacts),
            "groups" => Some(JobKind::Groups),
            "notification" => Some(JobKind::Notification),
            "media" => Some(JobKind::Media),
            _ => None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Job id; also the send's client request id.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// Owning tenant.
    pub tenant_id: String,
    /// Sending (or syncing) device.
    pub device_id: String,
    /// Priority lane.
    pub lane: Priority,
    /// Current state.
    pub state: JobState,
    /// Send attempts made (rate-limit deferrals not counted).
    pub attempts: u32,
    /// Recipient address (1:1 sends).
    pub target_to: Option<String>,
    /// Recipient group.
    pub target_group: Option<String>,
    /// Raw JSON body (message) or contact array (contacts), or a shared body's id.
    pub body: JobBody,
    /// Set when completed.
    pub message_id: Option<String>,
    /// Set when failed.
    pub error: Option<String>,
    /// Requested schedule (Unix ms).
    pub send_at: Option<i64>,
    /// Not claimed before this time (Unix ms).
    pub not_before: i64,
    /// Claim order: lower first (due time plus lane × aging, so old low jobs overtake).
    pub rank: i64,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
    /// Progress: items done (contact, group syncs and notifications).
    pub progress_done: u64,
    /// Progress: items in all (contact syncs).
    pub progress_total: u64,
}

/// A job's payload: its own, or a body shared by many jobs (a campaign's message is
/// stored once, not once per recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobBody {
    /// The job's own payload.
    Inline(String),
    /// The id of a [`SharedBody`].
    Shared(String),
}

/// A body stored once and pointed at by many jobs ([`JobBody::Shared`]).
#[derive(Debug, Clone)]
pub struct SharedBody {
    /// Body id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Raw JSON.
    pub body: Arc<str>,
}

/// The outcome of an active job, applied only if the job is still `active`.
#[derive(Debug, Clone)]
pub enum JobUpdate {
    /// Sent.
    Completed {
        /// Job id.
        id: String,
        /// The message it created (empty for contact syncs).
        message_id: Option<String>,
        /// Attempts made.
        attempts: u32,
    },
    /// Given up.
    Failed {
        /// Job id.
        id: String,
        /// Why (`code: message`).
        error: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Back to the queue until `not_before`.
    Delayed {
        /// Job id.
        id: String,
        /// When it may run again (Unix ms).
        not_before: i64,
        /// Attempts made.
        attempts: u32,
    },
}

/// One cell of the queue statistics.
#[derive(Debug, Clone)]
pub struct QueueCount {
    /// Tenant.
    pub tenant_id: String,
    /// Lane.
    pub lane: Priority,
    /// State.
    pub state: JobState,
    /// Jobs in that cell.
    pub count: u64,
}

/// Stored lane number of a priority (0 critical … 3 low).
pub fn lane_index(p: Priority) -> i64 {
    p.index() as i64
}

/// The priority of a stored lane number.
pub fn lane_from_index(i: i64) -> Priority {
    usize::try_from(i)
        .ok()
        .and_then(|i| Priority::ALL.get(i).copied())
        .unwrap_or(Priority::Low)
}

/// Assigns ranks to new jobs of one tenant and lane, fairly across tenants: each job
/// queues `spacing_ms` behind the one before it, the first behind the tenant's current
/// tail (the highest rank of its waiting jobs in the lane), and never before its own
/// due rank. A tenant that enqueues 100,000 jobs at once spreads them over 100,000 ×
/// spacing of virtual time, so another tenant's job enqueued now is claimed after at
/// most the few of the big tenant's jobs ranked before it, not after all of them
/// (virtual-time fair queuing, as in weighted fair queuing schedulers).
#[derive(Debug, Clone, Copy)]
pub struct FairRanker {
    last: Option<i64>,
    spacing: i64,
}

impl FairRanker {
    /// A ranker after the tenant's `tail`.
    pub fn new(tail: Option<i64>, spacing_ms: i64) -> Self {
        FairRanker {
            last: tail,
            spacing: spacing_ms.max(0),
        }
    }

    /// The rank of the next job, whose own rank (due time and lane) is `base`.
    pub fn next(&mut self, base: i64) -> i64 {
        let r = match self.last {
            Some(last) => base.max(last.saturating_add(self.spacing)),
            None => base,
        };
        self.last = Some(r);
        r
    }
}

/// Claim rank of a job due at `due` in `lane`: each lane below critical adds one aging
/// period, so a job that has waited that long ranks like one a lane higher.
pub fn rank(due: i64, lane: Priority, aging: std::time::Duration) -> i64 {
    let aging_ms = i64::try_from(aging.as_millis()).unwrap_or(i64::MAX / 8);
    due.saturating_add(lane_index(lane).saturating_mul(aging_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_backlog_is_spread_and_a_new_tenant_goes_first() {
        let mut big = FairRanker::new(None, 1);
        let ranks: Vec<i64> = (0..5).map(|_| big.next(1000)).collect();
        assert_eq!(ranks, [1000, 1001, 1002, 1003, 1004]);
        // Another tenant's job due at the same time ranks with the big one's first.
        let mut small = FairRanker::new(None, 1);
        assert_eq!(small.next(1000), 1000);
        // The big tenant's next job queues behind its tail, not at its due rank.
        let mut again = FairRanker::new(Some(1004), 1);
        assert_eq!(again.next(1000), 1005);
        // A job due later than the tail keeps its own rank.
        assert_eq!(again.next(9000), 9000);
    }
}
