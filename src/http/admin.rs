//! Administration: tenants, and test-only hooks.

use actix_web::{post, web, HttpResponse};
use actors::clock::now_ms;
use actors::device::DeviceMsg;
use actors::store::TenantRecord;
use credentials::{hash_key, random_secret};
use protocol::error::ErrorBody;
use protocol::rest::{CreateTenant, TenantCreated};

use super::openapi as doc;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /admin/tenants`: creates a tenant and shows its API key once.
#[utoipa::path(post, path = "/admin/tenants", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = CreateTenant, description = "at most `max_request_bytes` (64 KiB by default)"),
    responses(
        (status = 201, body = TenantCreated, description = "the tenant, with its API key (shown only here)",
         links(
            ("CreateDevice" = (operation_id = "create_device",
                description = "`api_key` is the bearer (`tenant_key`) of every `/v1` operation of the tenant")),
            ("ListDevices" = (operation_id = "list_devices",
                description = "`api_key` is the bearer (`tenant_key`) of every `/v1` operation of the tenant")),
            ("TenantTree" = (operation_id = "get_tree", parameters(("tenant" = "$response.body#/tenant_id")),
                description = "the tenant's supervisor and device sessions")),
            ("TenantQueues" = (operation_id = "queue_stats",
                description = "the tenant's jobs appear under `tenants.<tenant_id>`")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, or `name` not 1 to 200 characters"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 413, body = ErrorBody, description = doc::TOO_LARGE),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/admin/tenants")]
pub async fn create_tenant(
    _: AdminAuth,
    state: web::Data<AppState>,
    body: crate::http::body::ApiJson<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("`name` must be 1 to 200 characters"));
    }
    let id = format!("t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let api_key = format!("sk_{}", random_secret());
    state
        .env
        .store
        .create_tenant(TenantRecord {
            id: id.clone(),
            name: name.to_owned(),
            api_key_hash: hash_key(&api_key),
            created_at: now_ms(),
        })
        .await?;
    tracing::info!(tenant_id = %id, "tenant created");
    Ok(HttpResponse::Created().json(TenantCreated {
        tenant_id: id,
        name: name.to_owned(),
        api_key,
    }))
}

/// `POST /admin/test/devices/{id}/panic`: makes a device session panic. Exists only
/// when `test_hooks` is enabled (404 otherwise).
#[post("/admin/test/devices/{id}/panic")]
pub async fn inject_panic(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.test_hooks {
        return Err(ApiError::not_found("no such route"));
    }
    state
        .env
        .directory
        .deliver(&path, DeviceMsg::InjectPanic)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// Query of `POST /admin/test/devices/{id}/start-panics`.
#[derive(Debug, serde::Deserialize)]
pub struct StartPanics {
    times: u32,
    /// Instead: panic at every this many accepted rows (`times` times).
    #[serde(default)]
    every_rows: Option<u64>,
}

/// `POST /admin/test/devices/{id}/start-panics?times=N`: the next N starts of the
/// device's session panic (a crash loop), and its running session panics now; with
/// `&every_rows=K`, instead its session panics at every K-th row it accepts, N times.
/// Exists only when `test_hooks` is enabled (404 otherwise).
#[post("/admin/test/devices/{id}/start-panics")]
pub async fn inject_start_panics(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<StartPanics>,
) -> Result<HttpResponse, ApiError> {
    let Some(faults) = state.env.test_faults() else {
        return Err(ApiError::not_found("no such route"));
    };
    if let Some(every) = q.every_rows {
        faults.panic_every_rows(&path, every, q.times);
        return Ok(HttpResponse::Accepted().finish());
    }
    faults.panic_on_start(&path, q.times);
    if let Some(session) = state.env.directory.running(&path) {
        let _ = session.cast(DeviceMsg::InjectPanic);
    }
    Ok(HttpResponse::Accepted().finish())
}

/// `POST /admin/test/store` body: which store faults to inject.
#[derive(Debug, serde::Deserialize)]
pub struct StoreFaults {
    /// Every store call fails (true) or works again (false).
    #[serde(default)]
    down: Option<bool>,
    /// Each call of a store operation (by its method name) waits this many ms first;
    /// 0 removes the delay.
    #[serde(default)]
    delays: std::collections::HashMap<String, u64>,
    /// Inbox rows of this device fail (with `fail: true`) or work again.
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    fail: Option<bool>,
}

/// `POST /admin/test/store`: injects store faults. Exists only when `test_hooks` is
/// enabled (404 otherwise).
#[post("/admin/test/store")]
pub async fn inject_store_faults(
    _: AdminAuth,
    state: web::Data<AppState>,
    body: crate::http::body::ApiJson<StoreFaults>,
) -> Result<HttpResponse, ApiError> {
    let Some(faults) = &state.store_faults else {
        return Err(ApiError::not_found("no such route"));
    };
    if let Some(down) = body.down {
        faults.set_down(down);
    }
    for (op, ms) in &body.delays {
        faults.set_delay(op, *ms);
    }
    if let Some(device) = &body.device {
        faults.set_failing_device(device, body.fail.unwrap_or(true));
    }
    Ok(HttpResponse::NoContent().finish())
}
