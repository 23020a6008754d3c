//! The Redis cache layer: the shared level under every node's in-process cache, and
//! the channel that carries invalidations to every node.
//!
//! - Entries are `<prefix>:c:<kind>:<key>` strings (prefix `sb` by default) with a TTL
//!   (`SET … PX`); a versioned set (groups) is one Lua script that keeps a newer
//!   stored version.
//! - An invalidation deletes the key and publishes `<kind>␟<key>␟<node>` on
//!   `<prefix>:invalidate`; every node's subscriber drops that entry from its in-process
//!   layer. A subscriber that lost its connection drops its whole in-process layer when
//!   it is back (it may have missed invalidations meanwhile).
//! - Commands go through a [`ConnectionManager`] (one multiplexed connection that
//!   reconnects by itself; a command fails fast, within its response timeout, while
//!   Redis is away); the subscriber has its own connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actors::cache::{Cache, CacheError, CacheKind, CacheLayer};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

/// Separates the fields of an invalidation message.
const SEP: char = '\u{1f}';

/// Sets a value unless a newer version is stored (`ARGV`: value, ttl ms, version).
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and obj['v'] and tonumber(obj['v']) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

fn channel(prefix: &str) -> String {
    format!("{prefix}:invalidate")
}

/// A Redis URL with its password replaced by `***` (for logs).
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The Redis layer of the cache.
pub struct RedisLayer {
    prefix: String,
    conn: ConnectionManager,
    script: redis::Script,
    node: String,
    healthy: Arc<AtomicBool>,
    commands: metrics::Counter,
}

impl RedisLayer {
    /// Connects lazily (the server starts, and serves from memory, while Redis is
    /// away) to `url`; `node` names this node in invalidations.
    pub fn connect(
        url: &str,
        prefix: &str,
        node: &str,
    ) -> Result<(RedisLayer, redis::Client), String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok((
            RedisLayer {
                prefix: prefix.to_owned(),
                conn,
                script: redis::Script::new(SET_IF_NEWER),
                node: node.to_owned(),
                healthy: Arc::new(AtomicBool::new(true)),
                commands: metrics::counter!(crate::metrics::names::REDIS_COMMANDS),
            },
            client,
        ))
    }

    fn key(&self, kind: CacheKind, key: &str) -> String {
        format!("{}:c:{}:{key}", self.prefix, kind.name())
    }

    fn note<T>(&self, result: redis::RedisResult<T>) -> Result<T, CacheError> {
        self.commands.increment(1);
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result.map_err(|e| CacheError(e.to_string()))
    }

    async fn publish(&self, kind: CacheKind, key: &str) -> Result<(), CacheError> {
        let message = format!("{}{SEP}{key}{SEP}{}", kind.name(), self.node);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = conn.publish(channel(&self.prefix), message).await;
        self.note(r).map(|_| ())
    }

    /// Keys of `kind`, scanned (for removal and the statistics).
    async fn scan(&self, kind: CacheKind) -> Result<Vec<String>, CacheError> {
        let mut conn = self.conn.clone();
        let pattern = self.key(kind, "*");
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let (next, batch) = self.note(r)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= 1_000_000 {
                return Ok(keys);
            }
        }
    }
}

#[async_trait]
impl CacheLayer for RedisLayer {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, kind: CacheKind, k: &str) -> Result<Option<String>, CacheError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = conn.get(self.key(kind, k)).await;
        self.note(r)
    }

    async fn set(
        &self,
        kind: CacheKind,
        k: &str,
        value: &str,
        ttl: Duration,
        version: Option<u64>,
    ) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        match version {
            None => {
                let r: redis::RedisResult<()> = conn.pset_ex(self.key(kind, k), value, ms).await;
                self.note(r)
            }
            Some(v) => {
                let r: redis::RedisResult<i64> = self
                    .script
                    .key(self.key(kind, k))
                    .arg(value)
                    .arg(ms)
                    .arg(v)
                    .invoke_async(&mut conn)
                    .await;
                self.note(r).map(|_| ())
            }
        }
    }

    async fn remove(&self, kind: CacheKind, k: &str) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = conn.del(self.key(kind, k)).await;
        self.note(r)?;
        self.publish(kind, k).await
    }

    async fn announce(&self, kind: CacheKind, k: &str) -> Result<(), CacheError> {
        self.publish(kind, k).await
    }

    async fn remove_kind(&self, kind: CacheKind) -> Result<(), CacheError> {
        let keys = self.scan(kind).await?;
        for chunk in keys.chunks(500) {
            let mut conn = self.conn.clone();
            let r: redis::RedisResult<i64> = conn.del(chunk).await;
            self.note(r)?;
        }
        self.publish(kind, "*").await
    }

    async fn size(&self, kind: CacheKind) -> Result<u64, CacheError> {
        Ok(self.scan(kind).await?.len() as u64)
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Drops from `cache`'s in-process layer what other nodes invalidate, for as long as
/// the cache lives; reconnects by itself.
pub fn spawn_subscriber(client: redis::Client, prefix: &str, cache: Weak<Cache>, node: String) {
    let channel = channel(prefix);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        let mut lost = false;
        loop {
            if cache.strong_count() == 0 {
                return;
            }
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        if lost {
                            // Invalidations may have been missed meanwhile.
                            if let Some(c) = cache.upgrade() {
                                for kind in CacheKind::ALL {
                                    c.evict_local_kind(kind);
                                }
                            }
                            tracing::info!(
                                "cache: invalidation channel back; in-process layer dropped"
                            );
                        }
                        delay = Duration::from_millis(100);
                        let mut stream = pubsub.into_on_message();
                        while let Some(msg) = stream.next().await {
                            let Some(c) = cache.upgrade() else { return };
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            apply(&c, &text, &node);
                        }
                        lost = true;
                        tracing::warn!("cache: invalidation channel lost; reconnecting");
                    }
                    Err(e) => {
                        lost = true;
                        tracing::debug!(error = %e, "cache: subscribe failed");
                    }
                },
                Err(e) => {
                    lost = true;
                    tracing::debug!(error = %e, "cache: invalidation channel unreachable");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// Applies one invalidation message (`kind␟key␟node`) from another node.
fn apply(cache: &Cache, text: &str, own_node: &str) {
    let mut parts = text.split(SEP);
    let (Some(kind), Some(key), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    if node == own_node {
        return;
    }
    let Some(kind) = CacheKind::parse(kind) else {
        return;
    };
    if key == "*" {
        cache.evict_local_kind(kind);
    } else {
        cache.evict_local(kind, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redacted("redis://user:pw@h/1"), "redis://user:***@h/1");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }
}
