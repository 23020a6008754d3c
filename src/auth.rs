//! Authorization extractors: the admin token, tenant API keys and device tokens.
//!
//! Authorization lives in extractor types, so a handler that takes [`TenantAuth`] or
//! [`AdminAuth`] cannot forget to check. The credential logic itself (JWT HS256, key
//! shapes, constant-time comparison) is the `credentials` crate, which is fuzzed on its
//! own (`fuzz/`); this module maps its verdicts to [`ApiError`]s.

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use actix_web::{web, FromRequest, HttpRequest};
use actors::cache::CacheKind;
use credentials::{hash_key, parse_api_key, secret_matches, IssueError, TokenError};

use crate::error::ApiError;
use crate::state::AppState;

// Re-exported so tests and tools that make tokens keep one path into the server crate.
pub use credentials::{DeviceClaims, TokenKeys};

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        // The two messages are part of the API: "device token expired" and
        // "invalid device token".
        ApiError::unauthorized(e.to_string())
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        tracing::error!(error = %e, "could not sign a device token");
        ApiError::new(protocol::ErrorCode::Internal, "could not sign the token")
    }
}

/// The credential of the request's `Authorization: Bearer` header, if well formed.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    credentials::bearer(value.to_str().ok()?)
}

fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::new(protocol::ErrorCode::Internal, "no app state"))
}

/// A request made with the admin token.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let result = app_state(req).and_then(|state| match bearer(req) {
            Some(t) if secret_matches(t, &state.admin_token) => Ok(AdminAuth),
            Some(_) => Err(ApiError::unauthorized("invalid admin token")),
            None => Err(ApiError::unauthorized(
                "admin token required (Authorization: Bearer …)",
            )),
        });
        std::future::ready(result)
    }
}

/// A request made with the admin token as a bearer header or, for `EventSource`
/// (which cannot set headers), as `?token=`. Only `GET /admin/events` takes it; the
/// request log records paths without their query, so the token is not logged.
pub struct AdminStreamAuth;

impl FromRequest for AdminStreamAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let query_token = || {
            web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("token").cloned())
        };
        let result = app_state(req).and_then(|state| {
            match bearer(req).map(str::to_owned).or_else(query_token) {
                Some(t) if secret_matches(&t, &state.admin_token) => Ok(AdminStreamAuth),
                Some(_) => Err(ApiError::unauthorized("invalid admin token")),
                None => Err(ApiError::unauthorized(
                    "admin token required (Authorization: Bearer … or ?token=)",
                )),
            }
        });
        std::future::ready(result)
    }
}

/// A request made with a tenant's API key; holds the tenant id.
pub struct TenantAuth(pub String);

impl FromRequest for TenantAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = app_state(req);
        // A malformed key is refused here, before any cache or store lookup.
        let key = bearer(req).map(|k| parse_api_key(k).map(hash_key));
        Box::pin(async move {
            let state = state?;
            let hash = key
                .ok_or_else(|| {
                    ApiError::unauthorized("API key required (Authorization: Bearer …)")
                })?
                .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
            let cache = &state.env.cache;
            if let Some(tenant) = cache.get::<String>(CacheKind::Sessions, &hash).await {
                return Ok(TenantAuth((*tenant).clone()));
            }
            let tenant = state
                .env
                .store
                .tenant_by_key_hash(&hash)
                .await?
                .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
            cache
                .set(CacheKind::Sessions, &hash, Arc::new(tenant.id.clone()))
                .await;
            let id = tenant.id.clone();
            cache.set(CacheKind::Tenants, &id, Arc::new(tenant)).await;
            Ok(TenantAuth(id))
        })
    }
}
