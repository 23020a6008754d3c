//! Media on MongoDB: metadata in the `media` collection, blobs stored the way GridFS
//! stores them, in two plain collections: `media_chunks` holds the bytes in chunks of
//! 255 KiB (`_id` `<key>#<n>`), `media_blobs` one document per blob (`_id` its key,
//! `md_…` or `md_….thumb`; its length and chunk count), written after every chunk, so
//! a blob is visible only once whole. Replacing a blob (a retried job's new
//! thumbnail) deletes the old one first. Every read and delete is by `_id` (a chunk,
//! or one blob's range of chunk ids), so no index beyond `_id` is needed.
//!
//! Why not the driver's GridFS bucket: on the test server (nx-27017) its first upload
//! fails. The driver creates the bucket's `<bucket>.files` collection with a `create`
//! command before it lists and creates the indexes, and nx-27017 cannot create a
//! collection whose name has a dot; it also answers a delete of a missing GridFS file
//! with an error the driver cannot read. These two collections work on both.

use std::path::PathBuf;

use actors::store::{StoreError, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use mongodb::Collection;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{map_err, MongoStore};
use crate::media::{
    Blob, BlobPart, BlobStream, MediaOutcome, MediaRecord, MediaState, MediaStore, ThumbInfo,
};

/// The metadata collection.
pub const MEDIA: &str = "media";
/// One document per blob: its length and number of chunks.
pub const BLOBS: &str = "media_blobs";
/// The blobs' bytes, in chunks of [`CHUNK_BYTES`].
pub const CHUNKS: &str = "media_chunks";
/// Bytes per chunk (GridFS's default).
const CHUNK_BYTES: usize = 255 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ThumbDoc {
    mime: String,
    size: i64,
    width: i64,
    height: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MediaDoc {
    #[serde(rename = "_id")]
    id: String,
    tenant_id: String,
    device_id: String,
    job_id: String,
    name: Option<String>,
    mime: String,
    size: i64,
    state: String,
    sha256: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    thumb: Option<ThumbDoc>,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn thumb_doc(t: &ThumbInfo) -> ThumbDoc {
    ThumbDoc {
        mime: t.mime.clone(),
        size: i64_of(t.size),
        width: i64::from(t.width),
        height: i64::from(t.height),
    }
}

impl MediaDoc {
    fn from_record(m: MediaRecord) -> MediaDoc {
        MediaDoc {
            thumb: m.thumbnail.as_ref().map(thumb_doc),
            id: m.id,
            tenant_id: m.tenant_id,
            device_id: m.device_id,
            job_id: m.job_id,
            name: m.name,
            mime: m.mime,
            size: i64_of(m.size),
            state: m.state.as_str().to_owned(),
            sha256: m.sha256,
            width: m.width.map(i64::from),
            height: m.height.map(i64::from),
            error: m.error,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }

    fn into_record(self) -> StoreResult<MediaRecord> {
        let state = MediaState::parse(&self.state).ok_or_else(|| {
            StoreError::Corrupt(format!("media {}: state {:?}", self.id, self.state))
        })?;
        Ok(MediaRecord {
            id: self.id,
            tenant_id: self.tenant_id,
            device_id: self.device_id,
            job_id: self.job_id,
            name: self.name,
            mime: self.mime,
            size: u64::try_from(self.size).unwrap_or(0),
            state,
            sha256: self.sha256,
            width: self.width.map(u32_of),
            height: self.height.map(u32_of),
            thumbnail: self.thumb.map(|t| ThumbInfo {
                mime: t.mime,
                size: u64::try_from(t.size).unwrap_or(0),
                width: u32_of(t.width),
                height: u32_of(t.height),
            }),
            error: self.error,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// MongoDB's media: the `media` collection, and the blobs in the `media_blobs` /
/// `media_chunks` collections of the store's database.
#[derive(Clone, Debug)]
pub struct MongoMedia {
    media: Collection<MediaDoc>,
    blobs: Collection<Document>,
    chunks: Collection<Document>,
}

/// The `_id` of chunk `n` of blob `key`: zero-padded, so a blob's chunks are one
/// range of the `_id` index, from `key#` up to `key$` (`$` follows `#`).
fn chunk_id(key: &str, n: u64) -> String {
    format!("{key}#{n:08}")
}

fn chunk_range(key: &str) -> Document {
    doc! { "_id": { "$gte": format!("{key}#"), "$lt": format!("{key}$") } }
}

impl MongoMedia {
    /// Media in `store`'s database.
    pub fn new(store: &MongoStore) -> MongoMedia {
        let db = store.inner.db();
        MongoMedia {
            media: db.collection(MEDIA),
            blobs: db.collection(BLOBS),
            chunks: db.collection(CHUNKS),
        }
    }

    /// Deletes a blob (its files document first, so it is never seen half gone),
    /// and every chunk under its key (also those of a write that died part way).
    async fn delete_blob(&self, key: &str) -> StoreResult<()> {
        self.blobs
            .delete_one(doc! { "_id": key })
            .await
            .map_err(map_err)?;
        self.chunks
            .delete_many(chunk_range(key))
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Reads chunk `n` of `key`.
    async fn chunk(&self, key: &str, n: u64) -> StoreResult<Vec<u8>> {
        let found = self
            .chunks
            .find_one(doc! { "_id": chunk_id(key, n) })
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::Corrupt(format!("blob {key}: chunk {n} missing")))?;
        match found.get("data") {
            Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
            _ => Err(StoreError::Corrupt(format!(
                "blob {key}: chunk {n} unreadable"
            ))),
        }
    }
}

fn io_unavailable(what: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("{what}: {e}"))
}

#[async_trait]
impl MediaStore for MongoMedia {
    async fn insert_media(&self, m: MediaRecord) -> StoreResult<()> {
        self.media
            .insert_one(MediaDoc::from_record(m))
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_media(&self, id: &str) -> StoreResult<Option<MediaRecord>> {
        self.media
            .find_one(doc! { "_id": id })
            .await
            .map_err(map_err)?
            .map(MediaDoc::into_record)
            .transpose()
    }

    async fn finish_media(&self, id: &str, outcome: MediaOutcome, now: i64) -> StoreResult<bool> {
        let set = match outcome {
            MediaOutcome::Ready {
                sha256,
                dimensions,
                thumbnail,
            } => {
                let thumb = match thumbnail.as_ref().map(thumb_doc) {
                    Some(t) => mongodb::bson::to_bson(&t)
                        .map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))?,
                    None => Bson::Null,
                };
                doc! {
                    "state": MediaState::Ready.as_str(),
                    "sha256": sha256,
                    "width": dimensions.map(|d| i64::from(d.0)),
                    "height": dimensions.map(|d| i64::from(d.1)),
                    "thumb": thumb,
                    "error": Bson::Null,
                    "updated_at": now,
                }
            }
            MediaOutcome::Failed(error) => doc! {
                "state": MediaState::Failed.as_str(),
                "error": error,
                "updated_at": now,
            },
        };
        let result = self
            .media
            .update_one(doc! { "_id": id }, doc! { "$set": set })
            .await
            .map_err(map_err)?;
        Ok(result.matched_count > 0)
    }

    async fn delete_media(&self, id: &str) -> StoreResult<bool> {
        // Blobs first: a record is never left pointing at half a deletion.
        for part in [BlobPart::Original, BlobPart::Thumbnail] {
            self.delete_blob(&part.key(id)).await?;
        }
        let deleted = self
            .media
            .delete_one(doc! { "_id": id })
            .await
            .map_err(map_err)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn put_blob(&self, id: &str, part: BlobPart, path: PathBuf) -> StoreResult<u64> {
        let key = part.key(id);
        self.delete_blob(&key).await?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(io_unavailable("opening a spool file"))?;
        let mut total = 0u64;
        let mut n = 0u64;
        loop {
            let mut buf = Vec::with_capacity(CHUNK_BYTES);
            let read = (&mut file)
                .take(CHUNK_BYTES as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(io_unavailable("reading a spool file"))?;
            if read == 0 {
                break;
            }
            total += read as u64;
            let chunk = doc! {
                "_id": chunk_id(&key, n),
                "files_id": &key,
                "n": i64_of(n),
                "data": Binary { subtype: BinarySubtype::Generic, bytes: buf },
            };
            self.chunks.insert_one(chunk).await.map_err(map_err)?;
            n += 1;
        }
        // Last: the blob exists once every chunk does.
        let blob = doc! {
            "_id": &key,
            "length": i64_of(total),
            "chunk_size": i64_of(CHUNK_BYTES as u64),
            "chunks": i64_of(n),
        };
        self.blobs.insert_one(blob).await.map_err(map_err)?;
        drop(file);
        let _ = tokio::fs::remove_file(&path).await;
        Ok(total)
    }

    async fn open_blob(&self, id: &str, part: BlobPart) -> StoreResult<Option<Blob>> {
        let key = part.key(id);
        let Some(blob) = self
            .blobs
            .find_one(doc! { "_id": &key })
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let field = |name: &str| {
            blob.get(name)
                .and_then(super::bson_i64)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("blob {key}: no {name}")))
        };
        let (len, count) = (field("length")?, field("chunks")?);
        let me = self.clone();
        let stream: BlobStream = Box::pin(futures_util::stream::unfold(
            (me, key, 0u64),
            move |(me, key, n)| async move {
                if n >= count {
                    return None;
                }
                match me.chunk(&key, n).await {
                    Ok(bytes) => Some((Ok(Bytes::from(bytes)), (me, key, n + 1))),
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), (me, key, count))),
                }
            },
        ));
        Ok(Some(Blob { len, stream }))
    }
}
