//! Operator statistics behind the admin token: `GET /admin/cache/stats` (every cache,
//! by kind and layer) and `GET /admin/db/stats` (tables, indexes and their use, slow
//! store operations).

use std::sync::atomic::Ordering;

use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;

/// Counters of one cache.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheStat {
    /// What it caches: `api_keys`, `contacts`, `addresses`, `groups`.
    pub kind: &'static str,
    /// Where it lives: `memory` (in-process map), `session` (inside device sessions),
    /// `redis` (when configured).
    pub layer: &'static str,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// `hits / (hits + misses)`, null before the first lookup.
    pub hit_rate: Option<f64>,
    /// Entries held now.
    pub size: u64,
}

impl CacheStat {
    fn new(kind: &'static str, layer: &'static str, hits: u64, misses: u64, size: u64) -> Self {
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
    /// Over every cache.
    pub total: CacheStat,
}

/// `GET /admin/cache/stats`: hits, misses, hit rate and size of every cache, per kind
/// and layer, since the server started.
#[utoipa::path(get, path = "/admin/cache/stats", tag = "admin",
    responses((status = 200, body = CacheStats), (status = 401, body = protocol::error::ErrorBody)))]
#[get("/admin/cache/stats")]
pub async fn cache_stats(_: AdminAuth, state: web::Data<AppState>) -> HttpResponse {
    let env = &state.env;
    let (key_hits, key_misses, key_size) = state.cache.counters();
    let contacts = &env.stats.metrics;
    let (contact_hits, contact_misses) = contacts.contacts.get();
    let addresses = env.directory.address_cache_stats();
    let groups = env.directory.group_cache_stats();
    let caches = vec![
        CacheStat::new("api_keys", "memory", key_hits, key_misses, key_size as u64),
        CacheStat::new(
            "contacts",
            "session",
            contact_hits,
            contact_misses,
            contacts.contact_lists.load(Ordering::Relaxed),
        ),
        CacheStat::new(
            "addresses",
            "memory",
            addresses.hits,
            addresses.misses,
            addresses.size as u64,
        ),
        CacheStat::new(
            "groups",
            "memory",
            groups.hits,
            groups.misses,
            groups.size as u64,
        ),
    ];
    let sum = |f: fn(&CacheStat) -> u64| caches.iter().map(f).sum::<u64>();
    let total = CacheStat::new(
        "all",
        "all",
        sum(|c| c.hits),
        sum(|c| c.misses),
        sum(|c| c.size),
    );
    HttpResponse::Ok().json(CacheStats { caches, total })
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
    responses((status = 200, description = "database statistics"),
        (status = 401, body = protocol::error::ErrorBody)))]
#[get("/admin/db/stats")]
pub async fn db_stats(
    _: AdminAuth,
    state: web::Data<AppState>,
    query: web::Query<DbStatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let hours = query.hours.unwrap_or(24).min(24 * 365);
    let stats = state.sqlite.db_stats(hours).await?;
    Ok(HttpResponse::Ok().json(stats))
}
