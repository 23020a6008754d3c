//! The media store contract (`switchboard::media::MediaStore`), on both backends:
//! metadata (insert, read, outcomes, delete) and blobs (write from a spool file, read
//! back streamed, replace, delete): files under the data directory on SQLite, GridFS
//! on MongoDB.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::store::StoreError;
use futures_util::StreamExt;
use switchboard::media::{BlobPart, MediaOutcome, MediaRecord, MediaState, MediaStore, ThumbInfo};

/// A media store under test and a directory for spool files.
pub struct MediaBackend {
    pub media: Arc<dyn MediaStore>,
    pub dir: tempfile::TempDir,
    /// Where the SQLite store keeps blobs (`None` on MongoDB).
    pub blob_dir: Option<PathBuf>,
    _backend: Option<crate::harness::Backend>,
}

impl MediaBackend {
    async fn finish(self) {
        if let Some(b) = self._backend {
            b.finish().await;
        }
    }
}

/// A fresh SQLite media store (database and blob directory in a temporary directory).
pub fn sqlite() -> MediaBackend {
    let dir = tempfile::tempdir().unwrap();
    let db = switchboard::store::sqlite::SqliteStore::open(&dir.path().join("db.sqlite"), false)
        .unwrap();
    let blob_dir = dir.path().join("media");
    let media = switchboard::store::sqlite::SqliteMedia::new(db, blob_dir.clone()).unwrap();
    MediaBackend {
        media: Arc::new(media),
        dir,
        blob_dir: Some(blob_dir),
        _backend: None,
    }
}

/// A fresh MongoDB media store (its own database).
pub async fn mongodb() -> MediaBackend {
    let (store, backend) = crate::harness::mongodb_store().await;
    MediaBackend {
        media: Arc::new(switchboard::store::mongo::MongoMedia::new(&store)),
        dir: tempfile::tempdir().unwrap(),
        blob_dir: None,
        _backend: Some(backend),
    }
}

fn record(id: &str) -> MediaRecord {
    MediaRecord {
        id: id.into(),
        tenant_id: "t1".into(),
        device_id: "d1".into(),
        job_id: "j1".into(),
        name: Some("photo.png".into()),
        mime: "image/png".into(),
        size: 1234,
        state: MediaState::Processing,
        sha256: None,
        width: None,
        height: None,
        thumbnail: None,
        error: None,
        created_at: 1_000,
        updated_at: 1_000,
    }
}

/// `n` bytes of a repeatable pseudo-random pattern.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn spool(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

async fn read_all(media: &dyn MediaStore, id: &str, part: BlobPart) -> Option<(u64, Vec<u8>)> {
    let blob = media.open_blob(id, part).await.unwrap()?;
    let mut out = Vec::new();
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some((blob.len, out))
}

pub async fn check_media_metadata(b: &MediaBackend) {
    let media = b.media.as_ref();
    assert_eq!(media.get_media("md_1").await.unwrap(), None);
    media.insert_media(record("md_1")).await.unwrap();
    assert_eq!(media.get_media("md_1").await.unwrap(), Some(record("md_1")));
    let again = media.insert_media(record("md_1")).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    let thumb = ThumbInfo {
        mime: "image/jpeg".into(),
        size: 999,
        width: 256,
        height: 128,
    };
    let ready = MediaOutcome::Ready {
        sha256: "ab".repeat(32),
        dimensions: Some((600, 300)),
        thumbnail: Some(thumb.clone()),
    };
    assert!(media.finish_media("md_1", ready, 2_000).await.unwrap());
    let got = media.get_media("md_1").await.unwrap().unwrap();
    assert_eq!(got.state, MediaState::Ready);
    assert_eq!(got.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!((got.width, got.height), (Some(600), Some(300)));
    assert_eq!(got.thumbnail, Some(thumb));
    assert_eq!((got.created_at, got.updated_at), (1_000, 2_000));
    assert_eq!((got.size, got.mime.as_str()), (1234, "image/png"));

    // A later outcome replaces an earlier one (a retried job runs again).
    let failed = MediaOutcome::Failed("the image could not be decoded".into());
    assert!(media.finish_media("md_1", failed, 3_000).await.unwrap());
    let got = media.get_media("md_1").await.unwrap().unwrap();
    assert_eq!(got.state, MediaState::Failed);
    assert_eq!(got.error.as_deref(), Some("the image could not be decoded"));
    let ready = MediaOutcome::Ready {
        sha256: "cd".repeat(32),
        dimensions: None,
        thumbnail: None,
    };
    assert!(media.finish_media("md_1", ready, 4_000).await.unwrap());
    let got = media.get_media("md_1").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.error, got.thumbnail),
        (MediaState::Ready, None, None)
    );
    assert_eq!((got.width, got.height), (None, None));

    let nothing = MediaOutcome::Failed("x".into());
    assert!(!media.finish_media("md_nope", nothing, 1).await.unwrap());
    // A record without a name, in another tenant.
    let mut other = record("md_2");
    other.name = None;
    other.tenant_id = "t2".into();
    media.insert_media(other.clone()).await.unwrap();
    assert_eq!(media.get_media("md_2").await.unwrap(), Some(other));

    assert!(media.delete_media("md_1").await.unwrap());
    assert_eq!(media.get_media("md_1").await.unwrap(), None);
    assert!(!media.delete_media("md_1").await.unwrap());
    assert!(media.get_media("md_2").await.unwrap().is_some());
}

pub async fn check_media_blobs(b: &MediaBackend) {
    let media = b.media.as_ref();
    media.insert_media(record("md_b")).await.unwrap();
    assert!(read_all(media, "md_b", BlobPart::Original).await.is_none());
    // Several GridFS chunks (255 KiB) and read chunks (64 KiB), and an odd tail.
    let original = bytes(700_001, 1);
    let path = spool(b.dir.path(), "up_1", &original);
    let stored = media
        .put_blob("md_b", BlobPart::Original, path.clone())
        .await
        .unwrap();
    assert_eq!(stored, original.len() as u64);
    assert!(!path.exists(), "the spool file is consumed");
    let (len, got) = read_all(media, "md_b", BlobPart::Original).await.unwrap();
    assert_eq!(len, original.len() as u64);
    assert!(got == original, "the blob reads back as written");
    if let Some(dir) = &b.blob_dir {
        // The embedded store keeps it as a file of the data directory.
        assert_eq!(std::fs::read(dir.join("md_b")).unwrap(), original);
    }

    // The thumbnail is a blob of its own; storing it again replaces it.
    assert!(read_all(media, "md_b", BlobPart::Thumbnail).await.is_none());
    let first = bytes(5_000, 2);
    let p = spool(b.dir.path(), "th_1", &first);
    media
        .put_blob("md_b", BlobPart::Thumbnail, p)
        .await
        .unwrap();
    let second = bytes(3_000, 3);
    let p = spool(b.dir.path(), "th_2", &second);
    media
        .put_blob("md_b", BlobPart::Thumbnail, p)
        .await
        .unwrap();
    let (len, got) = read_all(media, "md_b", BlobPart::Thumbnail).await.unwrap();
    assert_eq!((len, got), (3_000, second));
    let (_, got) = read_all(media, "md_b", BlobPart::Original).await.unwrap();
    assert!(got == original, "the original is untouched");

    // An empty file is a blob too.
    let p = spool(b.dir.path(), "up_2", b"");
    media.put_blob("md_e", BlobPart::Original, p).await.unwrap();
    assert_eq!(
        read_all(media, "md_e", BlobPart::Original).await,
        Some((0, Vec::new()))
    );

    // Ids from URLs never reach outside the store.
    assert!(read_all(media, "../db.sqlite", BlobPart::Original)
        .await
        .is_none());
    assert!(read_all(media, "md_b/../md_b", BlobPart::Original)
        .await
        .is_none());

    // Deleting the record deletes its blobs.
    assert!(media.delete_media("md_b").await.unwrap());
    assert!(read_all(media, "md_b", BlobPart::Original).await.is_none());
    assert!(read_all(media, "md_b", BlobPart::Thumbnail).await.is_none());
    if let Some(dir) = &b.blob_dir {
        assert!(!dir.join("md_b").exists() && !dir.join("md_b.thumb").exists());
    }
}

/// Runs each media check once per backend.
macro_rules! media_contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::sqlite();
                    super::$check(&backend).await;
                    backend.finish().await;
                }
            )*
        }

        mod mongodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::mongodb().await;
                    super::$check(&backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

media_contract!(check_media_metadata, check_media_blobs);
