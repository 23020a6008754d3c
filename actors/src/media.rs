//! What the actor tree needs of media (uploaded files): running a media processing
//! job ([`crate::jobs::JobKind::Media`]) and checking that a message body's media
//! reference names a file of the sender's tenant.
//!
//! The media themselves (blobs, metadata, decoding) belong to the server crate, which
//! implements [`MediaService`] and puts it in [`crate::Env::media`] before the actor
//! tree starts: this crate names no file system, database or image codec.
//!
//! A body references a file with a top-level `"media"` string, `{"media":"md_…",
//! "text":"…"}`. Bodies are opaque JSON otherwise; only this one key is reserved.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use protocol::ErrorCode;

use crate::device::SendError;
use crate::jobs::JobRecord;
use crate::store::StoreError;
use crate::Env;

/// Why a media job did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaJobError {
    /// `code: detail`, as a job's `error` shows it.
    pub error: String,
    /// Whether running the job again may succeed (the store was away): retried with
    /// backoff while attempts remain; otherwise the job fails at once.
    pub transient: bool,
}

impl MediaJobError {
    /// A failure running the job again does not mend (the file is not what it claims).
    pub fn permanent(error: impl Into<String>) -> Self {
        MediaJobError {
            error: error.into(),
            transient: false,
        }
    }

    /// A failure that may pass (storage unavailable).
    pub fn transient(error: impl Into<String>) -> Self {
        MediaJobError {
            error: error.into(),
            transient: true,
        }
    }
}

/// Media processing and lookups, implemented by the server crate.
#[async_trait]
pub trait MediaService: Send + Sync + 'static {
    /// Runs one claimed media job to its end (recording progress through
    /// `env.store.set_job_progress`); `Ok` when the file is processed and ready.
    async fn process(&self, env: &Env, job: &JobRecord) -> Result<(), MediaJobError>;

    /// Whether media `id` exists in tenant `tenant_id` (in any state).
    async fn exists(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError>;
}

/// Where the server puts its [`MediaService`] (set once, before the tree starts).
pub type MediaSlot = OnceLock<Arc<dyn MediaService>>;

/// Cheap test first: most bodies never mention media and are not parsed again.
fn may_reference(body: &str) -> bool {
    body.contains("\"media\"")
}

/// The media id a message body references (its top-level `"media"` string), if any;
/// `Err` when `media` is there but is not a non-empty string.
pub fn media_ref(body: &str) -> Result<Option<String>, String> {
    if !may_reference(body) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        media: Option<serde_json::Value>,
    }
    let probe: Probe = match serde_json::from_str(body) {
        Ok(p) => p,
        // Not an object: it cannot carry a reference (bodies are checked elsewhere).
        Err(_) => return Ok(None),
    };
    match probe.media {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(Some(s)),
        Some(_) => {
            Err("`body.media` must be a media id (a string, as `POST /v1/media` answers)".into())
        }
    }
}

/// Checks a send's body: a media reference must name a file of `tenant_id`
/// (`bad_request` when malformed, `not_found` when there is no such file there).
pub async fn check_body(env: &Env, tenant_id: &str, body: &str) -> Result<(), SendError> {
    let Some(id) = media_ref(body).map_err(|m| SendError::new(ErrorCode::BadRequest, m))? else {
        return Ok(());
    };
    let Some(media) = env.media.get() else {
        return Err(SendError::new(
            ErrorCode::Unavailable,
            "media are not available on this server",
        ));
    };
    match media.exists(tenant_id, &id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(SendError::new(
            ErrorCode::NotFound,
            format!(
                "`body.media`: no media {} in this tenant",
                protocol::validate::quoted(&id)
            ),
        )),
        Err(e) => Err(SendError::storage(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::media_ref;

    #[test]
    fn finds_the_reference_and_only_it() {
        assert_eq!(media_ref(r#"{"text":"hi"}"#), Ok(None));
        assert_eq!(
            media_ref(r#"{"media":"md_1","text":"x"}"#),
            Ok(Some("md_1".into()))
        );
        assert_eq!(media_ref(r#"{"text":"\"media\""}"#), Ok(None));
        assert_eq!(media_ref(r#"{"media":null}"#), Ok(None));
        assert!(media_ref(r#"{"media":5}"#).is_err());
        assert!(media_ref(r#"{"media":""}"#).is_err());
    }
}
