//! What the OpenAPI document (`GET /openapi.json`, [`super::ops::ApiDoc`]) shares
//! between routes: the two security schemes, the wording of the error answers every
//! route may give (one place, so routes say the same thing the same way), and the
//! schemas of answers that handlers build as ad hoc JSON.
//!
//! A route documents every status it can answer. Which ones, comes from its
//! extractors and handler: [`crate::auth`] (401), [`super::body::ApiJson`] (400 bad
//! JSON, 413 over the byte limit, 415 not JSON), `web::Query` (400), the store (503
//! `unavailable` when it fails, 500 `internal` when its data is unreadable) and the
//! handler's own checks. `tests/e2e/openapi.rs` sends every operation bad input and
//! fails on an answer the document does not list.

#![allow(dead_code)] // The schema types below describe JSON built elsewhere.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{Modify, ToSchema};

/// Security scheme of the `/v1` routes: the tenant's API key as a bearer token.
pub const TENANT_KEY: &str = "tenant_key";
/// Security scheme of the `/admin` routes: the admin token as a bearer token.
pub const ADMIN_TOKEN: &str = "admin_token";
/// `GET /admin/events` only: the admin token as `?token=` (for `EventSource`).
pub const ADMIN_TOKEN_QUERY: &str = "admin_token_query";

/// Adds the security schemes to the document's components.
pub struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TENANT_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_<64 hex digits>")
                    .description(Some(
                        "The tenant's API key, as `POST /admin/tenants` showed it once: \
                         `Authorization: Bearer sk_…`. Every `/v1` route takes it; a resource \
                         of another tenant answers 403.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`ADMIN_TOKEN`, or generated on first start and kept \
                         in the data directory): `Authorization: Bearer <token>`. Only \
                         `/admin` routes take it; tenant keys are refused there.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The admin token as `?token=`, for `EventSource` (which cannot send \
                 headers); only `GET /admin/events` takes it.",
            ))),
        );
    }
}

/// Every operation of the document.
fn operations(openapi: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// Mends what utoipa 5.5 writes wrong: a link's `operationId` / `operationRef` come
/// out as `operation_id` / `operation_ref` (its `Link` has no camelCase rename), which
/// OpenAPI does not know; and an optional body (`Option<T>`) is documented as
/// "`T` or `null`", while a JSON `null` is refused (absent is what is optional).
pub struct Mend;

impl Modify for Mend {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for op in operations(openapi) {
            for response in op.responses.responses.values_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                for link in response.links.values_mut() {
                    let RefOr::T(link) = link else { continue };
                    let moved = [
                        ("operationId", std::mem::take(&mut link.operation_id)),
                        ("operationRef", std::mem::take(&mut link.operation_ref)),
                    ];
                    for (key, value) in moved.into_iter().filter(|(_, v)| !v.is_empty()) {
                        link.extensions
                            .get_or_insert_with(Default::default)
                            .insert(key.to_owned(), value.into());
                    }
                }
            }
            let Some(body) = &mut op.request_body else {
                continue;
            };
            if body.required == Some(utoipa::openapi::Required::True) {
                continue;
            }
            for content in body.content.values_mut() {
                // `oneOf: [{type: null}, T]` → `T`.
                let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
                    continue;
                };
                let inner: Vec<&RefOr<Schema>> = one_of
                    .items
                    .iter()
                    .filter(|s| !matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::Type::Null)))
                    .collect();
                if let [RefOr::Ref(r)] = inner.as_slice() {
                    content.schema = Some(RefOr::Ref(Ref::new(r.ref_location.clone())));
                }
            }
        }
    }
}

// ---- Error answers: one wording per cause (body: `protocol::error::ErrorBody`) ----

/// 401 of `/v1` routes.
pub const NO_KEY: &str = "`unauthorized`: no API key, or not a valid one (an admin token or a \
     device token is not an API key)";
/// 401 of `/admin` routes.
pub const NO_ADMIN: &str =
    "`unauthorized`: no admin token, or not the admin token (a tenant key is not)";
/// 400 of routes with a JSON body.
pub const BAD_JSON: &str =
    "`bad_request`: the body is missing, not JSON, or not of the documented shape";
/// 413 of routes bounded by `max_request_bytes`.
pub const TOO_LARGE: &str = "`too_large`: the body is over `max_request_bytes` (64 KiB by default)";
/// 415 of routes with a JSON body.
pub const NOT_JSON: &str = "`unsupported_media_type`: `Content-Type` is not `application/json`";
/// 400 of routes with a query string.
pub const BAD_QUERY: &str = "`bad_request`: a query parameter is not of its documented type";
/// 403 of routes on a tenant's device.
pub const OTHER_TENANTS_DEVICE: &str = "`forbidden`: the device belongs to another tenant";
/// 404 of routes on a device.
pub const NO_DEVICE: &str = "`not_found`: no device with this id";
/// 403 of routes on a group.
pub const OTHER_TENANTS_GROUP: &str = "`forbidden`: the group belongs to another tenant";
/// 404 of routes on a group.
pub const NO_GROUP: &str = "`not_found`: no group with this id";
/// 403 of routes on a job.
pub const OTHER_TENANTS_JOB: &str = "`forbidden`: the job belongs to another tenant";
/// 404 of routes on a job.
pub const NO_JOB: &str = "`not_found`: no job with this id";
/// 403 of the webhook routes.
pub const OTHER_TENANTS_WEBHOOK: &str = "`forbidden`: the endpoint belongs to another tenant";
/// 404 of the webhook routes.
pub const NO_WEBHOOK: &str = "`not_found`: no webhook endpoint with this id";
/// 503 of routes that read or write the store.
pub const UNAVAILABLE: &str =
    "`unavailable`: the store is failing (or the server restarting); retry later";
/// 500 of routes that read stored data.
pub const INTERNAL: &str = "`internal`: stored data could not be read";

// ---- Schemas of answers built as ad hoc JSON ----

/// `202` of `PUT /v1/devices/{id}/contacts`: the contacts became a background job.
#[derive(ToSchema)]
pub struct JobQueued {
    /// The job; its progress at `GET /v1/jobs/{id}`.
    pub job_id: String,
}

/// Answer of `POST /admin/queues/restart`.
#[derive(ToSchema)]
pub struct DispatcherRestarted {
    /// Whether a running dispatcher was stopped.
    pub restarted: bool,
    /// Whether a dispatcher runs again now.
    pub running: bool,
}

/// Answer of `POST /admin/queues/lanes/{lane}/pause` and `…/resume`.
#[derive(ToSchema)]
pub struct LaneChange {
    /// The lane: `critical`, `high`, `normal` or `low`.
    pub lane: String,
    /// Whether the lane is paused now.
    pub paused: bool,
    /// Whether this call changed it.
    pub changed: bool,
}

/// `202` of `POST /admin/devices/{id}/restart` and `…/disconnect`.
#[derive(ToSchema)]
pub struct SessionAction {
    /// `restart` or `disconnect`.
    pub action: String,
    /// The device.
    pub device_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// In a cluster, the node that runs the session and was asked to act.
    pub node: Option<String>,
}

/// `GET /health` answer (200 ready, 503 not ready).
#[derive(ToSchema)]
pub struct Health {
    /// Overall state.
    pub status: HealthStatus,
    /// Whether the actor tree's root runs.
    pub live: bool,
    /// Whether the node serves: store answering, actor tree up, not draining.
    pub ready: bool,
    /// Whether the node is draining.
    pub shutting_down: bool,
    /// Each dependency.
    pub checks: HealthChecks,
    /// Device sessions running on this node.
    pub sessions: u64,
}

/// Overall state of `GET /health`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Ready, every dependency up.
    Ok,
    /// Ready, but a cache layer is away (serving from memory).
    Degraded,
    /// Not ready (503).
    Unavailable,
}

/// The checks of `GET /health`.
#[derive(ToSchema)]
pub struct HealthChecks {
    /// The store.
    pub store: StoreCheck,
    /// The cache layers.
    pub cache: CacheCheck,
    /// The actor tree.
    pub actors: ActorsCheck,
}

/// The store's check.
#[derive(ToSchema)]
pub struct StoreCheck {
    /// `sqlite` or `mongodb`.
    pub backend: String,
    /// Whether it answered.
    pub ok: bool,
    /// How long it took to answer, ms.
    pub latency_ms: f64,
    /// Why not (never the store's own text).
    pub error: Option<String>,
}

/// The cache's check.
#[derive(ToSchema)]
pub struct CacheCheck {
    /// `memory`, then `redis` when configured.
    pub layers: Vec<String>,
    /// Whether every layer answers.
    pub ok: bool,
    /// `ok` or `degraded` (serving from memory).
    pub state: String,
}

/// The actor tree's check.
#[derive(ToSchema)]
pub struct ActorsCheck {
    /// Root, writers and dispatcher all run.
    pub ok: bool,
    /// The root supervisor runs.
    pub root: bool,
    /// Every persistence writer runs.
    pub writers: bool,
    /// The queue dispatcher runs.
    pub dispatcher: bool,
}

/// `GET /admin/db/stats` answer; the backend adds its own part beside these fields
/// (SQLite: `database`, `tables`; MongoDB: its collections and indexes).
#[derive(ToSchema)]
pub struct DbStats {
    /// `sqlite` or `mongodb`.
    pub backend: String,
    /// Calls and timings of every store operation since start.
    pub operations: Vec<crate::store::timed::OpStat>,
    /// Operations slower than `slow_query_ms`.
    pub slow_operations: SlowOperations,
}

/// The slow-operation log of `GET /admin/db/stats`.
#[derive(ToSchema)]
pub struct SlowOperations {
    /// The threshold (`slow_query_ms`).
    pub threshold_ms: u64,
    /// The window asked for (`hours`, at most a year).
    pub hours: u64,
    /// Entries kept at most.
    pub capacity: usize,
    /// The slow operations in the window, oldest first.
    pub items: Vec<crate::store::timed::SlowOp>,
}
