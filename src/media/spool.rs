//! Upload spooling: a request body streamed to a file of its own, chunk by chunk, and
//! refused with `413 too_large` as soon as it passes the limit (a declared
//! `Content-Length` over it is refused before a byte is read). The body is never held
//! in memory whole; only its first [`SNIFF_BYTES`] are kept, to check its type.

use std::path::{Path, PathBuf};

use actix_web::dev::Payload;
use futures_util::StreamExt;
use protocol::ErrorCode;
use tokio::io::AsyncWriteExt;

use super::detect::SNIFF_BYTES;
use crate::error::ApiError;

/// A spooled upload; its file is removed when this is dropped, unless taken.
pub struct Spooled {
    path: Option<PathBuf>,
    /// Bytes received.
    pub size: u64,
    /// The first bytes (at most [`SNIFF_BYTES`]).
    pub head: Vec<u8>,
}

impl Spooled {
    /// The spool file's path, handed over: the caller now owns (and removes) the file.
    pub fn take_path(&mut self) -> Option<PathBuf> {
        self.path.take()
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes a file when dropped (unless disarmed): a refused or broken upload leaves
/// nothing behind.
struct Guard(Option<PathBuf>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The 413 of an upload over `limit` bytes.
pub fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the file is over {limit} bytes (`max_media_bytes`)"),
    )
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, what, "media spool");
    ApiError::new(ErrorCode::Unavailable, "could not store the upload; retry")
}

/// Streams `payload` into a new file under `dir`, at most `limit` bytes.
pub async fn spool(
    mut payload: Payload,
    dir: &Path,
    limit: u64,
    declared: Option<u64>,
) -> Result<Spooled, ApiError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error("creating the spool directory", e))?;
    let path = dir.join(format!(
        "up_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    let mut guard = Guard(Some(path.clone()));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| io_error("creating a spool file", e))?;
    let mut size = 0u64;
    let mut head = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| io_error("writing a spool file", e))?;
    }
    // Durable before it is acknowledged (the 202 promises a stored file).
    file.sync_all()
        .await
        .map_err(|e| io_error("syncing a spool file", e))?;
    guard.0 = None;
    Ok(Spooled {
        path: Some(path),
        size,
        head,
    })
}
