//! Synchronous sends, inbox history, and a message's per-recipient status.

use std::sync::Arc;

use actix_web::{get, post, web, HttpResponse};
use actors::device::{DeviceMsg, Responder, SendRequest};
use actors::store::{InboxRow, MessageRecord, RowKind};
use protocol::frames::{MessageItem, MessageTag};
use protocol::rest::{
    DeliveryStatus, MessageAccepted, MessagePage, MessageStatus, RecipientStatus, SendMessage,
    DEFAULT_PAGE, MAX_PAGE,
};
use protocol::{ErrorCode, MessageRef, PageItem, Priority, ReceiptStatus, StatusRef, Target};
use serde::Deserialize;

use super::body::ApiJson;
use super::devices::owned_device;
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// Checks a message body against the one body limit of every transport.
pub fn check_body_size(state: &AppState, body: &str) -> Result<(), ApiError> {
    let max = state.config.max_message_bytes;
    if body.len() > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("`body` is over {max} bytes"),
        ));
    }
    Ok(())
}

/// `POST /v1/devices/{id}/messages`: sends as the device; answers once durable.
#[utoipa::path(post, path = "/v1/devices/{id}/messages", tag = "messages",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "sending device id")),
    request_body(content = SendMessage, description = "`body` at most `max_message_bytes` (64 KiB by default), nested at most 64 levels; the request at most `max_message_bytes` + 4 KiB"),
    responses(
        (status = 201, body = MessageAccepted, description = "durable in the sender's and every recipient's inbox",
         links(
            ("GetMessage" = (operation_id = "get_message",
                parameters(("id" = "$request.path.id"), ("message_id" = "$response.body#/message_id")),
                description = "the message with its status per recipient")),
            ("GetByClientId" = (operation_id = "get_message_by_client_id",
                parameters(("id" = "$request.path.id"), ("client_id" = "$request.body#/id")),
                description = "the same, by the request's `id`")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, not exactly one of `to` / `group`, `body` not an object (or too deep, or a number out of range), `id` over 64 characters"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = "`forbidden`: the sending device, or the group, belongs to another tenant"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such sending device, recipient address or group"),
        (status = 413, body = ErrorBody, description = "`too_large`: `body` over `max_message_bytes` (64 KiB by default), or the request over its byte limit"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 429, body = ErrorBody, description = "`rate_limited`: over the device's, tenant's or server's budget for this priority; retry after `Retry-After` seconds (`retry_after_ms` in the body)",
         headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing, or the device's session is restarting; retry")))]
#[post("/v1/devices/{id}/messages")]
pub async fn send_message(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: ApiJson<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &tenant, &id).await?;
    let body = body.into_inner();
    let target = Target::from_parts(body.to, body.group).map_err(ApiError::bad_request)?;
    if !body.body.get().starts_with('{') {
        return Err(ApiError::bad_request("`body` must be a JSON object"));
    }
    check_body_size(&state, body.body.get())?;
    protocol::validate::check_body(body.body.get()).map_err(ApiError::bad_request)?;
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
        resume: None,
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

/// A message as a page entry at `seq`.
fn message_ref(m: &MessageRecord, seq: u64) -> MessageRef<'_> {
    MessageRef {
        message_id: &m.id,
        seq,
        ts: m.ts,
        from: &m.from,
        to: m.to.as_deref(),
        group: m.group.as_deref(),
        body: &m.body,
    }
}

fn page_item(r: &InboxRow) -> PageItem<'_> {
    match &r.kind {
        RowKind::Message(m) => PageItem::Message(message_ref(m, r.seq)),
        RowKind::Status(s) => PageItem::Status(StatusRef {
            message_id: &s.message_id,
            seq: r.seq,
            ts: r.ts,
            status: s.status,
            by: &s.by,
        }),
    }
}

/// Reads one page of an inbox (messages and statuses, in seq order), encoded as the
/// REST body or a WS `messages` frame.
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
    if state.cluster.is_some() {
        // In a cluster, a page stops at the durable seq of the device's owner: above
        // it may lie rows a takeover is about to fence (`docs/cluster.md`).
        if let Some(info) = state.directory.info(device_id).await {
            rows.retain(|r| r.seq <= info.last_seq);
        }
    }
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map(|r| r.seq).unwrap_or(after_seq);
    let items: Vec<PageItem<'_>> = rows.iter().map(page_item).collect();
    Ok(match ws_id {
        Some(id) => protocol::encode_page(true, id, &items, next, more),
        None => protocol::encode_page(false, None, &items, next, more),
    })
}

/// `GET /v1/devices/{id}/messages?after_seq=&limit=`: the inbox by seq.
#[utoipa::path(get, path = "/v1/devices/{id}/messages", tag = "messages",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "device id"),
           ("after_seq" = Option<u64>, Query, description = "return seq > after_seq (default 0)"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "page size, 1 to 1000 (default 100)")),
    responses(
        (status = 200, body = MessagePage, description = "messages and statuses, in seq order",
         links(("NextPage" = (operation_id = "history",
            parameters(("id" = "$request.path.id"), ("after_seq" = "$response.body#/next_after_seq")))))),
        (status = 400, body = ErrorBody, description = "`bad_request`: `after_seq` not a non-negative integer, or `limit` not 1 to 1000"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = doc::NO_DEVICE),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
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

/// The message `message_id` of `device_id`'s inbox with its per-recipient status.
async fn message_status(
    state: &AppState,
    device_id: &str,
    message_id: &str,
) -> Result<MessageStatus, ApiError> {
    let store = &state.env.store;
    let row = store
        .inbox_messages(device_id, &[message_id.to_owned()])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no message {message_id} in this inbox")))?;
    let RowKind::Message(message) = &row.kind else {
        return Err(ApiError::not_found(format!(
            "no message {message_id} in this inbox"
        )));
    };
    let sender = message.sender_device.as_deref();
    let is_sender = sender == Some(device_id);
    let copies = store.message_copies(message_id).await?;
    let statuses = match sender {
        Some(s) => store.statuses(s, message_id).await?,
        None => Vec::new(),
    };
    let recipients = copies
        .into_iter()
        .filter(|c| Some(c.device_id.as_str()) != sender)
        .filter(|c| is_sender || c.device_id == device_id)
        .map(|c| {
            let at = |status: ReceiptStatus| {
                statuses
                    .iter()
                    .filter(|s| s.status == status && Some(&s.by) == c.address.as_ref())
                    .map(|s| s.ts)
                    .min()
            };
            let (delivered_at, read_at) = (at(ReceiptStatus::Delivered), at(ReceiptStatus::Read));
            let status = if read_at.is_some() {
                DeliveryStatus::Read
            } else if delivered_at.is_some() {
                DeliveryStatus::Delivered
            } else {
                DeliveryStatus::Sent
            };
            RecipientStatus {
                device_id: c.device_id,
                address: c.address,
                seq: c.seq,
                status,
                delivered_at,
                read_at,
            }
        })
        .collect();
    let body = serde_json::value::RawValue::from_string(message.body.to_string()).map_err(|e| {
        tracing::error!(%message_id, error = %e, "stored body unreadable");
        ApiError::new(ErrorCode::Internal, "stored body unreadable")
    })?;
    Ok(MessageStatus {
        message: MessageItem {
            kind: MessageTag::Message,
            message_id: message.id.to_string(),
            seq: row.seq,
            ts: message.ts,
            from: message.from.to_string(),
            to: message.to.as_deref().map(str::to_owned),
            group: message.group.as_deref().map(str::to_owned),
            body,
        },
        recipients,
    })
}

/// `GET /v1/devices/{id}/messages/{message_id}`: one message of the device's inbox
/// with its status per recipient (sent, delivered, read).
#[utoipa::path(get, path = "/v1/devices/{id}/messages/{message_id}", tag = "messages",
    params(("id" = String, Path, description = "device id"),
           ("message_id" = String, Path, description = "message id")),
    security(("tenant_key" = [])),
    responses(
        (status = 200, body = MessageStatus, description = "the message and its status per recipient"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = "`not_found`: no such device, or no such message in its inbox"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/devices/{id}/messages/{message_id}")]
pub async fn get_message(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, message_id) = path.into_inner();
    let device = owned_device(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(message_status(&state, &device.id, &message_id).await?))
}

/// `GET /v1/devices/{id}/messages/by-client-id/{client_id}`: the message the device
/// sent under request id `client_id`, with its status per recipient.
#[utoipa::path(get, path = "/v1/devices/{id}/messages/by-client-id/{client_id}", tag = "messages",
    params(("id" = String, Path, description = "sending device id"),
           ("client_id" = String, Path, description = "the `id` the send carried")),
    security(("tenant_key" = [])),
    responses(
        (status = 200, body = MessageStatus, description = "the message and its status per recipient"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_DEVICE),
        (status = 404, body = ErrorBody, description = "`not_found`: no such device, or no send of it with this `id`"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/devices/{id}/messages/by-client-id/{client_id}")]
pub async fn get_message_by_client_id(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, client_id) = path.into_inner();
    let device = owned_device(&state, &tenant, &id).await?;
    let sent = state
        .env
        .store
        .sends_by_client_id(&device.id, &client_id)
        .await?
        .into_iter()
        .find(|s| s.client_id == client_id)
        .ok_or_else(|| ApiError::not_found(format!("no send with id {client_id:?}")))?;
    Ok(HttpResponse::Ok().json(message_status(&state, &device.id, &sent.message_id).await?))
}
