//! Who may use media: a tenant's API key, or a device token (the JWT of
//! `POST /v1/devices/{id}/tokens`) of one of the tenant's devices that still exists.
//! Either way the request acts for one tenant; other tenants' media are answered 404,
//! as if they did not exist, so ids do not leak.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// A request made with a tenant API key (`device` is `None`) or with a device token
/// (`device` is its device).
pub struct MediaAuth {
    /// The tenant it acts for.
    pub tenant_id: String,
    /// The device whose token it carries.
    pub device: Option<String>,
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    credentials::bearer(value.to_str().ok()?).map(str::to_owned)
}

impl FromRequest for MediaAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let is_key = token
            .as_deref()
            .is_some_and(|t| credentials::parse_api_key(t).is_some());
        if token.is_none() {
            return Box::pin(std::future::ready(Err(ApiError::unauthorized(
                "an API key or a device token is required (Authorization: Bearer …)",
            ))));
        }
        if is_key {
            let key = TenantAuth::from_request(req, payload);
            return Box::pin(async move {
                let TenantAuth(tenant_id) = key.await?;
                Ok(MediaAuth {
                    tenant_id,
                    device: None,
                })
            });
        }
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state
                .ok_or_else(|| ApiError::new(protocol::ErrorCode::Internal, "no app state"))?;
            let token = token.unwrap_or_default();
            let claims = state.tokens.verify(&token)?;
            let device = state
                .env
                .directory
                .device(&claims.sub)
                .await?
                .filter(|d| d.tenant_id == claims.tid)
                .ok_or_else(|| ApiError::unauthorized("device no longer exists"))?;
            Ok(MediaAuth {
                tenant_id: device.tenant_id.clone(),
                device: Some(device.id.clone()),
            })
        })
    }
}
