//! Backends implementing the actor crate's `Store` trait (SQLite, MongoDB), the
//! decorator every store runs behind (`hooked`: timing, test faults), and what the
//! admin statistics need of a backend ([`StoreAdmin`]).

use std::collections::HashMap;

use actors::store::StoreError;
use async_trait::async_trait;

/// What `/admin/db/stats` shows of a backend beyond the timings every store has:
/// its tables or collections, their indexes and use, the plans of its queries.
#[async_trait]
pub trait StoreAdmin: Send + Sync + 'static {
    /// The backend's statistics; `calls` is the number of calls of each store
    /// operation so far (to count index use where the backend keeps no counters).
    async fn admin_stats(
        &self,
        calls: &HashMap<&'static str, u64>,
    ) -> Result<serde_json::Value, StoreError>;
}

#[async_trait]
impl StoreAdmin for sqlite::SqliteStore {
    async fn admin_stats(
        &self,
        calls: &HashMap<&'static str, u64>,
    ) -> Result<serde_json::Value, StoreError> {
        let stats = self.db_stats(calls).await?;
        serde_json::to_value(stats).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

pub mod hooked;
pub mod mongo;
pub mod sqlite;
pub mod timed;

/// The last seq of the range `Store::fence_inbox(_, from, count, _)` fences (`None`:
/// an empty range); `Unavailable` past the last seq, as any seq out of range.
pub(crate) fn fence_end(from: u64, count: u64) -> Result<Option<u64>, StoreError> {
    if count == 0 {
        return Ok(None);
    }
    from.checked_add(count - 1).map(Some).ok_or_else(|| {
        StoreError::Unavailable(format!("fence past the last seq: {from} + {count}"))
    })
}

#[async_trait]
impl StoreAdmin for mongo::MongoStore {
    async fn admin_stats(
        &self,
        _calls: &HashMap<&'static str, u64>,
    ) -> Result<serde_json::Value, StoreError> {
        // MongoDB counts index use itself (`$indexStats`), where the server supports it.
        let stats = self.stats().await?;
        serde_json::to_value(stats).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}
