//! Credentials: the admin token, tenant API keys and device tokens (JWT, HS256).
//!
//! Authorization lives in extractor types, so a handler that takes [`TenantAuth`] or
//! [`AdminAuth`] cannot forget to check.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::secrets::{constant_time_eq, hash_key};
use crate::state::AppState;

/// Claims of a device token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// Device id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
}

/// Signing and verification keys for device tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &str) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// Signs a token for a device.
    pub fn issue(&self, claims: &DeviceClaims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| ApiError::new(protocol::ErrorCode::Internal, format!("token: {e}")))
    }

    /// Verifies a token's signature and expiry.
    pub fn verify(&self, token: &str) -> Result<DeviceClaims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<DeviceClaims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("device token expired")
                }
                _ => ApiError::unauthorized("invalid device token"),
            })?;
        // JWT `exp` has whole seconds and the library accepts `now == exp`; a token is
        // expired from the first millisecond of its `exp` second, as the live close is.
        if (claims.exp as i64).saturating_mul(1000) <= actors::clock::now_ms() {
            return Err(ApiError::unauthorized("device token expired"));
        }
        Ok(claims)
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
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
            Some(t) if constant_time_eq(t, &state.admin_token) => Ok(AdminAuth),
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
                Some(t) if constant_time_eq(&t, &state.admin_token) => Ok(AdminStreamAuth),
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
        let key = bearer(req).map(hash_key);
        Box::pin(async move {
            let state = state?;
            let hash = key.ok_or_else(|| {
                ApiError::unauthorized("API key required (Authorization: Bearer …)")
            })?;
            let cache_key = format!("apikey:{hash}");
            if let Some(tenant) = state.cache.get(&cache_key).await {
                return Ok(TenantAuth(tenant));
            }
            let tenant = state
                .env
                .store
                .tenant_by_key_hash(&hash)
                .await?
                .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
            let ttl = state.config.cache_ttl_user_session.unwrap_or(3600);
            state
                .cache
                .set(
                    &cache_key,
                    tenant.id.clone(),
                    std::time::Duration::from_secs(ttl),
                )
                .await;
            Ok(TenantAuth(tenant.id))
        })
    }
}
