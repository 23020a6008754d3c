//! The cache every part of the server goes through: typed entries in an in-process
//! layer, over an optional remote layer ([`CacheLayer`]: Redis when configured), with
//! a TTL per kind and invalidation that reaches every layer (and, through the remote
//! layer, every node's in-process layer).
//!
//! - **Reads** try the in-process layer (no decoding: entries are kept typed), then the
//!   remote one (JSON, decoded once and kept in-process), then the caller loads from
//!   the store and fills both ([`Cache::get_or_load`]).
//! - **Writes that change data** invalidate: the entry goes from every layer, and the
//!   remote layer tells the other nodes to drop theirs. Groups are also versioned: a
//!   cached copy is only ever replaced by a newer one, so a reader that loaded the old
//!   members before a change cannot put them back after it.
//! - **A remote layer that fails** degrades to the in-process layer: a failed remote
//!   read is a miss, a failed remote write is dropped, and [`Cache::remote_healthy`]
//!   says so (for `/health` and `/metrics`).
//! - The in-process layer holds at most `max_items` entries (`CACHE_MAX_ITEMS`);
//!   expired entries go first, then arbitrary ones.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::CacheCounters;

/// What is cached. Each kind has its own TTL and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKind {
    /// API key hash → tenant id (the replaced system's user sessions).
    Sessions,
    /// Tenant id → tenant record.
    Tenants,
    /// Device id → device record.
    Devices,
    /// Device id → connected / last seen.
    DeviceStatus,
    /// (tenant, address) → device id.
    Addresses,
    /// Group id → group (versioned).
    Groups,
    /// Device id → its contacts.
    Contacts,
    /// Message statistics of a finished day.
    Stats,
}

impl CacheKind {
    /// Every kind.
    pub const ALL: [CacheKind; 8] = [
        CacheKind::Sessions,
        CacheKind::Tenants,
        CacheKind::Devices,
        CacheKind::DeviceStatus,
        CacheKind::Addresses,
        CacheKind::Groups,
        CacheKind::Contacts,
        CacheKind::Stats,
    ];

    /// The kind's name (admin routes, metrics labels, remote keys).
    pub fn name(self) -> &'static str {
        match self {
            CacheKind::Sessions => "sessions",
            CacheKind::Tenants => "tenants",
            CacheKind::Devices => "devices",
            CacheKind::DeviceStatus => "device_status",
            CacheKind::Addresses => "addresses",
            CacheKind::Groups => "groups",
            CacheKind::Contacts => "contacts",
            CacheKind::Stats => "stats",
        }
    }

    /// Parses a kind's name.
    pub fn parse(s: &str) -> Option<CacheKind> {
        CacheKind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// TTL of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtls(pub [Duration; 8]);

impl Default for CacheTtls {
    /// The replaced system's: sessions 1 h, tenants 2 h, device status 5 min, contacts
    /// and groups 30 min, statistics 24 h; devices as device status, addresses as
    /// contacts.
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        CacheTtls([
            min(60),
            min(120),
            min(5),
            min(5),
            min(30),
            min(30),
            min(30),
            min(24 * 60),
        ])
    }
}

impl CacheTtls {
    /// The TTL of `kind`.
    pub fn of(&self, kind: CacheKind) -> Duration {
        self.0[kind.index()]
    }

    /// Sets the TTL of `kind`.
    pub fn set(&mut self, kind: CacheKind, ttl: Duration) {
        self.0[kind.index()] = ttl;
    }
}

/// A remote layer failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cache layer unavailable: {0}")]
pub struct CacheError(pub String);

/// A shared cache layer under the in-process one (Redis). Values are JSON text.
#[async_trait]
pub trait CacheLayer: Send + Sync + 'static {
    /// The layer's name (`redis`).
    fn name(&self) -> &'static str;
    /// The value under `key`, if present and fresh.
    async fn get(&self, kind: CacheKind, key: &str) -> Result<Option<String>, CacheError>;
    /// Stores `value` for `ttl`. With a `version`, only if no newer version is stored.
    async fn set(
        &self,
        kind: CacheKind,
        key: &str,
        value: &str,
        ttl: Duration,
        version: Option<u64>,
    ) -> Result<(), CacheError>;
    /// Removes `key`, and tells every other node to drop it from its in-process layer.
    async fn remove(&self, kind: CacheKind, key: &str) -> Result<(), CacheError>;
    /// Tells every other node to drop `key` from its in-process layer (after a
    /// versioned `set`, so that they read the new version from this layer).
    async fn announce(&self, kind: CacheKind, key: &str) -> Result<(), CacheError>;
    /// Removes every entry of `kind`, here and on every node.
    async fn remove_kind(&self, kind: CacheKind) -> Result<(), CacheError>;
    /// Entries of `kind` held (for the admin statistics; may be approximate).
    async fn size(&self, kind: CacheKind) -> Result<u64, CacheError>;
    /// Whether the last operation reached the layer.
    fn healthy(&self) -> bool;
}

struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    expires: Instant,
    version: Option<u64>,
}

/// Hit / miss counters of one kind in one layer.
struct Counters {
    memory: CacheCounters,
    remote: CacheCounters,
}

/// One line of the cache statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStat {
    /// The kind.
    pub kind: CacheKind,
    /// `memory` or the remote layer's name.
    pub layer: &'static str,
    /// Lookups answered by this layer.
    pub hits: u64,
    /// Lookups this layer could not answer.
    pub misses: u64,
    /// Entries held (`None` when the layer could not say).
    pub size: Option<u64>,
}

/// The cache (see the module doc).
pub struct Cache {
    memory: DashMap<(CacheKind, String), Entry>,
    max_items: usize,
    ttls: CacheTtls,
    remote: Option<Arc<dyn CacheLayer>>,
    counters: Vec<Counters>,
    remote_down: AtomicBool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.memory.len())
            .field("remote", &self.remote.as_ref().map(|r| r.name()))
            .finish()
    }
}

impl Cache {
    /// An in-process cache of at most `max_items` entries, over `remote` if given.
    pub fn new(max_items: usize, ttls: CacheTtls, remote: Option<Arc<dyn CacheLayer>>) -> Self {
        let remote_name = remote.as_ref().map_or("remote", |r| r.name());
        Cache {
            memory: DashMap::new(),
            max_items: max_items.max(1),
            ttls,
            counters: CacheKind::ALL
                .iter()
                .map(|k| Counters {
                    memory: CacheCounters::new(k.name(), "memory"),
                    remote: CacheCounters::new(k.name(), remote_name),
                })
                .collect(),
            remote,
            remote_down: AtomicBool::new(false),
        }
    }

    /// An in-process cache only, with default TTLs (tests, tools).
    pub fn in_memory(max_items: usize) -> Self {
        Self::new(max_items, CacheTtls::default(), None)
    }

    /// The remote layer's name and whether it works, if there is one.
    pub fn remote_healthy(&self) -> Option<(&'static str, bool)> {
        self.remote.as_ref().map(|r| {
            (
                r.name(),
                r.healthy() && !self.remote_down.load(Ordering::Relaxed),
            )
        })
    }

    fn note_remote<T>(&self, result: Result<T, CacheError>) -> Option<T> {
        match result {
            Ok(v) => {
                if self.remote_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("cache: remote layer reachable again");
                }
                Some(v)
            }
            Err(e) => {
                if !self.remote_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cache: remote layer unreachable; serving from memory");
                }
                None
            }
        }
    }

    fn memory_get<T: Send + Sync + 'static>(&self, kind: CacheKind, key: &str) -> Option<Arc<T>> {
        let k = (kind, key.to_owned());
        let hit = self
            .memory
            .get(&k)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.value.clone());
        hit.and_then(|v| v.downcast::<T>().ok())
    }

    fn memory_set<T: Send + Sync + 'static>(
        &self,
        kind: CacheKind,
        key: &str,
        value: Arc<T>,
        version: Option<u64>,
    ) {
        if self.memory.len() >= self.max_items {
            let now = Instant::now();
            self.memory.retain(|_, e| e.expires > now);
            if self.memory.len() >= self.max_items {
                // Full of live entries: drop about a sixteenth, arbitrary ones.
                let drop: Vec<(CacheKind, String)> = self
                    .memory
                    .iter()
                    .take(self.max_items / 16 + 1)
                    .map(|e| e.key().clone())
                    .collect();
                for k in drop {
                    self.memory.remove(&k);
                }
            }
        }
        let entry = Entry {
            value,
            expires: Instant::now() + self.ttls.of(kind),
            version,
        };
        match self.memory.entry((kind, key.to_owned())) {
            dashmap::Entry::Occupied(mut e) => {
                let newer = match (e.get().version, version) {
                    (Some(old), Some(new)) => new >= old,
                    _ => true,
                };
                if newer || e.get().expires <= Instant::now() {
                    e.insert(entry);
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(entry);
            }
        }
    }

    /// The cached value of `key`, from the first layer that has it.
    pub async fn get<T>(&self, kind: CacheKind, key: &str) -> Option<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let counters = &self.counters[kind.index()];
        if let Some(v) = self.memory_get::<T>(kind, key) {
            counters.memory.hit();
            return Some(v);
        }
        counters.memory.miss();
        let remote = self.remote.as_ref()?;
        let found = self.note_remote(remote.get(kind, key).await).flatten();
        let Some(text) = found else {
            counters.remote.miss();
            return None;
        };
        match serde_json::from_str::<VersionedOut<T>>(&text) {
            Ok(v) => {
                counters.remote.hit();
                let value = Arc::new(v.value);
                self.memory_set(kind, key, value.clone(), v.version);
                Some(value)
            }
            Err(e) => {
                tracing::warn!(kind = kind.name(), error = %e, "cache: undecodable remote entry");
                counters.remote.miss();
                None
            }
        }
    }

    /// Stores `value` in every layer.
    pub async fn set<T>(&self, kind: CacheKind, key: &str, value: Arc<T>)
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.store(kind, key, value, None).await;
    }

    /// Stores `value` at `version` in every layer, unless a newer version is there.
    pub async fn set_versioned<T>(&self, kind: CacheKind, key: &str, value: Arc<T>, version: u64)
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.store(kind, key, value, Some(version)).await;
    }

    async fn store<T>(&self, kind: CacheKind, key: &str, value: Arc<T>, version: Option<u64>)
    where
        T: Serialize + Send + Sync + 'static,
    {
        if let Some(remote) = &self.remote {
            let text = serde_json::to_string(&VersionedIn {
                version,
                value: &*value,
            });
            match text {
                Ok(text) => {
                    let ttl = self.ttls.of(kind);
                    let _ = self.note_remote(remote.set(kind, key, &text, ttl, version).await);
                }
                Err(e) => {
                    tracing::warn!(kind = kind.name(), error = %e, "cache: unencodable entry")
                }
            }
        }
        self.memory_set(kind, key, value, version);
    }

    /// The cached value, or `load`'s (then cached when it found something).
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        kind: CacheKind,
        key: &str,
        load: F,
    ) -> Result<Option<Arc<T>>, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, E>>,
    {
        if let Some(v) = self.get::<T>(kind, key).await {
            return Ok(Some(v));
        }
        match load().await? {
            Some(v) => {
                let v = Arc::new(v);
                self.set(kind, key, v.clone()).await;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// `key` changed: dropped from every layer and every node.
    pub async fn invalidate(&self, kind: CacheKind, key: &str) {
        self.evict_local(kind, key);
        if let Some(remote) = &self.remote {
            let _ = self.note_remote(remote.remove(kind, key).await);
        }
    }

    /// A new `version` of `key` replaces older copies in every layer and on every node;
    /// a concurrent writer of an older version never wins, whatever the order.
    pub async fn replace_versioned<T>(
        &self,
        kind: CacheKind,
        key: &str,
        value: Arc<T>,
        version: u64,
    ) where
        T: Serialize + Send + Sync + 'static,
    {
        self.store(kind, key, value, Some(version)).await;
        if let Some(remote) = &self.remote {
            let _ = self.note_remote(remote.announce(kind, key).await);
        }
    }

    /// Every entry of `kind` dropped from every layer and every node.
    pub async fn invalidate_kind(&self, kind: CacheKind) {
        self.evict_local_kind(kind);
        if let Some(remote) = &self.remote {
            let _ = self.note_remote(remote.remove_kind(kind).await);
        }
    }

    /// Drops `key` from this node's in-process layer only (another node invalidated it).
    pub fn evict_local(&self, kind: CacheKind, key: &str) {
        self.memory.remove(&(kind, key.to_owned()));
    }

    /// Drops every entry of `kind` from this node's in-process layer only.
    pub fn evict_local_kind(&self, kind: CacheKind) {
        self.memory.retain(|k, _| k.0 != kind);
    }

    /// Entries in the in-process layer.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// Hits, misses and size per kind and layer.
    pub async fn stats(&self) -> Vec<CacheStat> {
        let mut sizes = [0u64; 8];
        for e in self.memory.iter() {
            sizes[e.key().0.index()] += 1;
        }
        let mut out = Vec::new();
        for kind in CacheKind::ALL {
            let c = &self.counters[kind.index()];
            let (hits, misses) = c.memory.get();
            out.push(CacheStat {
                kind,
                layer: "memory",
                hits,
                misses,
                size: Some(sizes[kind.index()]),
            });
            if let Some(remote) = &self.remote {
                let (hits, misses) = c.remote.get();
                let size = remote.size(kind).await.ok();
                out.push(CacheStat {
                    kind,
                    layer: remote.name(),
                    hits,
                    misses,
                    size,
                });
            }
        }
        out
    }
}

/// A remote entry as written: the value and its version, if any.
#[derive(Serialize)]
struct VersionedIn<'a, T> {
    #[serde(rename = "v", skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(rename = "d")]
    value: &'a T,
}

/// A remote entry as read.
#[derive(serde::Deserialize)]
struct VersionedOut<T> {
    #[serde(rename = "v", default)]
    version: Option<u64>,
    #[serde(rename = "d")]
    value: T,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn typed_entries_with_versions_and_invalidation() {
        let cache = Cache::in_memory(100);
        assert!(cache
            .get::<String>(CacheKind::Addresses, "k")
            .await
            .is_none());
        cache
            .set(CacheKind::Addresses, "k", Arc::new("d_1".to_owned()))
            .await;
        assert_eq!(
            cache
                .get::<String>(CacheKind::Addresses, "k")
                .await
                .as_deref(),
            Some(&"d_1".to_owned())
        );
        // Kinds are separate.
        assert!(cache.get::<String>(CacheKind::Devices, "k").await.is_none());
        // An older version never replaces a newer one.
        cache
            .set_versioned(CacheKind::Groups, "g", Arc::new(2u32), 2)
            .await;
        cache
            .set_versioned(CacheKind::Groups, "g", Arc::new(1u32), 1)
            .await;
        assert_eq!(*cache.get::<u32>(CacheKind::Groups, "g").await.unwrap(), 2);
        cache.invalidate(CacheKind::Groups, "g").await;
        assert!(cache.get::<u32>(CacheKind::Groups, "g").await.is_none());
        let stats = cache.stats().await;
        let a = stats
            .iter()
            .find(|s| s.kind == CacheKind::Addresses)
            .unwrap();
        assert_eq!((a.hits, a.misses, a.size), (1, 1, Some(1)));
    }

    #[tokio::test]
    async fn the_memory_layer_stays_bounded() {
        let cache = Cache::in_memory(64);
        for i in 0..1000 {
            cache
                .set(CacheKind::Devices, &i.to_string(), Arc::new(i))
                .await;
        }
        assert!(cache.memory_len() <= 64, "{}", cache.memory_len());
        // The newest entry is there.
        assert_eq!(
            *cache.get::<i32>(CacheKind::Devices, "999").await.unwrap(),
            999
        );
    }
}
