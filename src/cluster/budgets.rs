//! The rate budgets every node of a cluster shares, in Redis (`docs/cluster.md`,
//! shared budgets): one Lua script per send takes the send's cost from its device,
//! tenant and global windows, or from none, atomically.
//!
//! A window is a hash `{prefix}:budget:{scope}:{key}` of per-second counters, fields
//! the Unix second of Redis' own clock (`TIME`, so the nodes' clocks do not matter),
//! values the units granted in that second. A window counts the seconds of its last 61
//! (the current one included): everything granted less than 60 s ago is counted, and
//! something granted up to 61 s ago may still be, so "at most N in any 60 s" holds and
//! a unit comes back at most one second later than exactly. Stale fields are deleted
//! as the script meets them and every window expires 62 s after its last grant, so
//! idle windows vanish.

use std::sync::Arc;
use std::time::Duration;

use actors::limits::shared::{BudgetError, ClusterBudgets, Grant, SharedBudgets, Window};
use actors::limits::Scope;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// `KEYS`: one hash per window. `ARGV[1]`: the cost; `ARGV[1 + i]`: the limit of
/// `KEYS[i]`. Returns `{0, 0}` when every window had room and took the cost (at most
/// its limit), else `{i, ms}`: window `i` has no room for `ms` milliseconds and
/// nothing was taken.
const TAKE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[i + 1])
  local need = math.min(cost, limit)
  local fields = redis.call('HGETALL', KEYS[i])
  local used = 0
  local live = {}
  local stale = {}
  for j = 1, #fields, 2 do
    local sec = tonumber(fields[j])
    local n = tonumber(fields[j + 1])
    if sec > now - 61 then
      used = used + n
      live[#live + 1] = {sec, n}
    else
      stale[#stale + 1] = fields[j]
    end
  end
  if #stale > 0 then
    redis.call('HDEL', KEYS[i], unpack(stale))
  end
  if used + need > limit then
    -- Room comes back as the oldest seconds leave the window (second s counts until
    -- s + 61).
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local free = limit - used
    local wait = 61000
    for _, e in ipairs(live) do
      free = free + e[2]
      if free >= need then
        wait = (e[1] + 61) * 1000 - now_ms
        break
      end
    end
    if wait < 1 then wait = 1 end
    return {i, wait}
  end
end
for i = 1, #KEYS do
  local need = math.min(cost, tonumber(ARGV[i + 1]))
  redis.call('HINCRBY', KEYS[i], now, need)
  redis.call('EXPIRE', KEYS[i], 62)
end
return {0, 0}
"#;

/// The shared windows in one Redis.
pub struct RedisBudgets {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    commands: metrics::Counter,
}

impl RedisBudgets {
    /// Windows under `prefix` on `client`'s Redis, on a connection of their own that
    /// connects lazily, reconnects by itself and gives up on a command after 200 ms.
    pub fn new(client: &redis::Client, prefix: &str) -> Result<RedisBudgets, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ClusterBudgets::TIMEOUT))
            .set_response_timeout(Some(ClusterBudgets::TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(RedisBudgets {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(TAKE),
            commands: metrics::counter!(crate::metrics::names::REDIS_COMMANDS),
        })
    }

    /// The key of window `w`.
    pub fn key(&self, w: &Window<'_>) -> String {
        let scope = match w.scope {
            Scope::Device => "device",
            Scope::Tenant => "tenant",
            Scope::Global => "global",
        };
        format!("{}:budget:{scope}:{}", self.prefix, w.key)
    }
}

#[async_trait]
impl SharedBudgets for RedisBudgets {
    async fn take(&self, windows: &[Window<'_>], cost: u32) -> Result<Grant, BudgetError> {
        if windows.is_empty() {
            return Ok(Grant::Granted);
        }
        let mut call = self.script.prepare_invoke();
        for w in windows {
            call.key(self.key(w));
        }
        call.arg(cost.max(1));
        for w in windows {
            call.arg(w.per_minute.max(1));
        }
        let mut conn = self.conn.clone();
        self.commands.increment(1);
        let answer: Vec<i64> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| BudgetError(e.to_string()))?;
        match answer[..] {
            [0, _] => Ok(Grant::Granted),
            [i, ms] => {
                let w = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| windows.get(i))
                    .ok_or_else(|| BudgetError(format!("script named window {i}")))?;
                Ok(Grant::Refused {
                    scope: w.scope,
                    wait: Duration::from_millis(u64::try_from(ms).unwrap_or(1).max(1)),
                })
            }
            _ => Err(BudgetError(format!("script answered {answer:?}"))),
        }
    }
}

/// The cluster's budgets on `client`'s Redis under `prefix`, each call bounded by
/// [`ClusterBudgets::TIMEOUT`].
pub fn connect(client: &redis::Client, prefix: &str) -> Result<ClusterBudgets, String> {
    let store = Arc::new(RedisBudgets::new(client, prefix)?);
    Ok(ClusterBudgets::new(store, ClusterBudgets::TIMEOUT))
}
