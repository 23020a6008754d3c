//! Rate budgets shared by the nodes of a cluster (`docs/cluster.md`, shared budgets).
//!
//! A [`SharedBudgets`] store takes `cost` units from several per-minute windows at
//! once, all or nothing: the device's tier, its tenant, the whole server. Each window
//! grants at most its limit in any 60 s, whichever node asks. The server implements it
//! over Redis (one script call per send); [`MemoryBudgets`] is the in-process one, the
//! reference the contract tests hold the Redis one to.
//!
//! [`ClusterBudgets`] is a node's handle on the store: it bounds every call and says
//! when the store did not answer, so the send keeps the verdict of the in-process
//! budgets (checked before, see `device/send.rs`) and is never refused, nor held,
//! because the store is away. On one node none of this exists
//! ([`crate::Env::shared_budgets`] is `None`) and the session never awaits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Scope, SlidingWindow};

/// One window of a send: at most `per_minute` units in any 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    /// Whose budget it is (named in a refusal).
    pub scope: Scope,
    /// The window's name within its scope: `<device id>:<tier>`, a tenant id, `all`.
    pub key: &'a str,
    /// Units per minute (0 is treated as 1).
    pub per_minute: u32,
}

/// The answer of a [`SharedBudgets`] store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `cost` units were taken from every window.
    Granted,
    /// Nothing was taken: the window of `scope` has no room for `wait`.
    Refused {
        /// The first window without room.
        scope: Scope,
        /// How long until it has room.
        wait: Duration,
    },
}

/// The store did not answer (it is away, or slower than the bound).
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared budgets unavailable: {0}")]
pub struct BudgetError(pub String);

/// Per-minute windows shared by every node.
#[async_trait]
pub trait SharedBudgets: Send + Sync {
    /// Takes `cost` units from every window, or nothing. A cost over a window's limit
    /// takes the whole window (it needs the window empty), so a large group send is
    /// possible and spends the whole budget, as the in-process budgets do.
    async fn take(&self, windows: &[Window<'_>], cost: u32) -> Result<Grant, BudgetError>;
}

/// In-process windows ([`SlidingWindow`]s), exact: the reference implementation of
/// [`SharedBudgets`] (tests; a single process has its in-process budgets already).
/// Windows are never forgotten: not for a long-running server.
#[derive(Debug, Default)]
pub struct MemoryBudgets {
    windows: Mutex<HashMap<(Scope, String), SlidingWindow>>,
}

#[async_trait]
impl SharedBudgets for MemoryBudgets {
    async fn take(&self, windows: &[Window<'_>], cost: u32) -> Result<Grant, BudgetError> {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Vec<(Scope, String)> = Vec::with_capacity(windows.len());
        for w in windows {
            let id = (w.scope, w.key.to_owned());
            let window = map
                .entry(id.clone())
                .or_insert_with(|| SlidingWindow::per_minute(w.per_minute));
            if let Err(wait) = window.try_take(cost) {
                for id in &taken {
                    if let Some(window) = map.get_mut(id) {
                        window.refund();
                    }
                }
                return Ok(Grant::Refused {
                    scope: w.scope,
                    wait,
                });
            }
            taken.push(id);
        }
        Ok(Grant::Granted)
    }
}

/// How often, at most, the node logs that the shared budgets are unavailable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// This node's handle on the shared budgets: every call bounded, every failure
/// counted (`switchboard_rate_budget_fallbacks_total`) and logged at most every 10 s.
pub struct ClusterBudgets {
    store: Arc<dyn SharedBudgets>,
    timeout: Duration,
    fallbacks: AtomicU64,
    down: AtomicBool,
    last_warning: Mutex<Option<Instant>>,
    counter: metrics::Counter,
}

impl std::fmt::Debug for ClusterBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBudgets")
            .field("timeout", &self.timeout)
            .field("fallbacks", &self.fallbacks())
            .finish_non_exhaustive()
    }
}

impl ClusterBudgets {
    /// The bound on one call to the store unless told otherwise.
    pub const TIMEOUT: Duration = Duration::from_millis(200);

    /// A handle on `store`, each call bounded by `timeout`.
    pub fn new(store: Arc<dyn SharedBudgets>, timeout: Duration) -> Self {
        ClusterBudgets {
            store,
            timeout,
            fallbacks: AtomicU64::new(0),
            down: AtomicBool::new(false),
            last_warning: Mutex::new(None),
            counter: metrics::counter!(crate::metrics::names::BUDGET_FALLBACKS),
        }
    }

    /// Takes `cost` units from every window, or nothing; `None` when the store failed
    /// or did not answer within the bound (the caller keeps its in-process verdict).
    pub async fn take(&self, windows: &[Window<'_>], cost: u32) -> Option<Grant> {
        let error = match tokio::time::timeout(self.timeout, self.store.take(windows, cost)).await {
            Ok(Ok(grant)) => {
                if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate budgets available again");
                }
                return Some(grant);
            }
            Ok(Err(e)) => e,
            Err(_) => BudgetError(format!("no answer within {:?}", self.timeout)),
        };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.counter.increment(1);
        self.down.store(true, Ordering::Relaxed);
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            tracing::warn!(
                error = %error,
                fallbacks = self.fallbacks(),
                "shared rate budgets unavailable: this node's own budgets apply"
            );
        }
        None
    }

    /// Calls that fell back to the in-process budgets since the node started.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows<'a>(device: &'a str, tenant: &'a str) -> [Window<'a>; 2] {
        [
            Window {
                scope: Scope::Device,
                key: device,
                per_minute: 3,
            },
            Window {
                scope: Scope::Tenant,
                key: tenant,
                per_minute: 4,
            },
        ]
    }

    #[tokio::test]
    async fn memory_budgets_take_all_or_nothing() {
        let b = MemoryBudgets::default();
        for _ in 0..3 {
            assert_eq!(
                b.take(&windows("d1", "t"), 1).await.ok(),
                Some(Grant::Granted)
            );
        }
        let refused = b.take(&windows("d1", "t"), 1).await.expect("an answer");
        assert!(
            matches!(refused, Grant::Refused { scope: Scope::Device, wait } if wait > Duration::from_secs(50)),
            "{refused:?}"
        );
        // The device's refusal took nothing from the tenant: one unit is left there.
        assert_eq!(
            b.take(&windows("d2", "t"), 1).await.ok(),
            Some(Grant::Granted)
        );
        let refused = b.take(&windows("d3", "t"), 1).await.expect("an answer");
        assert!(matches!(
            refused,
            Grant::Refused {
                scope: Scope::Tenant,
                ..
            }
        ));
        // ... and the tenant's refusal took nothing from d3: it has its whole window,
        // which a cost over the limit spends at once.
        assert_eq!(
            b.take(&windows("d3", "u"), 9).await.ok(),
            Some(Grant::Granted)
        );
        let refused = b.take(&windows("d3", "v"), 1).await.expect("an answer");
        assert!(matches!(
            refused,
            Grant::Refused {
                scope: Scope::Device,
                ..
            }
        ));
    }

    struct Failing(Option<Duration>);

    #[async_trait]
    impl SharedBudgets for Failing {
        async fn take(&self, _: &[Window<'_>], _: u32) -> Result<Grant, BudgetError> {
            match self.0 {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    Ok(Grant::Granted)
                }
                None => Err(BudgetError("connection refused".into())),
            }
        }
    }

    #[tokio::test]
    async fn a_store_that_fails_or_hangs_falls_back_within_the_bound() {
        let failing = ClusterBudgets::new(Arc::new(Failing(None)), ClusterBudgets::TIMEOUT);
        assert_eq!(failing.take(&windows("d", "t"), 1).await, None);
        assert_eq!(failing.take(&windows("d", "t"), 1).await, None);
        assert_eq!(failing.fallbacks(), 2);
        let slow = ClusterBudgets::new(
            Arc::new(Failing(Some(Duration::from_secs(3600)))),
            Duration::from_millis(50),
        );
        let started = Instant::now();
        assert_eq!(slow.take(&windows("d", "t"), 1).await, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(slow.fallbacks(), 1);
        let fine = ClusterBudgets::new(Arc::new(MemoryBudgets::default()), ClusterBudgets::TIMEOUT);
        assert_eq!(fine.take(&windows("d", "t"), 1).await, Some(Grant::Granted));
        assert_eq!(fine.fallbacks(), 0);
    }
}
