//! Synchronous sends and inbox history.

use std::sync::Arc;

use actix_web::{get, post, web, HttpResponse};
use actors::device::{DeviceMsg, Responder, SendRequest};
use protocol::rest::{MessageAccepted, MessagePage, SendMessage, DEFAULT_PAGE, MAX_PAGE};
use protocol::{ErrorCode, MessageRef, Priority, Target};
use serde::Deserialize;

use super::devices::owned_device;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/devices/{id}/messages`: sends as the device; answers once durable.
#[utoipa::path(post, path = "/v1/devices/{id}/messages", tag = "messages",
    params(("id" = String, Path, description = "sending device id")),
    request_body = SendMessage,
    responses((status = 201, body = MessageAccepted),
              (status = 429, body = protocol::error::ErrorBody, description = "over budget; see Retry-After")))]
#[post("/v1/devices/{id}/messages")]
pub async fn send_message(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let body = body.into_inner();
    let target = Target::from_parts(body.to, body.group).map_err(ApiError::bad_request)?;
    if !body.body.get().starts_with('{') {
        return Err(ApiError::bad_request("`body` must be a JSON object"));
    }
    if body
        .id
        .as_ref()
        .is_some_and(|i| i.len() > protocol::validate::MAX_CLIENT_ID_LEN)
    {
        return Err(ApiError::bad_request("`id` is longer than 64 characters"));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = SendRequest {
        client_id: body.id,
        target,
        body: Arc::from(body.body.get()),
        priority: body.priority.unwrap_or(Priority::Normal),
    };
    state
        .env
        .directory
        .deliver(&device.id, DeviceMsg::Send(req, Responder::Rest(tx)))
        .await?;
    let accepted: MessageAccepted = rx
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "device session restarted; retry"))??;
    Ok(HttpResponse::Created().json(accepted))
}

/// Paging of history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// Reads one page of an inbox, encoded as the REST body or a WS `messages` frame.
pub async fn read_page(
    state: &actors::Env,
    device_id: &str,
    after_seq: u64,
    limit: Option<u32>,
    ws_id: Option<Option<&str>>,
) -> Result<String, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let mut rows = state
        .store
        .read_inbox(device_id, after_seq, limit as usize + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map(|r| r.seq).unwrap_or(after_seq);
    let items: Vec<MessageRef<'_>> = rows
        .iter()
        .map(|r| MessageRef {
            message_id: &r.message_id,
            seq: r.seq,
            ts: r.ts,
            from: &r.from,
            to: r.to.as_deref(),
            group: r.group.as_deref(),
            body: &r.body,
        })
        .collect();
    Ok(match ws_id {
        Some(id) => protocol::encode_page(true, id, &items, next, more),
        None => protocol::encode_page(false, None, &items, next, more),
    })
}

/// `GET /v1/devices/{id}/messages?after_seq=&limit=`: the inbox by seq.
#[utoipa::path(get, path = "/v1/devices/{id}/messages", tag = "messages",
    params(("id" = String, Path, description = "device id"),
           ("after_seq" = Option<u64>, Query, description = "return seq > after_seq (default 0)"),
           ("limit" = Option<u32>, Query, description = "page size, 1 to 1000 (default 100)")),
    responses((status = 200, body = MessagePage)))]
#[get("/v1/devices/{id}/messages")]
pub async fn history(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let body = read_page(
        &state.env,
        &device.id,
        q.after_seq.unwrap_or(0),
        q.limit,
        None,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
