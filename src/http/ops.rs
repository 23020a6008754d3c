//! `/health` and `/openapi.json`.

use actix_web::{get, web, HttpResponse};
use serde_json::json;
use utoipa::OpenApi;

use super::openapi::{Mend, SecuritySchemes};
use crate::state::AppState;

/// The REST API description, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Multi-tenant realtime messaging server. \
        Admin routes take `Authorization: Bearer <ADMIN_TOKEN>` (security scheme `admin_token`), \
        `/v1` routes the tenant's API key (`tenant_key`); `/health` and `/metrics` are public. \
        Every error answers `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`) with the status \
        of its code (`ErrorCode`); `rate_limited` (429) also carries `Retry-After` (seconds) \
        and `retry_after_ms`. Request bodies are bounded in bytes: `max_request_bytes` \
        (64 KiB by default), `max_bulk_bytes` for `POST /v1/messages/bulk` and \
        `max_contacts_bytes` for `PUT /v1/devices/{id}/contacts` (16 MiB each by default); \
        a longer body answers 413 before it is read. The WebSocket protocol \
        (`GET /v1/ws?token=`) is described in protocol/README.md."
    ),
    modifiers(&SecuritySchemes, &Mend),
    tags(
        (name = "admin", description = "Tenants and operations, behind the admin token"),
        (name = "devices", description = "Devices (phone-number endpoints) and their tokens"),
        (name = "contacts", description = "A device's contacts"),
        (name = "groups", description = "Groups of addresses"),
        (name = "messages", description = "Synchronous sends, inbox history, per-recipient status"),
        (name = "jobs", description = "Bulk sends and background jobs"),
        (name = "media", description = "Uploaded files: upload, processing, metadata, the file and its thumbnail (API key or device token)"),
        (name = "stats", description = "Message statistics"),
        (name = "operations", description = "Public probes: health and metrics"),
    ),
    paths(
        super::admin::create_tenant,
        super::devices::create_device,
        super::devices::list_devices,
        super::devices::get_device,
        super::devices::delete_device,
        super::devices::create_token,
        super::devices::put_contacts,
        super::devices::get_contacts,
        super::groups::create_group,
        super::groups::get_group,
        super::groups::add_members,
        super::groups::remove_member,
        super::group_sync::sync_groups,
        super::notifications::notify,
        super::messages::send_message,
        super::messages::history,
        super::messages::get_message,
        super::messages::get_message_by_client_id,
        super::jobs::bulk_send,
        super::jobs::get_job,
        super::jobs::cancel_job,
        super::jobs::retry_job,
        super::media::upload,
        super::media::get_meta,
        super::media::get_file,
        super::media::get_thumbnail,
        super::queues::queue_stats,
        super::queues::restart_queues,
        super::queues::pause_lane,
        super::queues::resume_lane,
        super::stats::message_stats,
        super::webhooks::create_webhook,
        super::webhooks::list_webhooks,
        super::webhooks::get_webhook,
        super::webhooks::update_webhook,
        super::webhooks::delete_webhook,
        super::webhooks::rotate_secret,
        super::webhooks::test_webhook,
        super::webhooks::deliveries,
        super::webhooks::dead_letters,
        super::webhooks::replay,
        health,
        super::admin_cluster::cluster_view,
        super::admin_cluster::device_owner,
        super::admin_ops::cache_stats,
        super::admin_ops::clear_cache_kind,
        super::admin_ops::clear_cache_entry,
        super::admin_ops::db_stats,
        crate::metrics::prometheus,
        crate::admin::get_tree,
        crate::admin::events,
        crate::admin::restart_device,
        crate::admin::disconnect_device,
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`: the OpenAPI 3 document of the REST API.
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// `GET /health`: liveness and readiness of each dependency and of the actor tree
/// (root, persistence writers, dispatcher); 503 when not ready.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "ready", body = super::openapi::Health),
              (status = 503, description = "not ready (store failing, actor tree down, or draining)",
               body = super::openapi::Health)))]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let started = std::time::Instant::now();
    let store = state.env.store.last_seq("__health__").await;
    let store_ms = started.elapsed().as_secs_f64() * 1000.0;
    let shutting_down = *state.shutdown.borrow();
    let root = actors::root::alive(&state.root);
    let writers = state.env.persistence.all_running();
    let dispatcher = state.env.dispatcher.alive();
    let tree_ok = root && writers && dispatcher;
    let ready = store.is_ok() && !shutting_down && tree_ok;
    if let Err(e) = &store {
        tracing::warn!(error = %e, "health: store check failed");
    }
    // A cache layer that is away degrades the node (it serves from memory) but does
    // not make it unready.
    let remote = state.env.cache.remote_healthy();
    let cache = match remote {
        Some((layer, ok)) => json!({
            "layers": ["memory", layer],
            "ok": ok,
            "state": if ok { "ok" } else { "degraded" },
        }),
        None => json!({"layers": ["memory"], "ok": true, "state": "ok"}),
    };
    crate::metrics::dependency_up("store", store.is_ok());
    let degraded = remote.is_some_and(|(_, ok)| !ok);
    let status = match (ready, degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    let body = json!({
        "status": status,
        "live": root,
        "ready": ready,
        "shutting_down": shutting_down,
        "checks": {
            "store": {
                "backend": state.env.store.backend(),
                "ok": store.is_ok(),
                "latency_ms": store_ms,
                "error": store.err().map(|_| "storage unavailable"),
            },
            "cache": cache,
            "actors": {
                "ok": tree_ok,
                "root": root,
                "writers": writers,
                "dispatcher": dispatcher,
            }
        },
        "sessions": state.env.directory.running_count(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
