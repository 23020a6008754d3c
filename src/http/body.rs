//! The JSON body extractor of every REST route: one place that checks the content
//! type, bounds the body in bytes before reading it whole (each route has its limit,
//! see [`BodyLimit`]), and turns decoding failures into the error table's answers
//! (`415 unsupported_media_type`, `413 too_large`, `400 bad_request`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use protocol::ErrorCode;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// Which configured limit bounds a route's body.
pub trait BodyLimit {
    /// The limit, in bytes.
    fn bytes(config: &Config) -> usize;
}

/// Most routes: `max_request_bytes` (64 KiB by default), which also bounds a message
/// `body` at `max_message_bytes` with room for the fields around it.
pub struct DefaultLimit;
impl BodyLimit for DefaultLimit {
    fn bytes(config: &Config) -> usize {
        config
            .max_request_bytes
            .max(config.max_message_bytes.saturating_add(4096))
    }
}

/// `POST /v1/messages/bulk`: `max_bulk_bytes` (16 MiB by default).
pub struct BulkLimit;
impl BodyLimit for BulkLimit {
    fn bytes(config: &Config) -> usize {
        config.max_bulk_bytes
    }
}

/// `PUT /v1/devices/{id}/contacts`: `max_contacts_bytes` (16 MiB by default).
pub struct ContactsLimit;
impl BodyLimit for ContactsLimit {
    fn bytes(config: &Config) -> usize {
        config.max_contacts_bytes
    }
}

/// A JSON body of type `T`, at most `L`'s limit in bytes.
pub struct ApiJson<T, L: BodyLimit = DefaultLimit>(pub T, PhantomData<L>);

impl<T, L: BodyLimit> ApiJson<T, L> {
    /// The decoded body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T, L: BodyLimit> std::ops::Deref for ApiJson<T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Reads a whole body of at most `limit` bytes.
async fn read_bounded(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body over {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes a JSON body; what a failure answers. Shared with the fuzz targets' idea of
/// "never panics": a decoder error is always a `bad_request`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(protocol::validate::bounded(format!(
            "invalid JSON body: {e}"
        )))
    })
}

impl<T: DeserializeOwned + 'static, L: BodyLimit + 'static> FromRequest for ApiJson<T, L> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no app state"))?;
            let json = req.mime_type().ok().flatten().is_some_and(|m| {
                m.subtype() == actix_web::mime::JSON || m.suffix() == Some(actix_web::mime::JSON)
            });
            let body = read_bounded(&req, payload, L::bytes(&state.config)).await?;
            if body.is_empty() {
                return Err(ApiError::bad_request("a JSON body is required"));
            }
            if !json {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "expected Content-Type: application/json",
                ));
            }
            Ok(ApiJson(decode(&body)?, PhantomData))
        })
    }
}

/// An optional JSON body: absent (empty) is `None`.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no app state"))?;
            let body = read_bounded(&req, payload, DefaultLimit::bytes(&state.config)).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(None));
            }
            Ok(OptionalJson(Some(decode(&body)?)))
        })
    }
}
