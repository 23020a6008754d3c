//! Bulk sends and job control: `POST /v1/messages/bulk`, `GET|DELETE /v1/jobs/{id}`,
//! `POST /v1/jobs/{id}/retry`.
//!
//! A bulk call is bounded in bytes (`max_bulk_bytes`) and validated whole (errors name
//! the offending index), then every job is stored in one transaction before the 202
//! answer, so an accepted job survives a crash. A campaign's body is stored once and
//! every job points at it: 100,000 recipients cost 100,000 small job rows, not 100,000
//! copies of the body. Ranks are fair across tenants (`actors::jobs::FairRanker`). The
//! dispatcher (see `actors::dispatcher`) is woken and drains them.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{delete, get, post, web, HttpResponse};
use actors::clock::now_ms;
use actors::jobs::{rank, FairRanker, JobBody, JobKind, JobRecord, JobState, SharedBody};
use protocol::bulk::{BulkBody, BulkRequest, ParsedBulk};
use protocol::{ErrorCode, Priority};
use serde::Serialize;

use super::body::{ApiJson, BulkLimit};
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// `POST /v1/messages/bulk` answer: one job id per message, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkAccepted {
    /// Job ids.
    pub job_ids: Vec<String>,
}

/// Progress of a background job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobProgress {
    /// Items done.
    pub done: u64,
    /// Items in all.
    pub total: u64,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Job id.
    pub job_id: String,
    /// `message` or `contacts`.
    pub kind: &'static str,
    /// `waiting`, `delayed`, `active`, `completed`, `failed` or `cancelled`.
    #[schema(pattern = "^(waiting|delayed|active|completed|failed|cancelled)$")]
    pub state: &'static str,
    /// Send attempts made (rate-limit waits not counted).
    pub attempts: u32,
    /// Lane.
    pub priority: Priority,
    /// Sending (or syncing) device; absent for tenant-wide jobs (group syncs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Recipient address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Recipient group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The message created, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Why it failed (`code: detail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Requested schedule (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<i64>,
    /// Not run before this time (Unix ms).
    pub not_before: i64,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
    /// Contact and group syncs, notifications: how far along.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        JobView {
            kind: j.kind.as_str(),
            state: j.state.as_str(),
            attempts: j.attempts,
            priority: j.lane,
            device: (!j.device_id.is_empty()).then_some(j.device_id),
            to: j.target_to,
            group: j.target_group,
            message_id: j.message_id,
            error: j.error,
            send_at: j.send_at,
            not_before: j.not_before,
            created_at: j.created_at,
            updated_at: j.updated_at,
            progress: (j.kind != JobKind::Message).then_some(JobProgress {
                done: j.progress_done,
                total: j.progress_total,
            }),
            job_id: j.id,
        }
    }
}

/// A fresh job id (also the send's client request id, so at most 64 characters).
pub fn new_job_id() -> String {
    format!("j_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A new job in `waiting` (or `delayed` when `send_at` is in the future); its rank is
/// its due rank until [`fair_ranks`] spaces it behind its tenant's queue.
#[allow(clippy::too_many_arguments)]
pub fn new_job(
    state: &AppState,
    kind: JobKind,
    tenant_id: &str,
    device_id: &str,
    lane: Priority,
    to: Option<String>,
    group: Option<String>,
    body: JobBody,
    send_at: Option<i64>,
    now: i64,
) -> JobRecord {
    let due = send_at.unwrap_or(now).max(now);
    JobRecord {
        id: new_job_id(),
        kind,
        tenant_id: tenant_id.to_owned(),
        device_id: device_id.to_owned(),
        lane,
        state: if due > now {
            JobState::Delayed
        } else {
            JobState::Waiting
        },
        attempts: 0,
        target_to: to,
        target_group: group,
        body,
        message_id: None,
        error: None,
        send_at,
        not_before: due,
        rank: rank(due, lane, state.env.settings.queue_aging),
        created_at: now,
        updated_at: now,
        progress_done: 0,
        progress_total: 0,
    }
}

/// Spaces new jobs behind their tenant's queue in each lane (see [`FairRanker`]).
async fn fair_ranks(
    state: &AppState,
    tenant_id: &str,
    jobs: &mut [JobRecord],
) -> Result<(), ApiError> {
    let spacing = state.env.settings.queue_fair_spacing_ms;
    for lane in Priority::ALL {
        if !jobs.iter().any(|j| j.lane == lane) {
            continue;
        }
        let tail = state.env.store.queue_tail(tenant_id, lane).await?;
        let mut ranker = FairRanker::new(tail, spacing);
        for job in jobs.iter_mut().filter(|j| j.lane == lane) {
            job.rank = ranker.next(job.rank);
        }
    }
    Ok(())
}

/// `POST /v1/messages/bulk`: queues messages; answers 202 with one job id per message
/// once every job is durable.
#[utoipa::path(post, path = "/v1/messages/bulk", tag = "jobs",
    security(("tenant_key" = [])),
    request_body(content = BulkRequest, description = "at most `max_bulk_bytes` (16 MiB by default), 10,000 messages or 100,000 campaign recipients; each body at most `max_message_bytes` (64 KiB)"),
    responses(
        (status = 202, body = BulkAccepted, description = "every job is durable and queued",
         links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_ids/0")),
                description = "the first job's state (each id of `job_ids` the same way)")),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/job_ids/0")),
                description = "cancel the first job while it waits")),
            ("RetryJob" = (operation_id = "retry_job", parameters(("id" = "$response.body#/job_ids/0")),
                description = "retry the first job once it failed")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, or an entry is invalid (the message names its index)"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = "`forbidden`: a sending device of another tenant"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such sending device"),
        (status = 413, body = ErrorBody, description = "`too_large`: over `max_bulk_bytes` (16 MiB by default), 10,000 messages, 100,000 recipients, or a body over `max_message_bytes`"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/messages/bulk")]
pub async fn bulk_send(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<BulkRequest, BulkLimit>,
) -> Result<HttpResponse, ApiError> {
    let ParsedBulk {
        messages: parsed,
        shared,
    } = body
        .into_inner()
        .parse(state.config.max_message_bytes)
        .map_err(|e| ApiError::new(e.code, e.message))?;
    // Each distinct device is checked once: exists, and belongs to the caller.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        owner.entry(p.device.as_str()).or_insert(i);
    }
    for (device_id, first) in owner {
        let device = state.env.directory.device(device_id).await?;
        match device {
            None => {
                return Err(ApiError::not_found(format!(
                    "messages[{first}].device: no device {device_id}"
                )))
            }
            Some(d) if d.tenant_id != tenant.0 => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("messages[{first}].device: {device_id} belongs to another tenant"),
                ))
            }
            Some(_) => {}
        }
    }
    let now = now_ms();
    // A campaign's body is stored once; its jobs point at it.
    let shared = shared.map(|body| SharedBody {
        id: format!("b_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant_id: tenant.0.clone(),
        body: Arc::from(body),
    });
    let mut jobs: Vec<JobRecord> = parsed
        .into_iter()
        .map(|p| {
            let body = match (p.body, &shared) {
                (BulkBody::Own(b), _) => JobBody::Inline(b),
                (BulkBody::Shared, Some(s)) => JobBody::Shared(s.id.clone()),
                (BulkBody::Shared, None) => JobBody::Inline(String::new()),
            };
            new_job(
                &state,
                JobKind::Message,
                &tenant.0,
                &p.device,
                p.priority,
                p.to,
                p.group,
                body,
                p.send_at,
                now,
            )
        })
        .collect();
    let bodies: Vec<SharedBody> = shared.into_iter().collect();
    fair_ranks(&state, &tenant.0, &mut jobs).await?;
    let job_ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    state.env.store.insert_jobs(bodies, jobs).await?;
    state.env.dispatcher.wake();
    Ok(HttpResponse::Accepted().json(BulkAccepted { job_ids }))
}

/// Loads a job of the caller's tenant: 404 if missing, 403 if another tenant's.
async fn owned_job(state: &AppState, tenant: &TenantAuth, id: &str) -> Result<JobRecord, ApiError> {
    let job = state
        .env
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    if job.tenant_id != tenant.0 {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this job belongs to another tenant",
        ));
    }
    Ok(job)
}

/// `GET /v1/jobs/{id}`: a job's state, attempts, and its `message_id` or `error`.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView, description = "the job"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_JOB),
        (status = 404, body = ErrorBody, description = doc::NO_JOB),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/jobs/{id}")]
pub async fn get_job(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = owned_job(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

/// `DELETE /v1/jobs/{id}`: cancels a job not yet sent (`waiting` or `delayed`); 409
/// otherwise.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView, description = "the job, now `cancelled`"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_JOB),
        (status = 404, body = ErrorBody, description = doc::NO_JOB),
        (status = 409, body = ErrorBody, description = "`conflict`: the job is neither `waiting` nor `delayed`"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[delete("/v1/jobs/{id}")]
pub async fn cancel_job(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = owned_job(&state, &tenant, &id).await?;
    if !state.env.store.cancel_job(&job.id, now_ms()).await? {
        let now = state.env.store.get_job(&job.id).await?.unwrap_or(job);
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "job is {}; only waiting or delayed jobs can be cancelled",
                now.state.as_str()
            ),
        ));
    }
    let job = owned_job(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

/// `POST /v1/jobs/{id}/retry`: puts a failed job back in the queue (attempts reset);
/// 409 otherwise.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView, description = "the job, queued again"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_JOB),
        (status = 404, body = ErrorBody, description = doc::NO_JOB),
        (status = 409, body = ErrorBody, description = "`conflict`: the job is not `failed`"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/jobs/{id}/retry")]
pub async fn retry_job(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = owned_job(&state, &tenant, &id).await?;
    let now = now_ms();
    let r = rank(now, job.lane, state.env.settings.queue_aging);
    if !state.env.store.retry_job(&job.id, now, r).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "job is {}; only failed jobs can be retried",
                job.state.as_str()
            ),
        ));
    }
    state.env.dispatcher.wake();
    let job = owned_job(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

/// Stores a contact-sync job for `device` (progress total = the number of contacts)
/// and wakes the dispatcher; returns the job id.
pub async fn enqueue_contacts(
    state: &AppState,
    device: &actors::store::DeviceRecord,
    contacts: &[protocol::rest::Contact],
) -> Result<String, ApiError> {
    let body = encode(contacts, "contacts")?;
    let total = contacts.len() as u64;
    let job = Background {
        kind: JobKind::Contacts,
        tenant_id: &device.tenant_id,
        device_id: &device.id,
        lane: Priority::Normal,
    };
    enqueue_background(state, job, body, total).await
}

/// A background job to queue: what it does, for whom, in which lane.
pub struct Background<'a> {
    /// Job kind.
    pub kind: JobKind,
    /// Owning tenant.
    pub tenant_id: &'a str,
    /// Its device (empty for a tenant-wide job such as a group sync).
    pub device_id: &'a str,
    /// Lane.
    pub lane: Priority,
}

/// JSON of a job's payload (an encoding failure is an internal error, logged).
pub fn encode<T: Serialize + ?Sized>(payload: &T, what: &str) -> Result<String, ApiError> {
    serde_json::to_string(payload).map_err(|e| {
        tracing::error!(error = %e, "encoding {what}");
        ApiError::new(ErrorCode::Internal, format!("could not queue the {what}"))
    })
}

/// Stores one background job with its payload and progress total, ranked fairly
/// behind its tenant's queue, and wakes the dispatcher; returns the job id.
pub async fn enqueue_background(
    state: &AppState,
    job: Background<'_>,
    body: String,
    total: u64,
) -> Result<String, ApiError> {
    let mut record = new_job(
        state,
        job.kind,
        job.tenant_id,
        job.device_id,
        job.lane,
        None,
        None,
        JobBody::Inline(body),
        None,
        now_ms(),
    );
    record.progress_total = total;
    let id = record.id.clone();
    let mut jobs = vec![record];
    fair_ranks(state, job.tenant_id, &mut jobs).await?;
    state.env.store.insert_jobs(Vec::new(), jobs).await?;
    state.env.dispatcher.wake();
    Ok(id)
}
