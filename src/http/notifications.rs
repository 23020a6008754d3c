//! `POST /v1/notifications`: a system notification to every device of a tenant (or a
//! list of addresses), as one background job with progress (`GET /v1/jobs/{id}`).
//!
//! A notification is delivered like any message: from the tenant's reserved `system`
//! device (address [`SYSTEM_ADDRESS`], which no device created over the API can have),
//! through that device's session, so it is durable, in every recipient's inbox and
//! `sync`, acknowledged by receipts, and paced by the budgets a send takes (the system
//! device's own, the tenant's and the server's). The recipients are fixed when the call
//! is accepted; an address with no device is skipped when its turn comes.

use actix_web::{post, web, HttpResponse};
use actors::clock::now_ms;
use actors::dispatcher::NotificationBody;
use actors::jobs::JobKind;
use actors::store::{DeviceRecord, StoreError};
use protocol::background::{
    check_notification, parse_lane, JobAccepted, NotificationRequest, MAX_NOTIFICATION_RECIPIENTS,
    SYSTEM_ADDRESS,
};
use protocol::ErrorCode;

use protocol::error::ErrorBody;

use super::body::{ApiJson, BulkLimit};
use super::jobs::{encode, enqueue_background, Background};
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// Devices read per store call when a notification goes to every device.
const DEVICE_PAGE: usize = 1000;

/// The tenant's reserved `system` device, created on first use.
pub async fn system_device(state: &AppState, tenant_id: &str) -> Result<DeviceRecord, ApiError> {
    let store = &state.env.store;
    if let Some(d) = store.device_by_address(tenant_id, SYSTEM_ADDRESS).await? {
        return Ok(d);
    }
    let device = DeviceRecord {
        id: format!("d_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant_id: tenant_id.to_owned(),
        address: SYSTEM_ADDRESS.to_owned(),
        name: Some("System notifications".to_owned()),
        created_at: now_ms(),
        last_seen: None,
    };
    match store.create_device(device.clone()).await {
        Ok(()) => Ok(device),
        // A concurrent call created it first.
        Err(StoreError::Conflict(_)) => store
            .device_by_address(tenant_id, SYSTEM_ADDRESS)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "system device not readable")),
        Err(e) => Err(e.into()),
    }
}

/// Every address of the tenant's devices but the system one, up to the recipient limit.
async fn every_address(state: &AppState, tenant_id: &str) -> Result<Vec<String>, ApiError> {
    let mut addresses = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .env
            .store
            .list_devices(tenant_id, after.as_deref(), DEVICE_PAGE)
            .await?;
        let last = page.last().map(|d| d.id.clone());
        addresses.extend(
            page.into_iter()
                .map(|d| d.address)
                .filter(|a| a != SYSTEM_ADDRESS),
        );
        if addresses.len() > MAX_NOTIFICATION_RECIPIENTS {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "the tenant has more than {MAX_NOTIFICATION_RECIPIENTS} devices: \
                     send the notification in `to` lists"
                ),
            ));
        }
        match last {
            Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
            _ => break,
        }
    }
    addresses.sort();
    Ok(addresses)
}

/// `POST /v1/notifications`: queues a system notification (202 `{"job_id","total"}`).
#[utoipa::path(post, path = "/v1/notifications", tag = "jobs",
    security(("tenant_key" = [])),
    request_body(content = NotificationRequest, description = "at most `max_bulk_bytes` (16 MiB by default); `body` at most `max_message_bytes` (64 KiB); `to` at most 100,000 addresses"),
    responses(
        (status = 202, body = JobAccepted, description = "the job is durable and queued",
         links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")),
                description = "the notification's state and progress")),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/job_id")),
                description = "cancel it while it waits")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, a `body` that is not a JSON object, an address that is not E.164 (named by index) or an unknown `priority`"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 413, body = ErrorBody, description = "`too_large`: over `max_bulk_bytes` (16 MiB by default), a `body` over `max_message_bytes`, over 100,000 addresses, or a tenant of over 100,000 devices without `to`"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/notifications")]
pub async fn notify(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<NotificationRequest, BulkLimit>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let listed = check_notification(&req, state.config.max_message_bytes)
        .map_err(|e| ApiError::new(e.code, e.message))?;
    let lane = parse_lane(req.priority.as_deref()).map_err(|e| ApiError::new(e.code, e.message))?;
    let to = match listed {
        Some(to) => to,
        None => every_address(&state, &tenant.0).await?,
    };
    let sender = system_device(&state, &tenant.0).await?;
    let total = to.len() as u64;
    let payload = NotificationBody {
        body: req.body.get().to_owned(),
        to,
    };
    let job = Background {
        kind: JobKind::Notification,
        tenant_id: &tenant.0,
        device_id: &sender.id,
        lane,
    };
    let job_id = enqueue_background(&state, job, encode(&payload, "notification")?, total).await?;
    Ok(HttpResponse::Accepted().json(JobAccepted { job_id, total }))
}
