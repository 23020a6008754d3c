//! `GET /v1/ws?token=`: authenticates, upgrades, and hands the socket to a connection
//! task attached to the device's session.

mod connection;

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
/// token or a deleted device.
#[get("/v1/ws")]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    q: web::Query<WsQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = q
        .token
        .as_deref()
        .ok_or_else(|| ApiError::unauthorized("`token` query parameter required"))?;
    let claims = state.tokens.verify(token)?;
    let device = state
        .env
        .store
        .get_device(&claims.sub)
        .await?
        .filter(|d| d.tenant_id == claims.tid)
        .ok_or_else(|| ApiError::unauthorized("device no longer exists"))?;
    if *state.shutdown.borrow() {
        return Err(ApiError::new(
            protocol::ErrorCode::Unavailable,
            "server shutting down",
        ));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("WebSocket upgrade failed: {e}")))?;
    let conn = connection::Connection::new(state.into_inner(), device, claims.exp);
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
