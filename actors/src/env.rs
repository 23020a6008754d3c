//! Everything an actor needs from its surroundings, shared as one `Arc<Env>`.

use std::sync::Arc;

use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::directory::Directory;
use crate::dispatcher::DispatcherHandle;
use crate::limits::shared::ClusterBudgets;
use crate::limits::SharedLimits;
use crate::persistence::PersistencePool;
use crate::settings::Settings;
use crate::stats::Stats;
use crate::store::Store;

/// Shared context of the actor tree.
pub struct Env {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Every cache (in-process, over Redis when configured).
    pub cache: Arc<Cache>,
    /// Live sessions and address lookups.
    pub directory: Directory,
    /// Group-commit writers.
    pub persistence: PersistencePool,
    /// Tunables.
    pub settings: Settings,
    /// Counters.
    pub stats: Stats,
    /// Whether test-only hooks (panic injection) are enabled.
    pub test_hooks: bool,
    /// Faults the tests inject (only read when `test_hooks` is on).
    pub faults: TestFaults,
    /// Tenant and global rate budgets of this process.
    pub limits: SharedLimits,
    /// Device, tenant and global budgets shared by every node of a cluster, taken
    /// after the in-process ones (`None` on one node: sends never wait for them).
    pub shared_budgets: Option<ClusterBudgets>,
    /// The running queue dispatcher, to wake it on enqueue.
    pub dispatcher: DispatcherHandle,
    /// This node's part in a cluster (`None` on one node: everything is local).
    pub cluster: Option<Arc<Cluster>>,
    /// Media processing and lookups, set by the server before the tree starts.
    pub media: crate::media::MediaSlot,
    /// Records webhook events in the outbox (`crate::webhooks`).
    pub webhooks: crate::webhooks::Webhooks,
}

impl Env {
    /// A new environment; the actor tree is started by [`crate::root::start`].
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<Cache>,
        settings: Settings,
        test_hooks: bool,
        cluster: Option<Arc<Cluster>>,
        shared_budgets: Option<ClusterBudgets>,
    ) -> Arc<Env> {
        Arc::new_cyclic(|me| Env {
            directory: Directory::new(store.clone(), cache.clone(), me.clone()),
            cluster,
            cache,
            persistence: PersistencePool::new(settings.writers),
            limits: SharedLimits::new(
                settings.tenant_rate_per_minute,
                settings.global_rate_per_minute,
            ),
            shared_budgets,
            dispatcher: DispatcherHandle::default(),
            webhooks: crate::webhooks::Webhooks::new(
                store.clone(),
                settings.webhook_endpoint_cache,
            ),
            store,
            settings,
            stats: Stats::default(),
            test_hooks,
            faults: TestFaults::default(),
            media: crate::media::MediaSlot::new(),
        })
    }

    /// The injected faults, when test hooks are enabled.
    pub fn test_faults(&self) -> Option<&TestFaults> {
        self.test_hooks.then_some(&self.faults)
    }
}

/// Faults the tests inject through the test-only admin hooks.
#[derive(Debug, Default)]
pub struct TestFaults {
    start_panics: dashmap::DashMap<String, u32>,
    /// Device → (panic at every this many accepted rows, panics left, rows seen).
    row_panics: dashmap::DashMap<String, (u64, u32, u64)>,
}

impl TestFaults {
    /// Makes the next `times` starts of `device_id`'s session panic (a crash loop).
    pub fn panic_on_start(&self, device_id: &str, times: u32) {
        self.start_panics.insert(device_id.to_owned(), times);
    }

    /// Makes `device_id`'s session panic (before writing it) at every `every`-th row it
    /// accepts, `times` times in all: rows queued behind it are lost and redelivered.
    pub fn panic_every_rows(&self, device_id: &str, every: u64, times: u32) {
        self.row_panics
            .insert(device_id.to_owned(), (every.max(1), times, 0));
    }

    /// Whether accepting this row of `device_id` must panic (counts it).
    pub fn take_row_panic(&self, device_id: &str) -> bool {
        match self.row_panics.get_mut(device_id) {
            Some(mut e) if e.1 > 0 => {
                e.2 += 1;
                if e.2 % e.0 == 0 {
                    e.1 -= 1;
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// Whether this start of `device_id`'s session must panic (counts it down).
    pub fn take_start_panic(&self, device_id: &str) -> bool {
        match self.start_panics.get_mut(device_id) {
            Some(mut left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }
}
