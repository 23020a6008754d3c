//! `GET /v1/ws?token=`: authenticates, upgrades, and serves the socket as a connection
//! attached to the device's session.
//!
//! The upgrade is taken before actix-web's routing (`upgrade::factory`, an actix-http
//! upgrade service), so the connection runs on its raw TCP socket with small buffers
//! (`socket`). A plain `GET /v1/ws` without upgrade headers still reaches the app
//! ([`plain_get`]), which runs the same checks and answers 400.

mod connection;
pub mod guard;
mod socket;
pub mod upgrade;

use std::net::IpAddr;

use actix_web::{get, web, HttpRequest, HttpResponse};
use actors::store::DeviceRecord;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Query of the upgrade request.
#[derive(Debug, Default, Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// A handshake that passed every check: the device, its token's expiry, and the slot
/// that counts the connection against its client IP.
struct Admitted {
    device: DeviceRecord,
    token_exp_s: u64,
    slot: guard::OpenSlot,
}

/// The handshake checks: 401 on a missing, bad or expired token or a deleted device;
/// 403 for an `Origin` not allowed; 429 over the per-IP connection or handshake limit;
/// 503 while the server shuts down.
async fn admit(
    state: &AppState,
    ip: Option<IpAddr>,
    origin: Option<&str>,
    query: Option<&str>,
) -> Result<Admitted, ApiError> {
    let ip = ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
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
    let query: WsQuery = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let token = query
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
    Ok(Admitted {
        device,
        token_exp_s: claims.exp,
        slot,
    })
}

/// `GET /v1/ws` without `Connection: Upgrade`: the handshake checks, then 400 (an
/// upgrade request never gets here; `upgrade::factory` takes it first).
#[get("/v1/ws")]
pub async fn plain_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let ip = req.peer_addr().map(|a| a.ip());
    admit(&state, ip, origin, Some(req.query_string())).await?;
    Err(ApiError::bad_request(
        "WebSocket upgrade failed: send `Connection: Upgrade` and `Upgrade: websocket`",
    ))
}
