//! The media processing job, in three steps recorded as the job's progress (done of
//! [`STEPS`]): read the stored blob back (size, SHA-256, type from its bytes); decode
//! an image (dimensions, thumbnail); store the thumbnail and mark the file ready.
//!
//! A store that does not answer fails the run transiently (the dispatcher retries with
//! backoff); a file that is not what its upload claimed fails it for good, and the
//! record says why. Running it again (a retried job) starts over and replaces the
//! earlier outcome.

use actors::clock::now_ms;
use actors::jobs::{JobBody, JobRecord};
use actors::media::MediaJobError;
use actors::store::StoreError;
use actors::Env;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::detect::{self, SNIFF_BYTES};
use super::thumbnail;
use super::{BlobPart, Media, MediaOutcome, MediaRecord, ThumbInfo};

/// Steps of a media job (its progress total).
pub const STEPS: u64 = 3;

fn store_down(e: &StoreError) -> MediaJobError {
    tracing::warn!(error = %e, "media job: store call failed");
    MediaJobError::transient("unavailable: storage unavailable")
}

async fn progress(env: &Env, job: &JobRecord, done: u64) {
    if let Err(e) = env.store.set_job_progress(&job.id, done, now_ms()).await {
        tracing::warn!(job_id = %job.id, error = %e, "could not record progress");
    }
}

/// Fails the file for good: recorded on the media, and the job's error.
async fn reject(media: &Media, id: &str, why: String) -> MediaJobError {
    let why = protocol::validate::bounded(why);
    if let Err(e) = media
        .store
        .finish_media(id, MediaOutcome::Failed(why.clone()), now_ms())
        .await
    {
        return store_down(&e);
    }
    MediaJobError::permanent(format!("unsupported_media_type: {why}"))
}

/// What reading the blob back found.
struct Read {
    size: u64,
    sha256: String,
    head: Vec<u8>,
    /// The whole file, for images only (bounded by `max_media_bytes`).
    bytes: Option<Vec<u8>>,
}

async fn read_back(media: &Media, rec: &MediaRecord) -> Result<Option<Read>, StoreError> {
    let Some(blob) = media.store.open_blob(&rec.id, BlobPart::Original).await? else {
        return Ok(None);
    };
    let keep = detect::is_image(&rec.mime);
    let mut bytes = keep.then(|| Vec::with_capacity(usize::try_from(blob.len).unwrap_or(0)));
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut size = 0u64;
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StoreError::Unavailable(format!("reading a blob: {e}")))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        if let Some(b) = bytes.as_mut() {
            if size > media.max_bytes.max(rec.size) {
                // Longer than anything accepted: reported below as a size mismatch.
                bytes = None;
            } else {
                b.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Some(Read {
        size,
        sha256: format!("{:x}", hasher.finalize()),
        head,
        bytes: if keep { bytes } else { None },
    }))
}

/// Writes a thumbnail to a spool file and stores it as the media's thumbnail blob.
async fn store_thumbnail(media: &Media, id: &str, jpeg: &[u8]) -> Result<u64, StoreError> {
    let unavailable = |e: std::io::Error| StoreError::Unavailable(format!("thumbnail spool: {e}"));
    tokio::fs::create_dir_all(&media.spool_dir)
        .await
        .map_err(unavailable)?;
    let path = media.spool_dir.join(format!(
        "th_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    let mut file = tokio::fs::File::create(&path).await.map_err(unavailable)?;
    file.write_all(jpeg).await.map_err(unavailable)?;
    file.sync_all().await.map_err(unavailable)?;
    drop(file);
    let stored = media
        .store
        .put_blob(id, BlobPart::Thumbnail, path.clone())
        .await;
    // `put_blob` consumes the file; gone already unless it failed early.
    let _ = tokio::fs::remove_file(&path).await;
    stored
}

/// Runs a media job (see the module docs).
pub async fn run(media: &Media, env: &Env, job: &JobRecord) -> Result<(), MediaJobError> {
    let JobBody::Inline(id) = &job.body else {
        return Err(MediaJobError::permanent(
            "internal: a media job names no media",
        ));
    };
    let rec = match media.store.get_media(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(MediaJobError::permanent(format!(
                "not_found: no media {id}"
            )))
        }
        Err(e) => return Err(store_down(&e)),
    };
    let read = match read_back(media, &rec).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(reject(media, id, "the stored file is missing".into()).await),
        Err(e) => return Err(store_down(&e)),
    };
    if read.size != rec.size {
        let why = format!("stored {} bytes, {} were uploaded", read.size, rec.size);
        return Err(reject(media, id, why).await);
    }
    if detect::sniff(&read.head) != Some(rec.mime.as_str()) {
        let why = format!("the stored bytes are no longer {}", rec.mime);
        return Err(reject(media, id, why).await);
    }
    progress(env, job, 1).await;
    let mut dimensions = None;
    let mut thumb = None;
    if let Some(bytes) = read.bytes {
        let permit =
            media.decodes.acquire().await.map_err(|_| {
                MediaJobError::transient("unavailable: the server is shutting down")
            })?;
        let mime = rec.mime.clone();
        let made = tokio::task::spawn_blocking(move || thumbnail::make(&bytes, &mime)).await;
        drop(permit);
        let made = match made {
            Ok(Ok(t)) => t,
            Ok(Err(why)) => return Err(reject(media, id, why).await),
            Err(e) => {
                tracing::error!(media_id = %id, error = %e, "thumbnail task failed");
                return Err(reject(media, id, "the image could not be decoded".into()).await);
            }
        };
        dimensions = Some((made.width, made.height));
        progress(env, job, 2).await;
        let size = store_thumbnail(media, id, &made.jpeg)
            .await
            .map_err(|e| store_down(&e))?;
        thumb = Some(ThumbInfo {
            mime: "image/jpeg".into(),
            size,
            width: made.thumb_width,
            height: made.thumb_height,
        });
    }
    let outcome = MediaOutcome::Ready {
        sha256: read.sha256,
        dimensions,
        thumbnail: thumb,
    };
    match media.store.finish_media(id, outcome, now_ms()).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(MediaJobError::permanent(format!(
                "not_found: no media {id}"
            )))
        }
        Err(e) => return Err(store_down(&e)),
    }
    progress(env, job, STEPS).await;
    Ok(())
}
