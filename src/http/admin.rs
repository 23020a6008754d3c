//! Administration: tenants, and test-only hooks.

use actix_web::{post, web, HttpResponse};
use actors::clock::now_ms;
use actors::device::DeviceMsg;
use actors::store::TenantRecord;
use protocol::rest::{CreateTenant, TenantCreated};

use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::secrets::{hash_key, random_secret};
use crate::state::AppState;

/// `POST /admin/tenants`: creates a tenant and shows its API key once.
#[utoipa::path(post, path = "/admin/tenants", tag = "admin", request_body = CreateTenant,
    responses((status = 201, body = TenantCreated), (status = 401, body = protocol::error::ErrorBody)))]
#[post("/admin/tenants")]
pub async fn create_tenant(
    _: AdminAuth,
    state: web::Data<AppState>,
    body: web::Json<CreateTenant>,
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
    let session = state.env.directory.session(&path).await?;
    session
        .cast(DeviceMsg::InjectPanic)
        .map_err(|_| ApiError::new(protocol::ErrorCode::Unavailable, "session not running"))?;
    Ok(HttpResponse::Accepted().finish())
}
