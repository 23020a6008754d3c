//! The directory: which device sessions are running, and address / group lookups.
//!
//! A sharded index shared by every actor. Starting a session goes through the tenant's
//! supervisor, which owns the session and serializes starts and restarts.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use ractor::{ActorRef, MessagingErr};

use crate::device::DeviceMsg;
use crate::metrics::CacheCounters;
use crate::root::RootMsg;
use crate::store::{DeviceRecord, GroupRecord, Store, StoreError};
use crate::tenant::{EnsureError, TenantMsg};

/// Why a device could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// No such device.
    #[error("no such device")]
    NoDevice,
    /// The actor tree is shutting down or a supervisor is gone.
    #[error("actor tree unavailable")]
    Unavailable,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Live sessions and cached lookups.
pub struct Directory {
    store: Arc<dyn Store>,
    sessions: DashMap<String, ActorRef<DeviceMsg>>,
    addresses: DashMap<(String, String), String>,
    groups: DashMap<String, Arc<GroupRecord>>,
    root: OnceLock<ActorRef<RootMsg>>,
    address_cache: CacheCounters,
    group_cache: CacheCounters,
}

/// Hits, misses and size of one of the directory's lookup caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// Entries held.
    pub size: usize,
}

impl Directory {
    /// An empty directory over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Directory {
            store,
            sessions: DashMap::new(),
            addresses: DashMap::new(),
            groups: DashMap::new(),
            root: OnceLock::new(),
            address_cache: CacheCounters::new("addresses", "memory"),
            group_cache: CacheCounters::new("groups", "memory"),
        }
    }

    pub(crate) fn set_root(&self, root: ActorRef<RootMsg>) {
        let _ = self.root.set(root);
    }

    /// The running session of a device, if any.
    pub fn running(&self, device_id: &str) -> Option<ActorRef<DeviceMsg>> {
        self.sessions.get(device_id).map(|r| r.clone())
    }

    /// Number of running device sessions.
    pub fn running_count(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn register(&self, device_id: &str, session: ActorRef<DeviceMsg>) {
        self.sessions.insert(device_id.to_owned(), session);
    }

    /// Forgets a session, only if it is still the registered one.
    pub(crate) fn unregister(&self, device_id: &str, session: &ractor::ActorCell) {
        self.sessions
            .remove_if(device_id, |_, r| r.get_id() == session.get_id());
    }

    /// The running session of a device, starting it if needed.
    pub async fn session(&self, device_id: &str) -> Result<ActorRef<DeviceMsg>, RouteError> {
        if let Some(r) = self.running(device_id) {
            return Ok(r);
        }
        let device = self
            .store
            .get_device(device_id)
            .await?
            .ok_or(RouteError::NoDevice)?;
        self.start(device).await
    }

    /// Starts (or finds) the session of a known device.
    pub async fn start(&self, device: DeviceRecord) -> Result<ActorRef<DeviceMsg>, RouteError> {
        let root = self.root.get().ok_or(RouteError::Unavailable)?;
        let tenant = ractor::call!(root, RootMsg::Tenant, device.tenant_id.clone())
            .map_err(|_| RouteError::Unavailable)?
            .ok_or(RouteError::Unavailable)?;
        ractor::call!(tenant, TenantMsg::Ensure, device)
            .map_err(|_| RouteError::Unavailable)?
            .map_err(|e| match e {
                EnsureError::Gone => RouteError::NoDevice,
                EnsureError::Unavailable => RouteError::Unavailable,
            })
    }

    /// Stops a deleted device's session for good (its clients see 4410) and starts no
    /// other: answers once it has stopped.
    pub async fn remove(&self, device: &DeviceRecord) -> Result<(), RouteError> {
        let root = self.root.get().ok_or(RouteError::Unavailable)?;
        let tenant = ractor::call!(root, RootMsg::Tenant, device.tenant_id.clone())
            .map_err(|_| RouteError::Unavailable)?
            .ok_or(RouteError::Unavailable)?;
        ractor::call!(tenant, TenantMsg::Remove, device.id.clone())
            .map_err(|_| RouteError::Unavailable)?;
        self.sessions.remove(&device.id);
        Ok(())
    }

    /// Sends `msg` to a device's session, starting it if needed. A session that stopped
    /// between lookup and send is looked up again.
    pub async fn deliver(&self, device_id: &str, mut msg: DeviceMsg) -> Result<(), RouteError> {
        for _ in 0..5 {
            let session = self.session(device_id).await?;
            match session.cast(msg) {
                Ok(()) => return Ok(()),
                Err(MessagingErr::SendErr(back)) => {
                    self.unregister(device_id, &session.get_cell());
                    msg = back;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                Err(_) => return Err(RouteError::Unavailable),
            }
        }
        Err(RouteError::Unavailable)
    }

    /// Sends `msg` only if the device's session is running (typing, presence).
    pub fn deliver_if_running(&self, device_id: &str, msg: DeviceMsg) {
        if let Some(s) = self.running(device_id) {
            let _ = s.cast(msg);
        }
    }

    /// The device id of an address in a tenant.
    pub async fn resolve(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = (tenant_id.to_owned(), address.to_owned());
        if let Some(id) = self.addresses.get(&key) {
            self.address_cache.hit();
            return Ok(Some(id.clone()));
        }
        self.address_cache.miss();
        let found = self.store.device_by_address(tenant_id, address).await?;
        Ok(found.map(|d| {
            self.addresses.insert(key, d.id.clone());
            d.id
        }))
    }

    /// Forgets a deleted device's address.
    pub fn forget_address(&self, tenant_id: &str, address: &str) {
        self.addresses
            .remove(&(tenant_id.to_owned(), address.to_owned()));
    }

    /// A group, cached.
    pub async fn group(&self, group_id: &str) -> Result<Option<Arc<GroupRecord>>, StoreError> {
        if let Some(g) = self.groups.get(group_id) {
            self.group_cache.hit();
            return Ok(Some(g.clone()));
        }
        self.group_cache.miss();
        let found = self.store.get_group(group_id).await?.map(Arc::new);
        if let Some(g) = &found {
            self.cache_group(g.clone());
        }
        Ok(found)
    }

    /// A group's members changed: the cache takes the new version at once (so a
    /// removed member stops receiving with the next send), and never lets an older
    /// copy, read before the change, replace it.
    pub fn group_changed(&self, group: Arc<GroupRecord>) {
        self.cache_group(group);
    }

    fn cache_group(&self, group: Arc<GroupRecord>) {
        match self.groups.entry(group.id.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                if e.get().version <= group.version {
                    e.insert(group);
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(group);
            }
        }
    }

    /// Counters of the address cache ((tenant, address) → device id).
    pub fn address_cache_stats(&self) -> LookupCacheStats {
        let (hits, misses) = self.address_cache.get();
        LookupCacheStats {
            hits,
            misses,
            size: self.addresses.len(),
        }
    }

    /// Counters of the group cache (group id → group).
    pub fn group_cache_stats(&self) -> LookupCacheStats {
        let (hits, misses) = self.group_cache.get();
        LookupCacheStats {
            hits,
            misses,
            size: self.groups.len(),
        }
    }
}
