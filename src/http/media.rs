//! Media routes: `POST /v1/media` (upload), `GET /v1/media/{id}` (the file),
//! `GET /v1/media/{id}/meta` (metadata and processing state),
//! `GET /v1/media/{id}/thumbnail`. The design is in [`crate::media`].
//!
//! Every route takes the tenant's API key or a device token of the tenant
//! ([`MediaAuth`]); a file of another tenant answers 404, as a missing one does.

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use actors::clock::now_ms;
use actors::jobs::{FairRanker, JobBody, JobKind, JobRecord, JobState};
use protocol::error::ErrorBody;
use protocol::{ErrorCode, Priority};
use serde::{Deserialize, Serialize};

use super::jobs::new_job;
use crate::error::ApiError;
use crate::media::auth::MediaAuth;
use crate::media::{detect, process, spool, BlobPart, Media, MediaRecord, MediaState, ThumbInfo};
use crate::state::AppState;

/// Query of `POST /v1/media`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The uploading device (required with the API key; with a device token it is the
    /// token's device, and another id is refused).
    pub device_id: Option<String>,
    /// The file's name, kept for clients; its extension must agree with the bytes.
    pub name: Option<String>,
    /// Lane of the processing job (default `normal`).
    pub priority: Option<Priority>,
}

/// `202` of `POST /v1/media`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MediaAccepted {
    /// The file's id: what a message body's `"media"` names.
    pub media_id: String,
    /// Its processing job (`GET /v1/jobs/{id}`).
    pub job_id: String,
    /// Its type, from its bytes.
    pub mime: String,
    /// Bytes received.
    pub size: u64,
    /// `processing`.
    pub state: &'static str,
}

/// A thumbnail as `GET /v1/media/{id}/meta` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ThumbView {
    /// `image/jpeg`.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// `GET /v1/media/{id}/meta`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MediaView {
    /// Media id.
    pub media_id: String,
    /// Uploading device.
    pub device_id: String,
    /// Processing job.
    pub job_id: String,
    /// `processing`, `ready`, `failed` or `cancelled` (its job was cancelled before it
    /// ran).
    pub state: &'static str,
    /// Type, from the bytes.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// The name given at upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 (hex), once ready; the file's `ETag`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Images, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Images, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Images, once ready (`GET /v1/media/{id}/thumbnail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<ThumbView>,
    /// Why processing failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Upload time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

fn thumb_view(t: ThumbInfo) -> ThumbView {
    ThumbView {
        mime: t.mime,
        size: t.size,
        width: t.width,
        height: t.height,
    }
}

/// The state shown: the record's, unless its job says more (failed after its last
/// attempt without a verdict on the file, cancelled before it ran, or retried after a
/// failure and running again).
fn shown_state(m: &MediaRecord, job: Option<&JobRecord>) -> (&'static str, Option<String>) {
    if m.state == MediaState::Ready {
        return ("ready", None);
    }
    match job.map(|j| j.state) {
        Some(JobState::Waiting | JobState::Delayed | JobState::Active) => ("processing", None),
        Some(JobState::Cancelled) => ("cancelled", None),
        Some(JobState::Failed) if m.state == MediaState::Processing => {
            ("failed", job.and_then(|j| j.error.clone()))
        }
        Some(JobState::Failed | JobState::Completed) | None => {
            if m.state == MediaState::Processing && job.is_none() {
                ("failed", Some("its processing job is gone".into()))
            } else {
                (m.state.as_str(), m.error.clone())
            }
        }
    }
}

/// A file of the caller's tenant; 404 for a missing one and for another tenant's.
async fn owned(media: &Media, auth: &MediaAuth, id: &str) -> Result<MediaRecord, ApiError> {
    match media.store.get_media(id).await? {
        Some(m) if m.tenant_id == auth.tenant_id => Ok(m),
        _ => Err(ApiError::not_found(format!(
            "no media {}",
            protocol::validate::quoted(id)
        ))),
    }
}

/// The uploading device: the token's, or `device_id` of the caller's tenant.
async fn uploader(
    state: &AppState,
    auth: &MediaAuth,
    query: &UploadQuery,
) -> Result<String, ApiError> {
    if let Some(own) = &auth.device {
        return match &query.device_id {
            Some(other) if other != own => Err(ApiError::new(
                ErrorCode::Forbidden,
                "a device token uploads for its own device only",
            )),
            _ => Ok(own.clone()),
        };
    }
    let id = query.device_id.as_deref().ok_or_else(|| {
        ApiError::bad_request("`device_id` is required when uploading with the API key")
    })?;
    match state.env.directory.device(id).await? {
        Some(d) if d.tenant_id == auth.tenant_id => Ok(d.id.clone()),
        _ => Err(ApiError::not_found(format!(
            "no device {} in this tenant",
            protocol::validate::quoted(id)
        ))),
    }
}

/// The media processing job of `media_id`, ranked fairly behind the tenant's queue.
async fn media_job(
    state: &AppState,
    tenant_id: &str,
    device_id: &str,
    media_id: &str,
    lane: Priority,
) -> Result<JobRecord, ApiError> {
    let mut job = new_job(
        state,
        JobKind::Media,
        tenant_id,
        device_id,
        lane,
        None,
        None,
        JobBody::Inline(media_id.to_owned()),
        None,
        now_ms(),
    );
    job.progress_total = process::STEPS;
    let tail = state.env.store.queue_tail(tenant_id, lane).await?;
    job.rank = FairRanker::new(tail, state.env.settings.queue_fair_spacing_ms).next(job.rank);
    Ok(job)
}

/// `POST /v1/media?device_id=&name=&priority=`: uploads a file (the raw request body,
/// at most `max_media_bytes`), stores it and queues its processing job; 202.
#[utoipa::path(post, path = "/v1/media", tag = "media", operation_id = "upload_media",
    security(("tenant_key" = [])),
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the file's bytes, at most `max_media_bytes` (16 MiB by default); its type is \
        taken from its bytes: JPEG, PNG, GIF, WebP, PDF, MP4, M4A, WebM, MP3 or Ogg. The bearer is \
        the tenant's API key (with `device_id`) or a device token of the tenant"),
    responses(
        (status = 202, body = MediaAccepted, description = "stored; processing queued",
         links(
            ("MediaMeta" = (operation_id = "get_media_meta", parameters(("id" = "$response.body#/media_id")),
                description = "the file's metadata and processing state")),
            ("Media" = (operation_id = "get_media", parameters(("id" = "$response.body#/media_id")),
                description = "the file, once processed")),
            ("MediaThumbnail" = (operation_id = "get_media_thumbnail", parameters(("id" = "$response.body#/media_id")),
                description = "an image's thumbnail, once processed")),
            ("ProcessingJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")),
                description = "the processing job, with its progress")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: an empty body, no `device_id` with the API key, or a bad query parameter"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no API key or device token, or not a valid one"),
        (status = 403, body = ErrorBody, description = "`forbidden`: a device token naming another `device_id`"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such device in the tenant"),
        (status = 413, body = ErrorBody, description = "`too_large`: over `max_media_bytes` (refused as soon as it passes it)"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the bytes are of no accepted type, or of another than the name's extension or `Content-Type` says"),
        (status = 500, body = ErrorBody, description = "`internal`: an unexpected fault"),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing; retry later")))]
#[post("/v1/media")]
pub async fn upload(
    req: HttpRequest,
    auth: MediaAuth,
    state: web::Data<AppState>,
    query: web::Query<UploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let device_id = uploader(&state, &auth, &query).await?;
    let media = &state.media;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut spooled = spool::spool(
        payload.into_inner(),
        &media.spool_dir,
        media.max_bytes,
        declared,
    )
    .await?;
    if spooled.size == 0 {
        return Err(ApiError::bad_request("the file is empty"));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mime = detect::check(&spooled.head, query.name.as_deref(), content_type)?;
    let id = crate::media::new_media_id();
    let lane = query.priority.unwrap_or(Priority::Normal);
    let job = media_job(&state, &auth.tenant_id, &device_id, &id, lane).await?;
    let path = spooled
        .take_path()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "upload spool lost"))?;
    let size = spooled.size;
    if let Err(e) = media
        .store
        .put_blob(&id, BlobPart::Original, path.clone())
        .await
    {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    let now = now_ms();
    let record = MediaRecord {
        id: id.clone(),
        tenant_id: auth.tenant_id.clone(),
        device_id,
        job_id: job.id.clone(),
        name: query.name.clone(),
        mime: mime.to_owned(),
        size,
        state: MediaState::Processing,
        sha256: None,
        width: None,
        height: None,
        thumbnail: None,
        error: None,
        created_at: now,
        updated_at: now,
    };
    let job_id = job.id.clone();
    let stored = match media.store.insert_media(record).await {
        Ok(()) => state.env.store.insert_jobs(Vec::new(), vec![job]).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        // Best effort: nothing half-stored stays behind a refused upload.
        if let Err(e) = media.store.delete_media(&id).await {
            tracing::warn!(media_id = %id, error = %e, "could not remove a refused upload");
        }
        return Err(e.into());
    }
    state.env.dispatcher.wake();
    tracing::debug!(media_id = %id, %job_id, size, mime, "media uploaded");
    Ok(HttpResponse::Accepted().json(MediaAccepted {
        media_id: id,
        job_id,
        mime: mime.to_owned(),
        size,
        state: MediaState::Processing.as_str(),
    }))
}

/// `GET /v1/media/{id}/meta`: metadata and processing state.
#[utoipa::path(get, path = "/v1/media/{id}/meta", tag = "media", operation_id = "get_media_meta",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "media id")),
    responses(
        (status = 200, body = MediaView, description = "the file's metadata; `state` is `processing`, `ready`, `failed` or `cancelled`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no API key or device token, or not a valid one"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such media in the tenant (another tenant's answers the same)"),
        (status = 500, body = ErrorBody, description = "`internal`: stored data could not be read"),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing; retry later")))]
#[get("/v1/media/{id}/meta")]
pub async fn get_meta(
    auth: MediaAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let m = owned(&state.media, &auth, &id).await?;
    let job = match m.state {
        MediaState::Ready => None,
        _ => state.env.store.get_job(&m.job_id).await?,
    };
    let (shown, error) = shown_state(&m, job.as_ref());
    Ok(HttpResponse::Ok().json(MediaView {
        state: shown,
        error,
        media_id: m.id,
        device_id: m.device_id,
        job_id: m.job_id,
        mime: m.mime,
        size: m.size,
        name: m.name,
        sha256: m.sha256,
        width: m.width,
        height: m.height,
        thumbnail: m.thumbnail.map(thumb_view),
        created_at: m.created_at,
        updated_at: m.updated_at,
    }))
}

/// 409 for a file that is not ready.
fn not_ready(m: &MediaRecord) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "media {} is {}; see GET /v1/media/{{id}}/meta",
            m.id,
            m.state.as_str()
        ),
    )
}

/// Streams a blob with its type, length and entity tag; 304 when the client has it.
async fn serve(
    req: &HttpRequest,
    media: &Media,
    m: &MediaRecord,
    part: BlobPart,
    mime: &str,
    etag: String,
) -> Result<HttpResponse, ApiError> {
    let etag = format!("\"{etag}\"");
    let cached = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if cached {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let blob = media.store.open_blob(&m.id, part).await?.ok_or_else(|| {
        tracing::error!(media_id = %m.id, ?part, "a ready file's blob is missing");
        ApiError::new(ErrorCode::Internal, "the stored file is missing")
    })?;
    Ok(HttpResponse::Ok()
        .content_type(mime)
        .insert_header((header::ETAG, etag))
        .insert_header((
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .no_chunking(blob.len)
        .streaming(blob.stream))
}

/// `GET /v1/media/{id}`: the file as uploaded, once processed (`ETag`: its SHA-256).
#[utoipa::path(get, path = "/v1/media/{id}", tag = "media", operation_id = "get_media",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "media id"),
           ("If-None-Match" = Option<String>, Header, description = "the `ETag` of a copy the client has")),
    responses(
        (status = 200, content_type = "*/*", body = Vec<u8>,
         description = "the file, with its type as `Content-Type`, `Content-Length` and `ETag` (the quoted SHA-256); streamed"),
        (status = 304, description = "`If-None-Match` names its `ETag`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no API key or device token, or not a valid one"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such media in the tenant (another tenant's answers the same)"),
        (status = 409, body = ErrorBody, description = "`conflict`: not processed yet, or processing failed"),
        (status = 500, body = ErrorBody, description = "`internal`: stored data could not be read"),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing; retry later")))]
#[get("/v1/media/{id}")]
pub async fn get_file(
    req: HttpRequest,
    auth: MediaAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let m = owned(&state.media, &auth, &id).await?;
    let Some(sha) = m.sha256.clone().filter(|_| m.state == MediaState::Ready) else {
        return Err(not_ready(&m));
    };
    serve(&req, &state.media, &m, BlobPart::Original, &m.mime, sha).await
}

/// `GET /v1/media/{id}/thumbnail`: an image's thumbnail (JPEG, at most 256 px a side).
#[utoipa::path(get, path = "/v1/media/{id}/thumbnail", tag = "media", operation_id = "get_media_thumbnail",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "media id"),
           ("If-None-Match" = Option<String>, Header, description = "the `ETag` of a copy the client has")),
    responses(
        (status = 200, content_type = "image/jpeg", body = Vec<u8>, description = "the thumbnail, with `Content-Length` and `ETag`"),
        (status = 304, description = "`If-None-Match` names its `ETag`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no API key or device token, or not a valid one"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such media in the tenant, or it is not an image (no thumbnail)"),
        (status = 409, body = ErrorBody, description = "`conflict`: not processed yet, or processing failed"),
        (status = 500, body = ErrorBody, description = "`internal`: stored data could not be read"),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing; retry later")))]
#[get("/v1/media/{id}/thumbnail")]
pub async fn get_thumbnail(
    req: HttpRequest,
    auth: MediaAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let m = owned(&state.media, &auth, &id).await?;
    let Some(sha) = m.sha256.clone().filter(|_| m.state == MediaState::Ready) else {
        return Err(not_ready(&m));
    };
    let Some(thumb) = m.thumbnail.clone() else {
        return Err(ApiError::not_found(format!(
            "media {} has no thumbnail (not an image)",
            m.id
        )));
    };
    serve(
        &req,
        &state.media,
        &m,
        BlobPart::Thumbnail,
        &thumb.mime,
        format!("{sha}.thumb"),
    )
    .await
}
