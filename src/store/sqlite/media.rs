//! Media on the embedded store: metadata in the `media` table (`schema.rs`), blobs as
//! files under `<data_dir>/media/`, one per blob, named by its key (`md_…`,
//! `md_….thumb`). A blob is stored by renaming its spool file into place (the spool
//! is under the same directory, so on the same file system) and syncing the
//! directory, so a blob is either there whole or not at all.

use std::path::{Path, PathBuf};

use actors::store::{StoreError, StoreResult};
use async_trait::async_trait;
use bytes::BytesMut;
use rusqlite::{params, OptionalExtension, Row};
use tokio::io::AsyncReadExt;

use super::{conflict_or_unavailable, unavailable, SqliteStore};
use crate::media::{
    Blob, BlobPart, BlobStream, MediaOutcome, MediaRecord, MediaState, MediaStore, ThumbInfo,
};

/// Bytes per chunk of a blob read.
const CHUNK: usize = 64 * 1024;

const INSERT: &str = "INSERT INTO media (id, tenant_id, device_id, job_id, name, mime, size, \
     state, sha256, width, height, thumb_mime, thumb_size, thumb_width, thumb_height, error, \
     created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";
const GET: &str = "SELECT id, tenant_id, device_id, job_id, name, mime, size, state, sha256, \
     width, height, thumb_mime, thumb_size, thumb_width, thumb_height, error, created_at, \
     updated_at FROM media WHERE id = ?1";
const READY: &str = "UPDATE media SET state = 'ready', sha256 = ?2, width = ?3, height = ?4, \
     thumb_mime = ?5, thumb_size = ?6, thumb_width = ?7, thumb_height = ?8, error = NULL, \
     updated_at = ?9 WHERE id = ?1";
const FAILED: &str = "UPDATE media SET state = 'failed', error = ?2, updated_at = ?3 WHERE id = ?1";
const DELETE: &str = "DELETE FROM media WHERE id = ?1";

/// The embedded store's media: the SQLite database and the blob directory.
#[derive(Clone, Debug)]
pub struct SqliteMedia {
    db: SqliteStore,
    dir: PathBuf,
}

impl SqliteMedia {
    /// Media in `db`'s `media` table, blobs under `dir` (created if needed).
    pub fn new(db: SqliteStore, dir: PathBuf) -> StoreResult<SqliteMedia> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", dir.display())))?;
        Ok(SqliteMedia { db, dir })
    }

    /// The file of a blob; `None` for a key that is not a plain file name (ids come
    /// from URLs: `..` or `/` never reach the file system).
    fn blob_path(&self, id: &str, part: BlobPart) -> Option<PathBuf> {
        let key = part.key(id);
        let plain = !key.is_empty()
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        plain.then(|| self.dir.join(key))
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn u32_of(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

fn record(r: &Row<'_>) -> rusqlite::Result<(MediaRecord, String)> {
    let thumb_mime: Option<String> = r.get(11)?;
    let thumbnail = match thumb_mime {
        Some(mime) => Some(ThumbInfo {
            mime,
            size: u64_of(r.get::<_, Option<i64>>(12)?.unwrap_or(0)),
            width: u32_of(r.get(13)?).unwrap_or(0),
            height: u32_of(r.get(14)?).unwrap_or(0),
        }),
        None => None,
    };
    let state: String = r.get(7)?;
    Ok((
        MediaRecord {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            device_id: r.get(2)?,
            job_id: r.get(3)?,
            name: r.get(4)?,
            mime: r.get(5)?,
            size: u64_of(r.get(6)?),
            state: MediaState::Processing,
            sha256: r.get(8)?,
            width: u32_of(r.get(9)?),
            height: u32_of(r.get(10)?),
            thumbnail,
            error: r.get(15)?,
            created_at: r.get(16)?,
            updated_at: r.get(17)?,
        },
        state,
    ))
}

/// Syncs a directory, so a rename into it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A file's bytes as a stream of chunks.
fn file_stream(file: tokio::fs::File) -> BlobStream {
    Box::pin(futures_util::stream::unfold(
        Some(file),
        |file| async move {
            let mut file = file?;
            let mut buf = BytesMut::with_capacity(CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(file))),
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

#[async_trait]
impl MediaStore for SqliteMedia {
    async fn insert_media(&self, m: MediaRecord) -> StoreResult<()> {
        self.db
            .write(move |c| {
                let t = m.thumbnail.as_ref();
                c.prepare_cached(INSERT)
                    .and_then(|mut st| {
                        st.execute(params![
                            m.id,
                            m.tenant_id,
                            m.device_id,
                            m.job_id,
                            m.name,
                            m.mime,
                            i64::try_from(m.size).unwrap_or(i64::MAX),
                            m.state.as_str(),
                            m.sha256,
                            m.width,
                            m.height,
                            t.map(|t| t.mime.clone()),
                            t.map(|t| i64::try_from(t.size).unwrap_or(i64::MAX)),
                            t.map(|t| t.width),
                            t.map(|t| t.height),
                            m.error,
                            m.created_at,
                            m.updated_at,
                        ])
                    })
                    .map_err(conflict_or_unavailable)?;
                Ok(())
            })
            .await
    }

    async fn get_media(&self, id: &str) -> StoreResult<Option<MediaRecord>> {
        let id = id.to_owned();
        self.db
            .read(move |c| {
                let found = c
                    .prepare_cached(GET)
                    .and_then(|mut st| st.query_row([&id], record).optional())
                    .map_err(unavailable)?;
                found
                    .map(|(mut m, state)| {
                        m.state = MediaState::parse(&state).ok_or_else(|| {
                            StoreError::Corrupt(format!("media {id}: state {state:?}"))
                        })?;
                        Ok(m)
                    })
                    .transpose()
            })
            .await
    }

    async fn finish_media(&self, id: &str, outcome: MediaOutcome, now: i64) -> StoreResult<bool> {
        let id = id.to_owned();
        self.db
            .write(move |c| {
                let n = match outcome {
                    MediaOutcome::Ready {
                        sha256,
                        dimensions,
                        thumbnail,
                    } => {
                        let t = thumbnail.as_ref();
                        c.prepare_cached(READY).and_then(|mut st| {
                            st.execute(params![
                                id,
                                sha256,
                                dimensions.map(|d| d.0),
                                dimensions.map(|d| d.1),
                                t.map(|t| t.mime.clone()),
                                t.map(|t| i64::try_from(t.size).unwrap_or(i64::MAX)),
                                t.map(|t| t.width),
                                t.map(|t| t.height),
                                now,
                            ])
                        })
                    }
                    MediaOutcome::Failed(error) => c
                        .prepare_cached(FAILED)
                        .and_then(|mut st| st.execute(params![id, error, now])),
                }
                .map_err(unavailable)?;
                Ok(n > 0)
            })
            .await
    }

    async fn delete_media(&self, id: &str) -> StoreResult<bool> {
        let key = id.to_owned();
        let existed = self
            .db
            .write(move |c| {
                c.execute(DELETE, [&key])
                    .map(|n| n > 0)
                    .map_err(unavailable)
            })
            .await?;
        for part in [BlobPart::Original, BlobPart::Thumbnail] {
            if let Some(path) = self.blob_path(id, part) {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Unavailable(format!("removing a blob: {e}"))),
                }
            }
        }
        Ok(existed)
    }

    async fn put_blob(&self, id: &str, part: BlobPart, path: PathBuf) -> StoreResult<u64> {
        let target = self
            .blob_path(id, part)
            .ok_or_else(|| StoreError::Unavailable(format!("not a blob key: {id:?}")))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            if std::fs::rename(&path, &target).is_err() {
                // Another file system: copy, then drop the spool file.
                std::fs::copy(&path, &target)?;
                std::fs::File::open(&target)?.sync_all()?;
                std::fs::remove_file(&path)?;
            }
            sync_dir(&dir)?;
            Ok::<u64, std::io::Error>(len)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("blob task failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("storing a blob: {e}")))
    }

    async fn open_blob(&self, id: &str, part: BlobPart) -> StoreResult<Option<Blob>> {
        let Some(path) = self.blob_path(id, part) else {
            return Ok(None);
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Unavailable(format!("opening a blob: {e}"))),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading a blob's length: {e}")))?
            .len();
        Ok(Some(Blob {
            len,
            stream: file_stream(file),
        }))
    }
}
