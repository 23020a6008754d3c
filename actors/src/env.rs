//! Everything an actor needs from its surroundings, shared as one `Arc<Env>`.

use std::sync::Arc;

use crate::directory::Directory;
use crate::dispatcher::DispatcherHandle;
use crate::limits::SharedLimits;
use crate::persistence::PersistencePool;
use crate::settings::Settings;
use crate::stats::Stats;
use crate::store::Store;

/// Shared context of the actor tree.
pub struct Env {
    /// Durable state.
    pub store: Arc<dyn Store>,
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
    /// Tenant and global rate budgets.
    pub limits: SharedLimits,
    /// The running queue dispatcher, to wake it on enqueue.
    pub dispatcher: DispatcherHandle,
}

impl Env {
    /// A new environment; the actor tree is started by [`crate::root::start`].
    pub fn new(store: Arc<dyn Store>, settings: Settings, test_hooks: bool) -> Arc<Env> {
        Arc::new(Env {
            directory: Directory::new(store.clone()),
            persistence: PersistencePool::new(settings.writers),
            limits: SharedLimits::new(
                settings.tenant_rate_per_minute,
                settings.global_rate_per_minute,
            ),
            dispatcher: DispatcherHandle::default(),
            store,
            settings,
            stats: Stats::default(),
            test_hooks,
        })
    }
}
