//! `GET /v1/ws?token=`: authenticates, upgrades, and hands the socket to a connection
//! task attached to the device's session.

mod connection;
pub mod guard;

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Query of the upgrade request.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /v1/ws?token=<device token>`: 401 without upgrade on a missing, bad or expired
/// token or a deleted device; 403 for an `Origin` not allowed; 429 over the per-IP
/// connection or handshake limit.
#[get("/v1/ws")]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    q: web::Query<WsQuery>,
) -> Result<HttpResponse, ApiError> {
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let slot = state.ip_limits.admit(ip, origin).map_err(|r| match r {
        guard::Refusal::Origin => {
            ApiError::new(protocol::ErrorCode::Forbidden, "origin not allowed")
        }
        guard::Refusal::Connections(n) => ApiError {
            code: protocol::ErrorCode::RateLimited,
            message: format!("at most {n} open connections per client address"),
            retry_after_ms: Some(1000),
        },
        guard::Refusal::Rate(wait) => ApiError {
            code: protocol::ErrorCode::RateLimited,
            message: "too many handshakes from this client address".into(),
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        },
    })?;
    let token = q
        .token
        .as_deref()
        .ok_or_else(|| ApiError::unauthorized("`token` query parameter required"))?;
    let claims = state.tokens.verify(token)?;
    let device = state
        .env
        .directory
        .device(&claims.sub)
        .await?
        .filter(|d| d.tenant_id == claims.tid)
        .map(|d| (*d).clone())
        .ok_or_else(|| ApiError::unauthorized("device no longer exists"))?;
    if *state.shutdown.borrow() {
        return Err(ApiError::new(
            protocol::ErrorCode::Unavailable,
            "server shutting down",
        ));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("WebSocket upgrade failed: {e}")))?;
    let conn = connection::Connection::new(state.into_inner(), device, claims.exp, slot);
    // A child of the request's span, so the connection's logs carry its request id.
    let span = tracing::info_span!(
        "ws",
        conn_id = conn.id(),
        device_id = %conn.device_id(),
        tenant_id = %conn.tenant_id(),
    );
    actix_web::rt::spawn(tracing::Instrument::instrument(
        conn.run(session, stream),
        span,
    ));
    Ok(response)
}
