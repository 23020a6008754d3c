//! Operator statistics behind the admin token: `GET /admin/cache/stats` (every cache,
//! by kind and layer) and `GET /admin/db/stats` (tables, indexes and their use, slow
//! store operations).

use actix_web::{delete, get, web, HttpResponse};
use actors::cache::CacheKind;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::openapi as doc;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// Counters of one cache kind in one layer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheStat {
    /// What it caches: `sessions` (API keys), `tenants`, `devices`, `device_status`,
    /// `addresses`, `groups`, `contacts`, `stats`; `all` in the total.
    pub kind: &'static str,
    /// Where it lives: `memory` (in-process) or `redis` (when configured).
    pub layer: &'static str,
    /// Lookups answered by this layer.
    pub hits: u64,
    /// Lookups this layer could not answer.
    pub misses: u64,
    /// `hits / (hits + misses)`, null before the first lookup.
    pub hit_rate: Option<f64>,
    /// Entries held now (null when the layer could not say).
    pub size: Option<u64>,
}

impl CacheStat {
    fn new(
        kind: &'static str,
        layer: &'static str,
        hits: u64,
        misses: u64,
        size: Option<u64>,
    ) -> Self {
        let total = hits + misses;
        CacheStat {
            kind,
            layer,
            hits,
            misses,
            hit_rate: (total > 0).then(|| hits as f64 / total as f64),
            size,
        }
    }
}

/// Answer of `GET /admin/cache/stats`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheStats {
    /// One entry per cache kind and layer.
    pub caches: Vec<CacheStat>,
    /// Over every kind, per layer: a lookup answered by the first layer (memory) is
    /// its hit; `hit_rate` here is the share of lookups answered by any layer.
    pub total: CacheStat,
}

/// `GET /admin/cache/stats`: hits, misses, hit rate and size of every cache, per kind
/// and layer, since the server started.
#[utoipa::path(get, path = "/admin/cache/stats", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = CacheStats, description = "every cache, by kind and layer"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN)))]
#[get("/admin/cache/stats")]
pub async fn cache_stats(_: AdminAuth, state: web::Data<AppState>) -> HttpResponse {
    let stats = state.env.cache.stats().await;
    let caches: Vec<CacheStat> = stats
        .iter()
        .map(|s| CacheStat::new(s.kind.name(), s.layer, s.hits, s.misses, s.size))
        .collect();
    // Every lookup starts in memory: its hits plus the remote layer's are answered.
    let lookups: u64 = stats
        .iter()
        .filter(|s| s.layer == "memory")
        .map(|s| s.hits + s.misses)
        .sum();
    let answered: u64 = stats.iter().map(|s| s.hits).sum();
    let size = stats
        .iter()
        .filter(|s| s.layer == "memory")
        .filter_map(|s| s.size)
        .sum();
    let total = CacheStat::new(
        "all",
        "all",
        answered,
        lookups.saturating_sub(answered),
        Some(size),
    );
    HttpResponse::Ok().json(CacheStats { caches, total })
}

fn cache_kind(name: &str) -> Result<CacheKind, ApiError> {
    CacheKind::parse(name).ok_or_else(|| {
        let kinds: Vec<&str> = CacheKind::ALL.iter().map(|k| k.name()).collect();
        ApiError::bad_request(format!(
            "unknown cache kind {}; one of {}",
            protocol::validate::quoted(name),
            kinds.join(", ")
        ))
    })
}

/// `DELETE /admin/cache/{kind}`: drops every entry of a kind, from every layer and
/// every node (the replaced system's admin cache management). Logged.
#[utoipa::path(delete, path = "/admin/cache/{kind}", tag = "admin",
    security(("admin_token" = [])),
    params(("kind" = String, Path, description = "sessions, tenants, devices, device_status, addresses, groups, contacts or stats")),
    responses(
        (status = 204, description = "cleared"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not a cache kind"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN)))]
#[delete("/admin/cache/{kind}")]
pub async fn clear_cache_kind(
    _: AdminAuth,
    state: web::Data<AppState>,
    kind: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let kind = cache_kind(&kind)?;
    state.env.cache.invalidate_kind(kind).await;
    tracing::info!(kind = kind.name(), "admin: cache kind cleared");
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /admin/cache/{kind}/{key}`: drops one entry, from every layer and every
/// node. Logged.
#[utoipa::path(delete, path = "/admin/cache/{kind}/{key}", tag = "admin",
    params(("kind" = String, Path, description = "the cache kind"),
           ("key" = String, Path, description = "the entry's key (a device id, group id, `tenant/address`…)")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "cleared (also when there was no such entry)"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not a cache kind"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN)))]
#[delete("/admin/cache/{kind}/{key:.*}")]
pub async fn clear_cache_entry(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, key) = path.into_inner();
    let kind = cache_kind(&kind)?;
    state.env.cache.invalidate(kind, &key).await;
    tracing::info!(kind = kind.name(), %key, "admin: cache entry cleared");
    Ok(HttpResponse::NoContent().finish())
}

/// Query of `GET /admin/db/stats`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DbStatsQuery {
    /// Slow operations of the last this many hours (default 24).
    pub hours: Option<u64>,
}

/// `GET /admin/db/stats?hours=24`: per table its rows, size and indexes with the
/// operations whose query plan uses each (and their call counts), per-operation call
/// counts and timings, and the store operations slower than `slow_query_ms` in the
/// last `hours`.
#[utoipa::path(get, path = "/admin/db/stats", tag = "admin", params(DbStatsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = doc::DbStats, description = "database statistics"),
        (status = 400, body = ErrorBody, description = "`bad_request`: `hours` not a non-negative integer"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/admin/db/stats")]
pub async fn db_stats(
    _: AdminAuth,
    state: web::Data<AppState>,
    query: web::Query<DbStatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let hours = query.hours.unwrap_or(24).min(24 * 365);
    let timing = &state.timing;
    let backend = state.store_admin.admin_stats(&timing.calls()).await?;
    let window_ms = i64::try_from(hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
    let since = actors::clock::now_ms().saturating_sub(window_ms);
    let mut body = json!({
        "backend": state.env.store.backend(),
        "operations": timing.operations(),
        "slow_operations": {
            "threshold_ms": timing.threshold_ms(),
            "hours": hours,
            "capacity": crate::store::timed::SLOW_LOG_CAPACITY,
            "items": timing.slow_since(since),
        },
    });
    // The backend's own part (tables or collections, indexes, plans) beside them.
    if let (Some(out), serde_json::Value::Object(extra)) = (body.as_object_mut(), backend) {
        out.extend(extra);
    }
    Ok(HttpResponse::Ok().json(body))
}
