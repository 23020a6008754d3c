//! Running one claimed media job through the server's [`crate::media::MediaService`]:
//! a permanent failure fails the job at once, a transient one is retried with backoff
//! while attempts remain (as every job is).

use super::work::transient;
use crate::jobs::{JobRecord, JobUpdate};
use crate::Env;

/// Processes a media job; its outcome as the dispatcher writes it back.
pub(super) async fn process(env: &Env, job: &JobRecord) -> JobUpdate {
    let attempts = job.attempts + 1;
    let Some(media) = env.media.get() else {
        return JobUpdate::Failed {
            id: job.id.clone(),
            error: "internal: media processing is not configured".into(),
            attempts,
        };
    };
    match media.process(env, job).await {
        Ok(()) => JobUpdate::Completed {
            id: job.id.clone(),
            message_id: None,
            attempts,
        },
        Err(e) if e.transient => transient(env, job, attempts, e.error),
        Err(e) => JobUpdate::Failed {
            id: job.id.clone(),
            error: e.error,
            attempts,
        },
    }
}
