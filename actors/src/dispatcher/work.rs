//! Running one claimed job: a queued send through its device session, or a contact
//! sync in batches with progress.

use std::sync::Arc;

use protocol::rest::{Contact, MessageAccepted};
use protocol::{ErrorCode, Target};
use tokio::sync::oneshot;

use super::{Blocked, CONTACT_BATCH};
use crate::clock::now_ms;
use crate::device::{DeviceMsg, Responder, SendError, SendRequest};
use crate::directory::RouteError;
use crate::jobs::{JobRecord, JobUpdate};
use crate::Env;

/// A send's error when its sending device is gone.
pub(super) const NO_SENDER: &str = "the sending device no longer exists";

/// What a store failure looks like in a job's `error` (never the store's own text).
pub(super) const STORE_DOWN: &str = "unavailable: storage unavailable";

/// A transient failure: delayed with backoff while attempts remain, else failed.
pub(super) fn transient(env: &Env, job: &JobRecord, attempts: u32, error: String) -> JobUpdate {
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

/// Sends one message job (its body already resolved) through its device session.
pub(super) async fn send_job(
    env: &Env,
    job: &JobRecord,
    body: Arc<str>,
) -> (JobUpdate, Option<Blocked>) {
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
    // been sent, however long ago: its stored copy is completed rather than sent anew
    // (the session writes whatever rows are missing, under the same message id).
    let mut client_id = job.id.clone();
    let mut resume = None;
    if job.updated_at != job.created_at || job.attempts > 0 {
        match env.store.sends_by_client_id(&job.device_id, &job.id).await {
            Ok(sends) => {
                if let Some(last) = sends.into_iter().last() {
                    client_id = last.client_id.clone();
                    resume = Some(last);
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "could not look up a job's earlier send");
                return (transient(env, job, attempts, STORE_DOWN.into()), None);
            }
        }
    }
    let req = SendRequest {
        client_id: Some(client_id),
        target,
        body,
        priority: job.lane,
        resume,
    };
    let result = route_send(env, &job.device_id, req).await;
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

/// Hands a send to `device_id`'s session (wherever it runs) and waits for its answer.
pub(super) async fn route_send(
    env: &Env,
    device_id: &str,
    req: SendRequest,
) -> Result<MessageAccepted, SendError> {
    let (tx, rx) = oneshot::channel();
    let routed = env
        .directory
        .deliver(device_id, DeviceMsg::Send(req, Responder::Rest(tx)))
        .await;
    match routed {
        Ok(()) => rx.await.unwrap_or_else(|_| {
            Err(SendError::new(
                ErrorCode::Unavailable,
                "device session restarted",
            ))
        }),
        Err(RouteError::NoDevice) => Err(SendError::new(ErrorCode::NotFound, NO_SENDER)),
        Err(RouteError::Store(e)) => Err(SendError::storage(&e)),
        Err(RouteError::Unavailable) => Err(SendError::new(
            ErrorCode::Unavailable,
            "device session unavailable",
        )),
    }
}

/// Upserts a contact-sync job's contacts in batches, recording progress after each.
pub(super) async fn sync_contacts(env: &Env, job: &JobRecord, body: &str) -> JobUpdate {
    let attempts = job.attempts + 1;
    let contacts: Vec<Contact> = match serde_json::from_str(body) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "stored contacts unreadable");
            return JobUpdate::Failed {
                id: job.id.clone(),
                error: "internal: stored contacts unreadable".into(),
                attempts,
            };
        }
    };
    let start = usize::try_from(job.progress_done)
        .unwrap_or(0)
        .min(contacts.len());
    let mut done = start;
    for chunk in contacts[start..].chunks(CONTACT_BATCH) {
        if let Err(e) = env.store.upsert_contacts(&job.device_id, chunk).await {
            tracing::warn!(job_id = %job.id, error = %e, "contact sync batch failed");
            return transient(env, job, attempts, STORE_DOWN.into());
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
    env.cache
        .invalidate(crate::cache::CacheKind::Contacts, &job.device_id)
        .await;
    JobUpdate::Completed {
        id: job.id.clone(),
        message_id: None,
        attempts,
    }
}
