//! Devices, their tokens and their contacts.

use actix_web::{delete, get, post, put, web, HttpResponse};
use actors::cache::CacheKind;
use actors::clock::now_ms;
use actors::device::DeviceStatus;
use actors::store::DeviceRecord;
use credentials::DeviceClaims;
use protocol::rest::{
    Contacts, CreateDevice, CreateToken, Device, DeviceList, TokenCreated, Upserted,
    MAX_CONTACTS_PER_CALL,
};
use protocol::ErrorCode;
use serde::Deserialize;

use super::body::{ApiJson, ContactsLimit, OptionalJson};
use super::check_address;
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// Longest device token lifetime a caller may ask for.
const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// Loads a device of the caller's tenant: 404 if missing, 403 if another tenant's.
pub async fn owned_device(
    state: &AppState,
    tenant: &TenantAuth,
    id: &str,
) -> Result<DeviceRecord, ApiError> {
    let device = state
        .env
        .directory
        .device(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device {id}")))?;
    let device = (*device).clone();
    if device.tenant_id != tenant.0 {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this device belongs to another tenant",
        ));
    }
    Ok(device)
}

/// The API view of a device, with its presence: from its session when it runs here,
/// else from the status its session last published in the cache.
pub async fn device_view(state: &AppState, d: DeviceRecord) -> Device {
    let mut connected = false;
    let mut last_seen = d.last_seen;
    let live = state.env.directory.info(&d.id).await;
    match live {
        Some(info) => {
            connected = info.connections > 0;
            last_seen = info.last_seen.or(last_seen);
        }
        None => {
            let status = state
                .env
                .cache
                .get::<DeviceStatus>(CacheKind::DeviceStatus, &d.id)
                .await;
            if let Some(s) = status {
                connected = s.connected;
                last_seen = s.last_seen.or(last_seen);
            }
        }
    }
    Device {
        device_id: d.id,
        address: d.address,
        name: d.name,
        connected,
        last_seen,
        created_at: d.created_at,
    }
}

/// `POST /v1/devices`: registers a device (an address) in the caller's tenant.
#[utoipa::path(post, path = "/v1/devices", tag = "devices",
    security(("tenant_key" = [])),
    request_body(content = CreateDevice, description = "at most `max_request_bytes` (64 KiB by default)"),
    responses(
        (status = 201, body = Device, description = "the device",
         links(
            ("GetDevice" = (operation_id = "get_device", parameters(("id" = "$response.body#/device_id")))),
            ("DeleteDevice" = (operation_id = "delete_device", parameters(("id" = "$response.body#/device_id")))),
            ("CreateToken" = (operation_id = "create_token", parameters(("id" = "$response.body#/device_id")),
                description = "a device token for `GET /v1/ws?token=`")),
            ("SendMessage" = (operation_id = "send_message", parameters(("id" = "$response.body#/device_id")))),
            ("History" = (operation_id = "history", parameters(("id" = "$response.body#/device_id")))),
            ("PutContacts" = (operation_id = "put_contacts", parameters(("id" = "$response.body#/device_id")))),
            ("GetContacts" = (operation_id = "get_contacts", parameters(("id" = "$response.body#/device_id")))),
            ("MessageStats" = (operation_id = "message_stats", parameters(("device" = "$response.body#/device_id")))),
            ("DeviceOwner" = (operation_id = "device_owner", parameters(("id" = "$response.body#/device_id")),
                description = "which node runs its session (admin token)")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, `address` not E.164, or `name` over 200 characters"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 409, body = ErrorBody, description = "`conflict`: the address exists in this tenant"),
        (status = 413, body = ErrorBody, description = doc::TOO_LARGE),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/devices")]
pub async fn create_device(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<CreateDevice>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    check_address("address", &body.address)?;
    if body.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::bad_request(
            "`name` must be at most 200 characters",
        ));
    }
    let device = DeviceRecord {
        id: format!("d_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant_id: tenant.0.clone(),
        address: body.address,
        name: body.name,
        created_at: now_ms(),
        last_seen: None,
    };
    state
        .env
        .store
        .create_device(device.clone())
        .await
        .map_err(|e| match e {
            actors::store::StoreError::Conflict(_) => ApiError::new(
                ErrorCode::Conflict,
                format!("address {} already exists in this tenant", device.address),
            ),
            other => other.into(),
        })?;
    Ok(HttpResponse::Created().json(device_view(&state, device).await))
}

/// Paging of `GET /v1/devices`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/devices?after=&limit=`: the caller's devices, by id.
#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    security(("tenant_key" = [])),
    params(("after" = Option<String>, Query, description = "last device id of the previous page (`next_after`)"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "page size, 1 to 1000 (default 100)")),
    responses(
        (status = 200, body = DeviceList, description = "one page of devices, by id",
         links(("NextPage" = (operation_id = "list_devices", parameters(("after" = "$response.body#/next_after")))))),
        (status = 400, body = ErrorBody, description = "`bad_request`: `limit` not an integer from 1 to 1000"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/devices")]
pub async fn list_devices(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1 to 1000"));
    }
    let page = state
        .env
        .store
        .list_devices(&tenant.0, q.after.as_deref(), limit + 1)
        .await?;
    let more = page.len() > limit;
    let mut devices = Vec::with_capacity(limit);
    for d in page.into_iter().take(limit) {
        devices.push(device_view(&state, d).await);
    }
    let next_after = more
        .then(|| devices.last().map(|d| d.device_id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(DeviceList {
        devices,
        next_after,
    }))
}

/// `GET /v1/devices/{id}`: one device with its presence.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 200, body = Device, description = "the device with its presence"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/devices/{id}")]
pub async fn get_device(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(device_view(&state, device).await))
}

/// `DELETE /v1/devices/{id}`: removes a device. Its session stops for good (its
/// clients are closed with 4410), nothing is written to its inbox afterwards, its
/// inbox and contacts are deleted, its queued jobs cancelled, and its tokens refused.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[delete("/v1/devices/{id}")]
pub async fn delete_device(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let env = &state.env;
    // No session of the device runs or starts from here on: rows for it are refused.
    env.directory.remove(&device).await?;
    // What its last session queued is durable, so it is deleted with the rest.
    env.persistence.barrier(&device.id).await;
    env.store.delete_device(&device.id, now_ms()).await?;
    env.directory.forget_device(&device).await;
    tracing::info!(device_id = %device.id, tenant_id = %device.tenant_id, "device deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/devices/{id}/tokens`: a device token (JWT) for `GET /v1/ws`.
#[utoipa::path(post, path = "/v1/devices/{id}/tokens", tag = "devices",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id")),
    request_body(content = Option<CreateToken>, description = "optional (an empty body takes the default lifetime); at most `max_request_bytes` (64 KiB by default)"),
    responses(
        (status = 201, body = TokenCreated, description = "a device token for `GET /v1/ws?token=`"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, or `ttl_secs` not 1 to 2592000 (30 days)"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = "`forbidden`: the device belongs to another tenant, or is the tenant's reserved `system` device (notifications), which takes no tokens"),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 413, body = ErrorBody, description = doc::TOO_LARGE),
        (status = 500, body = ErrorBody, description = "`internal`: stored data unreadable, or the token could not be signed"),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/devices/{id}/tokens")]
pub async fn create_token(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: OptionalJson<CreateToken>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    if device.address == protocol::background::SYSTEM_ADDRESS {
        // Only the server speaks as `system` (notifications): no client may connect as it.
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the system device sends notifications only; it takes no tokens",
        ));
    }
    let ttl = body
        .0
        .and_then(|b| b.ttl_secs)
        .unwrap_or(state.config.token_ttl_secs);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "`ttl_secs` must be 1 to {MAX_TOKEN_TTL_SECS}"
        )));
    }
    let now_s = (now_ms() / 1000) as u64;
    let claims = DeviceClaims {
        sub: device.id,
        tid: device.tenant_id,
        exp: now_s + ttl,
        iat: now_s,
    };
    let token = state.tokens.issue(&claims)?;
    Ok(HttpResponse::Created().json(TokenCreated {
        token,
        expires_at: (claims.exp * 1000) as i64,
    }))
}

/// Query of `PUT /v1/devices/{id}/contacts`.
#[derive(Debug, Deserialize)]
pub struct ContactsQuery {
    /// Run as a background job even when small.
    #[serde(default, rename = "async")]
    run_async: Option<bool>,
}

/// `PUT /v1/devices/{id}/contacts`: inserts or updates contacts. Up to 10,000 are
/// upserted at once (200); more, or `?async=true`, become a background job (202
/// `{"job_id"}`, progress at `GET /v1/jobs/{id}`).
#[utoipa::path(put, path = "/v1/devices/{id}/contacts", tag = "contacts",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id"),
           ("async" = Option<bool>, Query, description = "run as a background job")),
    request_body(content = Contacts, description = "at most `max_contacts_bytes` (16 MiB by default); over 10,000 contacts run as a job"),
    responses(
        (status = 200, body = Upserted, description = "upserted at once (at most 10,000)"),
        (status = 202, body = doc::JobQueued, description = "queued as a background job (over 10,000 contacts, or `?async=true`)",
         links(("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")),
                description = "the job's progress")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, a contact's `address` not E.164, its `name` over 200 characters, or `async` not a boolean"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 413, body = ErrorBody, description = "`too_large`: the body is over `max_contacts_bytes` (16 MiB by default)"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[put("/v1/devices/{id}/contacts")]
pub async fn put_contacts(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<ContactsQuery>,
    body: ApiJson<Contacts, ContactsLimit>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let contacts = body.into_inner().contacts;
    let background = q.run_async.unwrap_or(false) || contacts.len() > MAX_CONTACTS_PER_CALL;
    for (i, c) in contacts.iter().enumerate() {
        check_address(&format!("contacts[{i}].address"), &c.address)?;
        if c.name.as_ref().is_some_and(|n| n.len() > 200) {
            return Err(ApiError::bad_request(format!(
                "`contacts[{i}].name` must be at most 200 characters"
            )));
        }
    }
    if background {
        let job_id = super::jobs::enqueue_contacts(&state, &device, &contacts).await?;
        return Ok(HttpResponse::Accepted().json(serde_json::json!({ "job_id": job_id })));
    }
    let upserted = state
        .env
        .store
        .upsert_contacts(&device.id, &contacts)
        .await?;
    state
        .env
        .cache
        .invalidate(CacheKind::Contacts, &device.id)
        .await;
    Ok(HttpResponse::Ok().json(Upserted { upserted }))
}

/// `GET /v1/devices/{id}/contacts`: all contacts, by address.
#[utoipa::path(get, path = "/v1/devices/{id}/contacts", tag = "contacts",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 200, body = Contacts, description = "every contact, by address"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/devices/{id}/contacts")]
pub async fn get_contacts(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let store = &state.env.store;
    let contacts = state
        .env
        .cache
        .get_or_load(CacheKind::Contacts, &device.id, || async {
            store.list_contacts(&device.id).await.map(Some)
        })
        .await?
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "contacts": &*contacts })))
}
