//! A shared key/value cache with TTLs (in-process by default, Redis when configured).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

/// A string cache with per-entry TTL.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value under `key`, if present and fresh.
    async fn get(&self, key: &str) -> Option<String>;
    /// Stores `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: String, ttl: Duration);
    /// Removes `key`.
    async fn remove(&self, key: &str);
    /// (hits, misses, entries).
    fn counters(&self) -> (u64, u64, usize);
}

/// In-process cache: a sharded map with expiry checked on read, bounded in size.
#[derive(Debug)]
pub struct MemoryCache {
    entries: DashMap<String, (String, Instant)>,
    max_items: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl MemoryCache {
    /// A cache holding at most `max_items` entries.
    pub fn new(max_items: usize) -> Self {
        MemoryCache {
            entries: DashMap::new(),
            max_items,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Option<String> {
        let found = self
            .entries
            .get(key)
            .filter(|e| e.1 > Instant::now())
            .map(|e| e.0.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    async fn set(&self, key: &str, value: String, ttl: Duration) {
        if self.entries.len() >= self.max_items {
            let now = Instant::now();
            self.entries.retain(|_, e| e.1 > now);
            if self.entries.len() >= self.max_items {
                return;
            }
        }
        self.entries
            .insert(key.to_owned(), (value, Instant::now() + ttl));
    }

    async fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    fn counters(&self) -> (u64, u64, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.entries.len(),
        )
    }
}
