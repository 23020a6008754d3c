//! Media: files uploaded by a tenant's devices, kept as blobs with their metadata, and
//! processed by a job of the durable queue (`actors::jobs::JobKind::Media`).
//!
//! - `POST /v1/media` streams the body to a spool file ([`spool`]), bounded by
//!   `max_media_bytes` and refused with 413 past it (never held in memory), checks its
//!   type from its first bytes ([`detect`]; 415 for an unknown type or one that
//!   contradicts the declared name or `Content-Type`), stores it as a blob and queues
//!   its processing job.
//! - The job ([`process`]) reads the blob back and records its size, SHA-256 and type,
//!   and for images their dimensions and a thumbnail ([`thumbnail`], decoded under
//!   [`image::Limits`] against decompression bombs).
//! - Blobs and metadata sit behind [`MediaStore`]: files under `<data_dir>/media/` and
//!   a `media` table on the embedded store; on MongoDB a `media` collection and the
//!   bytes in chunks, stored as GridFS stores them (`src/store/*/media.rs`; why not the
//!   driver's GridFS bucket is said there). It is a trait of its own, beside the actor crate's
//!   `Store`, because nothing in the actor tree reads media: the tree only runs the job
//!   and checks message references, through `actors::media::MediaService`, which
//!   [`Media`] implements.

pub mod auth;
pub mod detect;
pub mod process;
pub mod spool;
pub mod thumbnail;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use actors::jobs::JobRecord;
use actors::media::{MediaJobError, MediaService};
use actors::store::{StoreError, StoreResult};
use actors::Env;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// Where a media file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaState {
    /// Stored; its processing job has not finished.
    Processing,
    /// Processed: checksum, type and (images) dimensions and thumbnail recorded.
    Ready,
    /// Processing found the file unusable (`error` says why).
    Failed,
}

impl MediaState {
    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaState::Processing => "processing",
            MediaState::Ready => "ready",
            MediaState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<MediaState> {
        [
            MediaState::Processing,
            MediaState::Ready,
            MediaState::Failed,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// A thumbnail as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbInfo {
    /// MIME type (`image/jpeg`).
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// A media file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// Media id (`md_…`).
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Uploading device.
    pub device_id: String,
    /// Its processing job.
    pub job_id: String,
    /// The name the client gave, if any (never used to decide the type).
    pub name: Option<String>,
    /// MIME type, from the file's bytes.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Where it is in its life.
    pub state: MediaState,
    /// SHA-256 (hex), once processed.
    pub sha256: Option<String>,
    /// Image width in pixels, once processed.
    pub width: Option<u32>,
    /// Image height in pixels, once processed.
    pub height: Option<u32>,
    /// The thumbnail (images), once processed.
    pub thumbnail: Option<ThumbInfo>,
    /// Why processing failed.
    pub error: Option<String>,
    /// Upload time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// What processing found, recorded by [`MediaStore::finish_media`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOutcome {
    /// The file is what it claims.
    Ready {
        /// SHA-256 (hex).
        sha256: String,
        /// Image dimensions (width, height).
        dimensions: Option<(u32, u32)>,
        /// The thumbnail, stored as the [`BlobPart::Thumbnail`] blob.
        thumbnail: Option<ThumbInfo>,
    },
    /// It is not.
    Failed(String),
}

/// Which blob of a media file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPart {
    /// The file as uploaded.
    Original,
    /// Its thumbnail.
    Thumbnail,
}

impl BlobPart {
    /// The blob's stored name for media `id` (a file name, a GridFS id).
    pub fn key(self, id: &str) -> String {
        match self {
            BlobPart::Original => id.to_owned(),
            BlobPart::Thumbnail => format!("{id}.thumb"),
        }
    }
}

/// A blob's bytes, streamed.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// A blob opened for reading.
pub struct Blob {
    /// Its length in bytes.
    pub len: u64,
    /// Its bytes, in chunks.
    pub stream: BlobStream,
}

/// Media metadata and blobs, per backend (`src/store/sqlite/media.rs`,
/// `src/store/mongo/media.rs`); one contract suite (`tests/contract/media.rs`) runs on
/// both.
#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// Stores a new record; `Conflict` if its id exists.
    async fn insert_media(&self, media: MediaRecord) -> StoreResult<()>;
    /// A record by id.
    async fn get_media(&self, id: &str) -> StoreResult<Option<MediaRecord>>;
    /// Records a processing outcome (ready with its facts, or failed; a later outcome
    /// replaces an earlier one, as a retried job runs again); false if there is no
    /// such record.
    async fn finish_media(&self, id: &str, outcome: MediaOutcome, now: i64) -> StoreResult<bool>;
    /// Deletes a record and its blobs; false if there was no record.
    async fn delete_media(&self, id: &str) -> StoreResult<bool>;
    /// Stores the file at `path` as a blob of media `id` (replacing one there), and
    /// consumes the file; answers the bytes stored.
    async fn put_blob(&self, id: &str, part: BlobPart, path: PathBuf) -> StoreResult<u64>;
    /// Opens a blob; `None` if there is none.
    async fn open_blob(&self, id: &str, part: BlobPart) -> StoreResult<Option<Blob>>;
}

/// The server's media: the store, the limits, and the processing job's runner.
pub struct Media {
    /// Metadata and blobs.
    pub store: Arc<dyn MediaStore>,
    /// Largest upload, in bytes.
    pub max_bytes: u64,
    /// Where uploads are spooled before they are stored (`<data_dir>/media/tmp`).
    pub spool_dir: PathBuf,
    /// Decoding images is CPU work: at most this many at once.
    decodes: tokio::sync::Semaphore,
    /// Test hook: the next this many jobs fail as if the store were away.
    fail_next: AtomicU32,
    test_hooks: bool,
}

impl Media {
    /// Media over `store`, spooling uploads in `spool_dir`.
    pub fn new(
        store: Arc<dyn MediaStore>,
        max_bytes: u64,
        spool_dir: PathBuf,
        test_hooks: bool,
    ) -> Media {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Media {
            store,
            max_bytes,
            spool_dir,
            decodes: tokio::sync::Semaphore::new(cores),
            fail_next: AtomicU32::new(0),
            test_hooks,
        }
    }

    /// Test hook (only with `test_hooks`): the next `n` media jobs fail transiently.
    pub fn fail_next_jobs(&self, n: u32) {
        if self.test_hooks {
            self.fail_next.store(n, Ordering::SeqCst);
        }
    }

    fn take_injected_failure(&self) -> bool {
        self.test_hooks
            && self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// The server's media over `store`: uploads spool in `<data_dir>/media/tmp` (beside
/// the embedded store's blobs, on the same file system), emptied of what an earlier
/// process left there.
pub fn start(config: &crate::config::Config, store: Arc<dyn MediaStore>) -> Arc<Media> {
    let spool = config.data_dir.join("media").join("tmp");
    if let Err(e) = std::fs::remove_dir_all(&spool) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "could not empty the media spool directory");
        }
    }
    Arc::new(Media::new(
        store,
        config.max_media_bytes,
        spool,
        config.test_hooks,
    ))
}

/// A fresh media id.
pub fn new_media_id() -> String {
    format!("md_{}", ulid::Ulid::new().to_string().to_lowercase())
}

#[async_trait]
impl MediaService for Media {
    async fn process(&self, env: &Env, job: &JobRecord) -> Result<(), MediaJobError> {
        if self.take_injected_failure() {
            return Err(MediaJobError::transient(
                "unavailable: storage unavailable (injected)",
            ));
        }
        process::run(self, env, job).await
    }

    async fn exists(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get_media(id)
            .await?
            .is_some_and(|m| m.tenant_id == tenant_id))
    }
}
