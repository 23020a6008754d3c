//! Running the background job kinds that are not one send: group syncs (groups
//! created or replaced in batches) and system notifications (one send per recipient
//! from the tenant's reserved `system` device). Both record progress after every
//! batch and resume from it, so a job interrupted by a crash, a rate budget or a store
//! outage picks up where it stopped.

use std::sync::Arc;

use futures_util::future::join_all;
use protocol::background::GroupUpsert;
use protocol::{ErrorCode, Target};
use serde::{Deserialize, Serialize};

use super::work::{route_send, transient, NO_SENDER, STORE_DOWN};
use super::Blocked;
use crate::clock::now_ms;
use crate::device::{SendError, SendRequest};
use crate::jobs::{JobRecord, JobUpdate};
use crate::store::{GroupRecord, StoreError};
use crate::Env;

/// Groups per store call in a group sync.
pub const GROUP_BATCH: usize = 500;
/// Sends of a notification in flight at once (also how far a resumed job may have
/// gone past its recorded progress).
pub const NOTIFY_WINDOW: usize = 64;

/// A notification job's stored body: the message and its recipients, fixed when the
/// job was queued.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotificationBody {
    /// Raw JSON object every recipient gets.
    pub body: String,
    /// Recipient addresses, in send order.
    pub to: Vec<String>,
}

/// The request id of a notification's send to its `index`-th recipient. `:` keeps it
/// apart from a request id's `.N` resends (see `Store::sends_by_client_id`).
pub fn notification_client_id(job_id: &str, index: usize) -> String {
    format!("{job_id}:{index}")
}

fn failed(job: &JobRecord, attempts: u32, error: impl Into<String>) -> JobUpdate {
    JobUpdate::Failed {
        id: job.id.clone(),
        error: error.into(),
        attempts,
    }
}

fn completed(job: &JobRecord, attempts: u32) -> JobUpdate {
    JobUpdate::Completed {
        id: job.id.clone(),
        message_id: None,
        attempts,
    }
}

async fn record_progress(env: &Env, job: &JobRecord, done: usize) {
    if let Err(e) = env
        .store
        .set_job_progress(&job.id, done as u64, now_ms())
        .await
    {
        tracing::warn!(job_id = %job.id, error = %e, "could not record progress");
    }
}

/// Creates or replaces a group sync's groups in batches, recording progress after each.
pub(super) async fn sync_groups(env: &Env, job: &JobRecord, body: &str) -> JobUpdate {
    let attempts = job.attempts + 1;
    let groups: Vec<GroupUpsert> = match serde_json::from_str(body) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "stored groups unreadable");
            return failed(job, attempts, "internal: stored groups unreadable");
        }
    };
    let start = usize::try_from(job.progress_done)
        .unwrap_or(0)
        .min(groups.len());
    let mut done = start;
    for chunk in groups[start..].chunks(GROUP_BATCH) {
        let now = now_ms();
        let mut records = Vec::with_capacity(chunk.len());
        for g in chunk {
            let Some(id) = g.group_id.clone() else {
                return failed(job, attempts, "internal: stored group without an id");
            };
            let mut members = g.members.clone();
            members.sort();
            members.dedup();
            records.push(GroupRecord {
                id,
                tenant_id: job.tenant_id.clone(),
                name: g.name.trim().to_owned(),
                members,
                created_at: now,
                version: 0,
            });
        }
        let stored = match env.store.upsert_groups(records).await {
            Ok(s) => s,
            Err(StoreError::Conflict(_)) => {
                return failed(
                    job,
                    attempts,
                    "conflict: a group id of this sync belongs to another tenant",
                );
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "group sync batch failed");
                return transient(env, job, attempts, STORE_DOWN.into());
            }
        };
        for g in stored {
            env.directory.group_changed(Arc::new(g)).await;
        }
        done += chunk.len();
        record_progress(env, job, done).await;
    }
    completed(job, attempts)
}

/// What became of one send of a notification.
enum Sent {
    /// Accepted (or found sent before).
    Done,
    /// This recipient cannot get it (e.g. its device was deleted): skipped.
    Skipped(SendError),
    /// Stopped by a budget: the job waits and resumes here.
    Blocked(SendError),
    /// A transient failure: the job backs off and resumes here.
    Failed(SendError),
}

async fn send_one(env: &Env, job: &JobRecord, body: &Arc<str>, to: &str, index: usize) -> Sent {
    let client_id = notification_client_id(&job.id, index);
    // A resumed job may have sent this one already (past its recorded progress): the
    // earlier send is completed rather than repeated.
    let mut resume = None;
    if job.attempts > 0 || job.updated_at != job.created_at {
        match env
            .store
            .sends_by_client_id(&job.device_id, &client_id)
            .await
        {
            Ok(sends) => resume = sends.into_iter().find(|s| s.client_id == client_id),
            Err(e) => return Sent::Failed(SendError::storage(&e)),
        }
    }
    let req = SendRequest {
        client_id: Some(client_id),
        target: Target::To(to.to_owned()),
        body: Arc::clone(body),
        priority: job.lane,
        resume,
    };
    match route_send(env, &job.device_id, req).await {
        Ok(_) => Sent::Done,
        Err(e) if e.code == ErrorCode::RateLimited => Sent::Blocked(e),
        Err(e) if e.code.retryable() || e.code == ErrorCode::Internal => Sent::Failed(e),
        // The system device itself was deleted: not this recipient's fault.
        Err(e) if e.message == NO_SENDER => Sent::Failed(e),
        Err(e) => Sent::Skipped(e),
    }
}

/// Sends a notification to its recipients from the job's (system) device,
/// [`NOTIFY_WINDOW`] at a time, recording progress after each window.
pub(super) async fn notify(env: &Env, job: &JobRecord, body: &str) -> (JobUpdate, Option<Blocked>) {
    let attempts = job.attempts + 1;
    let note: NotificationBody = match serde_json::from_str(body) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "stored notification unreadable");
            return (
                failed(job, attempts, "internal: stored notification unreadable"),
                None,
            );
        }
    };
    let message: Arc<str> = Arc::from(note.body.as_str());
    let mut done = usize::try_from(job.progress_done)
        .unwrap_or(0)
        .min(note.to.len());
    while done < note.to.len() {
        let end = (done + NOTIFY_WINDOW).min(note.to.len());
        let sends = note.to[done..end]
            .iter()
            .enumerate()
            .map(|(k, to)| send_one(env, job, &message, to, done + k));
        let outcomes = join_all(sends).await;
        // Progress moves over the leading run of finished sends; a send after a stop
        // that went through is found by its request id when the job resumes.
        let mut stop = None;
        for (k, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Sent::Done => {}
                Sent::Skipped(e) => {
                    tracing::warn!(job_id = %job.id, to = %note.to[done + k], code = e.code.as_str(),
                        "notification recipient skipped: {}", e.message);
                }
                Sent::Blocked(e) | Sent::Failed(e) => {
                    stop = Some((done + k, e));
                    break;
                }
            }
        }
        let Some((at, e)) = stop else {
            done = end;
            record_progress(env, job, done).await;
            continue;
        };
        record_progress(env, job, at).await;
        if e.code == ErrorCode::RateLimited {
            let wait = i64::try_from(e.retry_after_ms.unwrap_or(1000)).unwrap_or(i64::MAX / 2);
            let update = JobUpdate::Delayed {
                id: job.id.clone(),
                not_before: now_ms().saturating_add(wait),
                attempts: job.attempts,
            };
            let blocked = Blocked {
                device_id: job.device_id.clone(),
                lane: job.lane,
                retry_after_ms: wait,
            };
            return (update, Some(blocked));
        }
        let error = format!("{}: {}", e.code.as_str(), e.message);
        return (transient(env, job, attempts, error), None);
    }
    (completed(job, attempts), None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notification_request_ids_are_not_resends_of_the_job_id() {
        let id = notification_client_id("j_1", 7);
        assert_eq!(id, "j_1:7");
        // `sends_by_client_id("j_1")` matches "j_1" and "j_1.N" only.
        assert!(!id.starts_with("j_1."));
        assert!(id.len() <= protocol::validate::MAX_CLIENT_ID_LEN);
    }
}
