//! The cache the server builds from its configuration: the in-process layer always,
//! the Redis layer under it when `REDIS_URL` (or `REDIS_HOST`…) is set.

pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use actors::cache::{Cache, CacheKind, CacheLayer, CacheTtls};

use crate::config::Config;

/// The TTL of each kind from the configuration (the replaced system's variables).
pub fn ttls(config: &Config) -> CacheTtls {
    let mut t = CacheTtls::default();
    let secs = Duration::from_secs;
    if let Some(s) = config.cache_ttl_user_session {
        t.set(CacheKind::Sessions, secs(s));
    }
    if let Some(s) = config.cache_ttl_whatsapp_contacts {
        t.set(CacheKind::Contacts, secs(s));
        t.set(CacheKind::Addresses, secs(s));
    }
    if let Some(s) = config.cache_ttl_device_status {
        t.set(CacheKind::DeviceStatus, secs(s));
        t.set(CacheKind::Devices, secs(s));
    }
    if let Some(s) = config.cache_ttl_groups {
        t.set(CacheKind::Groups, secs(s));
    }
    if let Some(s) = config.cache_ttl_tenants {
        t.set(CacheKind::Tenants, secs(s));
    }
    if let Some(s) = config.cache_ttl_stats {
        t.set(CacheKind::Stats, secs(s));
    }
    t
}

/// Builds the cache; with Redis configured, also starts the invalidation subscriber.
pub fn build(config: &Config, node: &str) -> Result<Arc<Cache>, String> {
    let Some(url) = config.redis_url() else {
        return Ok(Arc::new(Cache::new(
            config.cache_max_items,
            ttls(config),
            None,
        )));
    };
    let (layer, client) = redis::RedisLayer::connect(&url, &config.redis_prefix, node)?;
    tracing::info!(url = %redis::redacted(&url), "cache: Redis layer");
    let layer: Arc<dyn CacheLayer> = Arc::new(layer);
    let cache = Arc::new(Cache::new(
        config.cache_max_items,
        ttls(config),
        Some(layer),
    ));
    redis::spawn_subscriber(
        client,
        &config.redis_prefix,
        Arc::downgrade(&cache),
        node.to_owned(),
    );
    Ok(cache)
}
