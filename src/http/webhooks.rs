//! Webhook endpoints over REST, under the tenant API key (`docs/webhooks.md`):
//! `POST|GET /v1/webhooks`, `GET|PATCH|DELETE /v1/webhooks/{id}`,
//! `POST /v1/webhooks/{id}/rotate-secret`, `POST /v1/webhooks/{id}/test`,
//! `GET /v1/webhooks/{id}/deliveries`, `GET /v1/webhooks/{id}/dead-letters`,
//! `POST /v1/webhooks/{id}/dead-letters/replay`.
//!
//! The signing secret is generated here and shown once (on creation, and on rotation);
//! another tenant's endpoint answers 403, as every `/v1` resource does.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use actors::clock::now_ms;
use actors::webhooks::{
    DeliveryRecord, DeliveryState, EndpointRecord, EventKind, MAX_ENDPOINTS_PER_TENANT,
};
use protocol::webhooks::{
    CreateWebhook, ReplayDeadLetters, Replayed, UpdateWebhook, Webhook, WebhookCreated,
    WebhookDelivery, WebhookDeliveryPage, WebhookList, WebhookTestResult, MAX_DESCRIPTION_LEN,
    MAX_EVENTS, MAX_PAGE, MAX_REPLAY_IDS, MAX_URL_LEN,
};
use protocol::ErrorCode;
use serde::Deserialize;

use super::body::ApiJson;
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;

fn view(e: &EndpointRecord) -> Webhook {
    Webhook {
        webhook_id: e.id.clone(),
        url: e.url.clone(),
        events: e.events.clone(),
        description: e.description.clone(),
        enabled: e.enabled,
        created_at: e.created_at,
        updated_at: e.updated_at,
    }
}

fn delivery_view(d: DeliveryRecord) -> WebhookDelivery {
    WebhookDelivery {
        data: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
        delivery_id: d.id,
        event_id: d.order_key,
        event: d.event,
        device_id: d.device_id,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_at: d.next_at,
        last_status_code: d.last_code,
        last_error: d.last_error,
        last_latency_ms: d.last_latency_ms,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

/// Checks an endpoint URL: `http(s)://host…`, bounded, no credentials in it.
fn check_url(url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("`url` is longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_request(format!("`url` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad_request(format!(
            "`url` must be http:// or https://, got {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("`url` has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad_request(
            "`url` must not carry credentials (verify the signature instead)",
        ));
    }
    Ok(())
}

/// Checks and normalizes an event list: known names, at least one, no duplicates.
fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "`events` must name at least one event",
        ));
    }
    if events.len() > MAX_EVENTS {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("`events` holds more than {MAX_EVENTS} names"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if EventKind::parse(e).is_none() {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "`events[{i}]`: unknown event {e:?} (known: {})",
                known.join(", ")
            )));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

fn check_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN => Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("`description` is longer than {MAX_DESCRIPTION_LEN} characters"),
        )),
        Some(d) if d.is_empty() => Ok(None),
        d => Ok(d),
    }
}

/// Loads an endpoint of the caller's tenant: 404 if missing, 403 if another tenant's.
async fn owned(
    state: &AppState,
    tenant: &TenantAuth,
    id: &str,
) -> Result<EndpointRecord, ApiError> {
    let e = state
        .env
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))?;
    if e.tenant_id != tenant.0 {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this webhook belongs to another tenant",
        ));
    }
    Ok(e)
}

/// `POST /v1/webhooks`: creates an endpoint; answers 201 with its signing secret (shown
/// only here).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    security(("tenant_key" = [])),
    request_body(content = CreateWebhook, description = "at most `max_request_bytes` (64 KiB by default)"),
    responses((status = 201, body = WebhookCreated, description = "the endpoint, with its signing secret (shown only here and on rotate-secret)",
         links(
            ("GetWebhook" = (operation_id = "get_webhook", parameters(("id" = "$response.body#/webhook_id")))),
            ("UpdateWebhook" = (operation_id = "update_webhook", parameters(("id" = "$response.body#/webhook_id")))),
            ("DeleteWebhook" = (operation_id = "delete_webhook", parameters(("id" = "$response.body#/webhook_id")))),
            ("TestWebhook" = (operation_id = "test_webhook", parameters(("id" = "$response.body#/webhook_id")),
                description = "send a signed test delivery now")),
            ("Deliveries" = (operation_id = "deliveries", parameters(("id" = "$response.body#/webhook_id")))),
            ("DeadLetters" = (operation_id = "dead_letters", parameters(("id" = "$response.body#/webhook_id")))),
            ("Replay" = (operation_id = "replay", parameters(("id" = "$response.body#/webhook_id")))),
            ("RotateSecret" = (operation_id = "rotate_secret", parameters(("id" = "$response.body#/webhook_id")))))),
              (status = 400, body = protocol::error::ErrorBody, description = "bad URL, unknown or no event"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 413, body = protocol::error::ErrorBody, description = "over a length limit, or the tenant has 20 endpoints"),
              (status = 415, body = protocol::error::ErrorBody, description = doc::NOT_JSON),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/webhooks")]
pub async fn create_webhook(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    check_url(&body.url)?;
    let events = check_events(&body.events)?;
    let description = check_description(body.description)?;
    let existing = state.env.store.list_webhooks(&tenant.0).await?;
    if existing.len() >= MAX_ENDPOINTS_PER_TENANT {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("a tenant has at most {MAX_ENDPOINTS_PER_TENANT} webhooks"),
        ));
    }
    let now = now_ms();
    let endpoint = EndpointRecord {
        id: state.env.webhooks.next_id("wh"),
        tenant_id: tenant.0.clone(),
        url: body.url,
        events,
        secret: credentials::new_webhook_secret(),
        description,
        enabled: body.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    state.env.store.create_webhook(endpoint.clone()).await?;
    state.env.webhooks.invalidate(&tenant.0);
    tracing::info!(tenant_id = %tenant.0, webhook_id = %endpoint.id, "webhook created");
    Ok(HttpResponse::Created().json(WebhookCreated {
        webhook: view(&endpoint),
        secret: endpoint.secret,
    }))
}

/// `GET /v1/webhooks`: the tenant's endpoints (without secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    security(("tenant_key" = [])),
    responses((status = 200, body = WebhookList, description = "the tenant's endpoints (no secrets)"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/webhooks")]
pub async fn list_webhooks(
    tenant: TenantAuth,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let list = state.env.store.list_webhooks(&tenant.0).await?;
    Ok(HttpResponse::Ok().json(WebhookList {
        webhooks: list.iter().map(view).collect(),
    }))
}

/// `GET /v1/webhooks/{id}`: one endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = Webhook, description = "the endpoint"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/webhooks/{id}")]
pub async fn get_webhook(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    Ok(HttpResponse::Ok().json(view(&e)))
}

/// `PATCH /v1/webhooks/{id}`: changes the URL, events, description or enabled flag.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    request_body(content = UpdateWebhook, description = "at most `max_request_bytes` (64 KiB by default)"),
    responses((status = 200, body = Webhook, description = "the endpoint"),
              (status = 400, body = protocol::error::ErrorBody, description = doc::BAD_JSON),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 413, body = protocol::error::ErrorBody, description = doc::TOO_LARGE),
              (status = 415, body = protocol::error::ErrorBody, description = doc::NOT_JSON),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[patch("/v1/webhooks/{id}")]
pub async fn update_webhook(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: ApiJson<UpdateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut e = owned(&state, &tenant, &id).await?;
    if let Some(url) = body.url {
        check_url(&url)?;
        e.url = url;
    }
    if let Some(events) = body.events {
        e.events = check_events(&events)?;
    }
    if body.description.is_some() {
        e.description = check_description(body.description)?;
    }
    if let Some(enabled) = body.enabled {
        e.enabled = enabled;
    }
    e.updated_at = now_ms();
    if !state.env.store.update_webhook(e.clone()).await? {
        return Err(ApiError::not_found(format!("no webhook {id}")));
    }
    state.env.webhooks.invalidate(&tenant.0);
    if e.enabled {
        state.env.webhooks.wake();
    }
    Ok(HttpResponse::Ok().json(view(&e)))
}

/// `DELETE /v1/webhooks/{id}`: deletes an endpoint and its deliveries (204).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 204, description = "deleted"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[delete("/v1/webhooks/{id}")]
pub async fn delete_webhook(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    state.env.store.delete_webhook(&e.id).await?;
    state.env.webhooks.invalidate(&tenant.0);
    tracing::info!(tenant_id = %tenant.0, webhook_id = %e.id, "webhook deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new signing secret, shown once; the old
/// one stops signing at once.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookCreated, description = "the endpoint with its new signing secret (shown only here)"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/webhooks/{id}/rotate-secret")]
pub async fn rotate_secret(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut e = owned(&state, &tenant, &id).await?;
    e.secret = credentials::new_webhook_secret();
    e.updated_at = now_ms();
    if !state.env.store.update_webhook(e.clone()).await? {
        return Err(ApiError::not_found(format!("no webhook {id}")));
    }
    state.env.webhooks.invalidate(&tenant.0);
    Ok(HttpResponse::Ok().json(WebhookCreated {
        webhook: view(&e),
        secret: e.secret,
    }))
}

/// `POST /v1/webhooks/{id}/test`: sends one signed `webhook.test` event now and answers
/// what the receiver said (not queued, not retried).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookTestResult, description = "the attempt was made (see `delivered`)"),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/webhooks/{id}/test")]
pub async fn test_webhook(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    let now = now_ms();
    let delivery = DeliveryRecord {
        id: state.env.webhooks.next_id("wd"),
        endpoint_id: e.id.clone(),
        tenant_id: e.tenant_id.clone(),
        device_id: String::new(),
        event: "webhook.test".into(),
        order_key: state.env.webhooks.next_id("ev"),
        payload: serde_json::json!({"webhook_id": e.id, "ts": now}).to_string(),
        status_key: None,
        status_rank: 0,
        state: DeliveryState::Sending,
        attempts: 0,
        next_at: now,
        owner: None,
        lease_until: None,
        last_error: None,
        last_code: None,
        last_latency_ms: None,
        created_at: now,
        updated_at: now,
    };
    let body = crate::webhooks::signing::body(&delivery, 1);
    let attempt = crate::webhooks::signing::send(
        &state.webhooks.client,
        &e.url,
        &e.secret,
        &delivery.event,
        &delivery.id,
        body,
    )
    .await;
    Ok(HttpResponse::Ok().json(WebhookTestResult {
        delivered: attempt.ok,
        status_code: attempt.code,
        error: attempt.error,
        latency_ms: attempt.latency.as_millis() as u64,
        delivery_id: delivery.id,
    }))
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `pending`, `sending`, `delivered`, `dead` or `dropped` (default: all).
    pub state: Option<String>,
    /// Only deliveries older than this delivery id (the previous page's `next_before`).
    pub before: Option<String>,
    /// Page size (1–200, default 50).
    pub limit: Option<usize>,
}

async fn page(
    state: &AppState,
    endpoint: &EndpointRecord,
    wanted: Option<DeliveryState>,
    before: Option<&str>,
    limit: Option<usize>,
) -> Result<WebhookDeliveryPage, ApiError> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let items = state
        .env
        .store
        .list_webhook_deliveries(&endpoint.id, wanted, before, limit)
        .await?;
    let next_before = (items.len() == limit)
        .then(|| items.last().map(|d| d.id.clone()))
        .flatten();
    Ok(WebhookDeliveryPage {
        items: items.into_iter().map(delivery_view).collect(),
        next_before,
    })
}

/// `GET /v1/webhooks/{id}/deliveries?state=&before=&limit=`: the delivery log, newest
/// first: each delivery's state, attempts, last status code, error and latency.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id"), LogQuery),
    responses((status = 200, body = WebhookDeliveryPage, description = "a page of deliveries, newest first"),
              (status = 400, body = protocol::error::ErrorBody, description = doc::BAD_QUERY),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/webhooks/{id}/deliveries")]
pub async fn deliveries(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    let wanted = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`state` must be pending, sending, delivered, dead or dropped, got {s:?}"
            ))
        })?),
    };
    let p = page(&state, &e, wanted, query.before.as_deref(), query.limit).await?;
    Ok(HttpResponse::Ok().json(p))
}

/// Query of the dead letters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadQuery {
    /// Only dead letters older than this delivery id.
    pub before: Option<String>,
    /// Page size (1–200, default 50).
    pub limit: Option<usize>,
}

/// `GET /v1/webhooks/{id}/dead-letters?before=&limit=`: deliveries whose every attempt
/// failed, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/dead-letters", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id"), DeadQuery),
    responses((status = 200, body = WebhookDeliveryPage, description = "a page of deliveries, newest first"),
              (status = 400, body = protocol::error::ErrorBody, description = doc::BAD_QUERY),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/webhooks/{id}/dead-letters")]
pub async fn dead_letters(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<DeadQuery>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    let p = page(
        &state,
        &e,
        Some(DeliveryState::Dead),
        query.before.as_deref(),
        query.limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(p))
}

/// `POST /v1/webhooks/{id}/dead-letters/replay` `{"ids"?}`: puts dead letters (all, or
/// those named) back in the outbox, attempts reset.
#[utoipa::path(post, path = "/v1/webhooks/{id}/dead-letters/replay", tag = "webhooks",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "webhook id")),
    request_body(content = ReplayDeadLetters, description = "at most `max_request_bytes` (64 KiB by default)"),
    responses((status = 200, body = Replayed, description = "how many dead letters went back to the outbox"),
              (status = 400, body = protocol::error::ErrorBody, description = doc::BAD_JSON),
              (status = 401, body = protocol::error::ErrorBody, description = doc::NO_KEY),
              (status = 403, body = protocol::error::ErrorBody, description = doc::OTHER_TENANTS_WEBHOOK),
              (status = 404, body = protocol::error::ErrorBody, description = doc::NO_WEBHOOK),
              (status = 413, body = protocol::error::ErrorBody, description = "more than 1,000 ids"),
              (status = 415, body = protocol::error::ErrorBody, description = doc::NOT_JSON),
              (status = 500, body = protocol::error::ErrorBody, description = doc::INTERNAL),
              (status = 503, body = protocol::error::ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/webhooks/{id}/dead-letters/replay")]
pub async fn replay(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: ApiJson<ReplayDeadLetters>,
) -> Result<HttpResponse, ApiError> {
    let e = owned(&state, &tenant, &id).await?;
    let ids = body.into_inner().ids;
    if let Some(ids) = &ids {
        if ids.len() > MAX_REPLAY_IDS {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("`ids` holds more than {MAX_REPLAY_IDS} ids"),
            ));
        }
        if ids.is_empty() {
            return Err(ApiError::bad_request(
                "`ids` is empty (leave it out to replay every dead letter)",
            ));
        }
    }
    let replayed = state
        .env
        .store
        .replay_webhook_dead_letters(&e.id, ids, now_ms())
        .await?;
    state.env.webhooks.wake();
    Ok(HttpResponse::Ok().json(Replayed { replayed }))
}
