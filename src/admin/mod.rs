//! The operator surface: the `/admin` page, the live tree (`/admin/tree` as JSON,
//! `/admin/events` as Server-Sent Events) and the actions on actors.
//!
//! The page is one HTML file, one stylesheet and one script compiled into the binary
//! (`include_str!`): no CDN, no build step. It serves no data itself; everything it
//! shows comes from the admin-token routes below.
//!
//! Why `/admin/events` also takes `?token=`: the browser's `EventSource` cannot set an
//! `Authorization` header. Our request log records the path only, never the query
//! (see [`crate::logging`]), so the token does not reach our logs. The bundled page
//! does better still: it reads the token from the URL fragment (never sent to a
//! server), keeps it in `sessionStorage`, and reads the stream with `fetch` and the
//! `Authorization` header, so the token appears in no URL at all.

pub mod tree;

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{get, post, web, HttpResponse};
use actors::device::DeviceMsg;
use actors::root::RootMsg;
use actors::tenant::TenantMsg;
use serde_json::json;

use crate::auth::{AdminAuth, AdminStreamAuth};
use crate::error::ApiError;
use crate::http::openapi as doc;
use crate::state::AppState;
use protocol::error::ErrorBody;
use tree::TreeQuery;

/// How often `/admin/events` pushes a snapshot.
pub const EVENT_PERIOD: Duration = Duration::from_secs(1);

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/admin.css");
const PAGE_JS: &str = include_str!("page/admin.js");

/// Registers the admin page, tree, events and actions.
pub fn configure(cfg: &mut web::ServiceConfig) {
    tree::mark_start();
    cfg.service(page)
        .service(page_css)
        .service(page_js)
        .service(get_tree)
        .service(events)
        .service(restart_device)
        .service(disconnect_device);
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// `GET /admin`: the operator page. Holds no data; the token comes from the URL
/// fragment (`/admin#token=…`) or a sign-in form.
#[get("/admin")]
pub async fn page() -> HttpResponse {
    let mut res = asset("text/html; charset=utf-8", PAGE_HTML);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    res
}

/// `GET /admin/assets/admin.css`: the page's stylesheet.
#[get("/admin/assets/admin.css")]
pub async fn page_css() -> HttpResponse {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

/// `GET /admin/assets/admin.js`: the page's script.
#[get("/admin/assets/admin.js")]
pub async fn page_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

/// `GET /admin/tree?tenant=&q=&offset=&limit=`: the live supervision tree as JSON.
#[utoipa::path(get, path = "/admin/tree", tag = "admin",
    params(
        ("tenant" = Option<String>, Query, description = "only this tenant's device sessions"),
        ("q" = Option<String>, Query, description = "substring of a device id or address"),
        ("offset" = Option<usize>, Query, description = "device rows to skip"),
        ("limit" = Option<usize>, Query, maximum = 500, description = "device rows (default 50, at most 500, 0 for counts only)"),
    ),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = tree::Tree, description = "root, writers, tenant summaries and one page of device sessions"),
        (status = 400, body = ErrorBody, description = "`bad_request`: `offset` or `limit` not a non-negative integer"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing, or an actor did not answer in time")))]
#[get("/admin/tree")]
pub async fn get_tree(
    _: AdminAuth,
    state: web::Data<AppState>,
    query: web::Query<TreeQuery>,
) -> Result<HttpResponse, ApiError> {
    let tree = tree::build(&state, &query).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(tree))
}

fn sse_frame(tree: Result<tree::Tree, ApiError>) -> Bytes {
    match tree.and_then(|t| {
        serde_json::to_string(&t).map_err(|e| {
            tracing::error!(error = %e, "encoding the admin tree");
            ApiError::new(protocol::ErrorCode::Internal, "could not encode the tree")
        })
    }) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(e) => Bytes::from(format!(
            "event: error\ndata: {}\n\n",
            json!({"code": e.code.as_str(), "message": e.message})
        )),
    }
}

/// `GET /admin/events?tenant=&q=&offset=&limit=[&token=]`: Server-Sent Events, one
/// `data:` line with a fresh tree snapshot every second. Takes the admin token as a
/// bearer header or, for `EventSource`, as `?token=`.
#[utoipa::path(get, path = "/admin/events", tag = "admin",
    params(
        ("tenant" = Option<String>, Query, description = "only this tenant's device sessions"),
        ("q" = Option<String>, Query, description = "substring of a device id or address"),
        ("offset" = Option<usize>, Query, description = "device rows to skip"),
        ("limit" = Option<usize>, Query, maximum = 500, description = "device rows (default 50, at most 500, 0 for counts only)"),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "Server-Sent Events: `retry: 2000`, then every second one `data:` line with the `GET /admin/tree` JSON (`Tree`); a snapshot that fails is an `event: error` with `{\"code\",\"message\"}`"),
        (status = 400, body = ErrorBody, description = "`bad_request`: `offset` or `limit` not a non-negative integer"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no admin token (header or `?token=`), or not the admin token")))]
#[get("/admin/events")]
pub async fn events(
    _: AdminStreamAuth,
    state: web::Data<AppState>,
    query: web::Query<TreeQuery>,
) -> HttpResponse {
    // `token` is not a TreeQuery field: it is ignored here, read by the extractor.
    let query = query.into_inner();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (state, query, shutdown, true),
        |(state, query, mut shutdown, first)| async move {
            if first {
                // Tell EventSource how soon to reconnect, and send the first snapshot now.
                let mut out = b"retry: 2000\n\n".to_vec();
                out.extend_from_slice(&sse_frame(tree::build(&state, &query).await));
                return Some((
                    Ok::<_, actix_web::Error>(Bytes::from(out)),
                    (state, query, shutdown, false),
                ));
            }
            if *shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(EVENT_PERIOD) => {}
                _ = shutdown.changed() => return None,
            }
            let frame = sse_frame(tree::build(&state, &query).await);
            Some((Ok(frame), (state, query, shutdown, false)))
        },
    );
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// Where a device's running session is.
enum Session {
    /// On this node.
    Here(ractor::ActorRef<DeviceMsg>),
    /// On this other live node of the cluster.
    There(String),
}

async fn running_session(state: &AppState, device_id: &str) -> Result<(String, Session), ApiError> {
    let device = state
        .env
        .store
        .get_device(device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such device"))?;
    if let Some(session) = state.env.directory.running(device_id) {
        return Ok((device.tenant_id, Session::Here(session)));
    }
    // In a cluster another live node may run it (the directory's own routing answer).
    let located = state.env.directory.locate(device_id).await;
    if let Ok(actors::cluster::Locate::There(node)) = located {
        return Ok((device.tenant_id, Session::There(node)));
    }
    Err(ApiError::new(
        protocol::ErrorCode::Conflict,
        "the device has no running session (no client connected)",
    ))
}

/// `POST /admin/devices/{id}/restart`: stops the device's session; its tenant
/// supervisor starts it again and counts a restart. Its clients are closed with 1012
/// and reconnect. 409 when no session runs.
#[utoipa::path(post, path = "/admin/devices/{id}/restart", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 202, body = doc::SessionAction, description = "the session is restarting"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 404, body = ErrorBody, description = "`not_found`: no device with this id"),
        (status = 409, body = ErrorBody, description = "`conflict`: the device has no running session (no client connected)"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing, or the server is restarting")))]
#[post("/admin/devices/{id}/restart")]
pub async fn restart_device(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device_id = path.into_inner();
    let (tenant_id, session) = running_session(&state, &device_id).await?;
    if let (Session::There(node), Some(cluster)) = (&session, &state.env.cluster) {
        cluster.bus.cast(
            node,
            actors::cluster::envelope::Cast::Restart {
                device: device_id.clone(),
                tenant_id: tenant_id.clone(),
            },
        );
        tracing::info!(action = "restart", actor = %format!("device:{device_id}"), %device_id, %tenant_id, %node, "admin action: device session restart, asked of its node");
        return Ok(HttpResponse::Accepted().json(json!({
            "action": "restart",
            "device_id": device_id,
            "tenant_id": tenant_id,
            "node": node,
        })));
    }
    let root = &state.root;
    let tenant = ractor::call!(root, RootMsg::Tenant, tenant_id.clone())
        .map_err(|_| ApiError::new(protocol::ErrorCode::Unavailable, "server restarting"))?
        .ok_or_else(|| ApiError::new(protocol::ErrorCode::Unavailable, "server restarting"))?;
    let restarted = ractor::call!(tenant, TenantMsg::Restart, device_id.clone())
        .map_err(|_| ApiError::new(protocol::ErrorCode::Unavailable, "server restarting"))?;
    if !restarted {
        return Err(ApiError::new(
            protocol::ErrorCode::Conflict,
            "the device has no running session (no client connected)",
        ));
    }
    tracing::info!(action = "restart", actor = %format!("device:{device_id}"), %device_id, %tenant_id, "admin action: device session restart");
    Ok(HttpResponse::Accepted().json(json!({
        "action": "restart",
        "device_id": device_id,
        "tenant_id": tenant_id,
    })))
}

/// `POST /admin/devices/{id}/disconnect`: closes every client of the device with
/// 4001 (kicked). 409 when no session runs.
#[utoipa::path(post, path = "/admin/devices/{id}/disconnect", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 202, body = doc::SessionAction, description = "the clients are being closed with 4001"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 404, body = ErrorBody, description = "`not_found`: no device with this id"),
        (status = 409, body = ErrorBody, description = "`conflict`: the device has no running session (no client connected)"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store is failing, or the server is restarting")))]
#[post("/admin/devices/{id}/disconnect")]
pub async fn disconnect_device(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device_id = path.into_inner();
    let (tenant_id, session) = running_session(&state, &device_id).await?;
    match session {
        Session::Here(session) => session
            .cast(DeviceMsg::Kick(protocol::error::close::KICKED))
            .map_err(|_| {
                ApiError::new(protocol::ErrorCode::Conflict, "the session just stopped")
            })?,
        // Forwarded to the owning node over the bus.
        Session::There(_) => state
            .env
            .directory
            .deliver(&device_id, DeviceMsg::Kick(protocol::error::close::KICKED))
            .await
            .map_err(|e| ApiError::new(protocol::ErrorCode::Unavailable, e.to_string()))?,
    }
    tracing::info!(action = "disconnect", actor = %format!("device:{device_id}"), %device_id, %tenant_id, "admin action: device clients disconnected");
    Ok(HttpResponse::Accepted().json(json!({
        "action": "disconnect",
        "device_id": device_id,
        "tenant_id": tenant_id,
    })))
}
