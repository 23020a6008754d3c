//! The directory: which device sessions are running, and device / address / group
//! lookups (through the [`Cache`]).
//!
//! A sharded index shared by every actor. Starting a session goes through the tenant's
//! supervisor, which owns the session and serializes starts and restarts.

use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use ractor::{ActorRef, MessagingErr};

use crate::cache::{Cache, CacheKind};
use crate::cluster::{outbound, Cluster, Locate};
use crate::device::{Attached, DeviceMsg, SessionInfo};
use crate::root::RootMsg;
use crate::store::{DeviceRecord, GroupRecord, Store, StoreError};
use crate::tenant::{EnsureError, TenantMsg};
use crate::Env;

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

/// Live sessions and cached lookups; in a cluster, where each device's session is.
pub struct Directory {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    sessions: DashMap<String, ActorRef<DeviceMsg>>,
    root: OnceLock<ActorRef<RootMsg>>,
    env: Weak<Env>,
}

/// The cache key of an address in a tenant.
pub fn address_key(tenant_id: &str, address: &str) -> String {
    format!("{tenant_id}/{address}")
}

impl Directory {
    /// An empty directory over `store`, caching in `cache`, part of `env`.
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>, env: Weak<Env>) -> Self {
        Directory {
            store,
            cache,
            sessions: DashMap::new(),
            root: OnceLock::new(),
            env,
        }
    }

    /// The environment and its cluster, when this node is part of one.
    fn cluster(&self) -> Option<(Arc<Env>, Arc<Cluster>)> {
        let env = self.env.upgrade()?;
        let cluster = env.cluster.clone()?;
        Some((env, cluster))
    }

    /// Where `device_id`'s session is: here (on one node, always), or on another node.
    pub async fn locate(&self, device_id: &str) -> Result<Locate, RouteError> {
        match self.cluster() {
            Some((_, cluster)) => Ok(cluster.ownership.locate(device_id).await?),
            None => Ok(Locate::Here),
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

    /// Forgets every running session and hands each to `stop`; returns how many.
    pub fn stop_all(&self, mut stop: impl FnMut(&ActorRef<DeviceMsg>)) -> usize {
        let all: Vec<(String, ActorRef<DeviceMsg>)> = self
            .sessions
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (id, s) in &all {
            self.unregister(id, &s.get_cell());
            stop(s);
        }
        all.len()
    }

    /// The ids of the running sessions.
    pub fn running_ids(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
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
        let device = self.device(device_id).await?.ok_or(RouteError::NoDevice)?;
        self.start((*device).clone()).await
    }

    /// A device record, cached.
    pub async fn device(&self, device_id: &str) -> Result<Option<Arc<DeviceRecord>>, StoreError> {
        self.cache
            .get_or_load(CacheKind::Devices, device_id, || {
                self.store.get_device(device_id)
            })
            .await
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
    /// other, on every node: answers once it has stopped.
    pub async fn remove(&self, device: &DeviceRecord) -> Result<(), RouteError> {
        if let Some((_, cluster)) = self.cluster() {
            let others: Vec<String> = cluster
                .membership
                .nodes()
                .into_iter()
                .map(|n| n.id)
                .filter(|id| id != cluster.me() && cluster.membership.alive(id))
                .collect();
            let calls = others.iter().map(|node| {
                cluster.bus.call(
                    node,
                    crate::cluster::envelope::Request::Remove {
                        device: device.id.clone(),
                        tenant_id: device.tenant_id.clone(),
                    },
                )
            });
            for (node, answer) in others
                .iter()
                .zip(futures_util::future::join_all(calls).await)
            {
                if let Err(e) = answer {
                    tracing::warn!(%node, device_id = %device.id, error = %e, "a node did not confirm a device removal");
                }
            }
        }
        self.remove_here(&device.id, &device.tenant_id).await
    }

    /// [`Directory::remove`] on this node only.
    pub async fn remove_here(&self, device_id: &str, tenant_id: &str) -> Result<(), RouteError> {
        let root = self.root.get().ok_or(RouteError::Unavailable)?;
        let tenant = ractor::call!(root, RootMsg::Tenant, tenant_id.to_owned())
            .map_err(|_| RouteError::Unavailable)?
            .ok_or(RouteError::Unavailable)?;
        ractor::call!(tenant, TenantMsg::Remove, device_id.to_owned())
            .map_err(|_| RouteError::Unavailable)?;
        self.sessions.remove(device_id);
        Ok(())
    }

    /// Sends `msg` to a device's session wherever it is, starting it here if no node
    /// runs it. Answers to a message for another node come later, to the guard, port or
    /// connection it carries.
    pub async fn deliver(&self, device_id: &str, msg: DeviceMsg) -> Result<(), RouteError> {
        if let Some((env, cluster)) = self.cluster() {
            if let Locate::There(node) = cluster.ownership.locate(device_id).await? {
                outbound::forward(&env, &cluster, &node, device_id, msg);
                return Ok(());
            }
        }
        self.deliver_local(device_id, msg).await
    }

    /// Attaches a client to its device's session, wherever it runs.
    pub async fn attach(
        &self,
        device_id: &str,
        conn: crate::conn::ConnHandle,
    ) -> Result<Attached, RouteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = DeviceMsg::Attach(conn, tx.into());
        self.deliver(device_id, msg).await?;
        match rx.await {
            Ok(Ok(attached)) => Ok(attached),
            _ => Err(RouteError::Unavailable),
        }
    }

    /// A client went away.
    pub fn detach(&self, device_id: &str, conn: u64) {
        if let Some((env, cluster)) = self.cluster() {
            if let Some(node) = cluster.conns.owner_of(conn) {
                outbound::forward(&env, &cluster, &node, device_id, DeviceMsg::Detach(conn));
                return;
            }
        }
        if let Some(s) = self.running(device_id) {
            let _ = s.cast(DeviceMsg::Detach(conn));
        }
    }

    /// A running session's live view, wherever it runs (`None`: no session runs).
    pub async fn info(&self, device_id: &str) -> Option<SessionInfo> {
        if let Some(s) = self.running(device_id) {
            return ractor::call!(s, DeviceMsg::Info).ok();
        }
        let (env, cluster) = self.cluster()?;
        let Ok(Locate::There(node)) = cluster.ownership.locate(device_id).await else {
            return None;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        outbound::forward(&env, &cluster, &node, device_id, DeviceMsg::Info(tx.into()));
        rx.await.ok()
    }

    /// Sends `msg` (typing, a kick) only if the device's session runs, here or on
    /// another node; never starts one.
    pub async fn cast_if_running(&self, device_id: &str, msg: DeviceMsg) {
        if let Some(s) = self.running(device_id) {
            let _ = s.cast(msg);
            return;
        }
        if let Some((env, cluster)) = self.cluster() {
            if let Ok(Locate::There(node)) = cluster.ownership.locate(device_id).await {
                outbound::forward(&env, &cluster, &node, device_id, msg);
            }
        }
    }

    /// Sends `msg` to a device's session here, starting it if needed. A session that
    /// stopped between lookup and send is looked up again.
    pub(crate) async fn deliver_local(
        &self,
        device_id: &str,
        mut msg: DeviceMsg,
    ) -> Result<(), RouteError> {
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

    /// The device id of an address in a tenant, cached.
    pub async fn resolve(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = address_key(tenant_id, address);
        let found = self
            .cache
            .get_or_load(CacheKind::Addresses, &key, || async {
                let device = self.store.device_by_address(tenant_id, address).await?;
                Ok::<_, StoreError>(device.map(|d| d.id))
            })
            .await?;
        Ok(found.map(|id| (*id).clone()))
    }

    /// A deleted device is forgotten by every cache (and every node's).
    pub async fn forget_device(&self, device: &DeviceRecord) {
        let cache = &self.cache;
        cache
            .invalidate(
                CacheKind::Addresses,
                &address_key(&device.tenant_id, &device.address),
            )
            .await;
        cache.invalidate(CacheKind::Devices, &device.id).await;
        cache.invalidate(CacheKind::DeviceStatus, &device.id).await;
        cache.invalidate(CacheKind::Contacts, &device.id).await;
    }

    /// A group, cached.
    pub async fn group(&self, group_id: &str) -> Result<Option<Arc<GroupRecord>>, StoreError> {
        if let Some(g) = self
            .cache
            .get::<GroupRecord>(CacheKind::Groups, group_id)
            .await
        {
            return Ok(Some(g));
        }
        let found = self.store.get_group(group_id).await?.map(Arc::new);
        if let Some(g) = &found {
            self.cache
                .set_versioned(CacheKind::Groups, group_id, g.clone(), g.version)
                .await;
        }
        Ok(found)
    }

    /// A group's members changed: every node drops its copy, and the new version is
    /// cached at once (so a removed member stops receiving with the next send); an
    /// older copy, read before the change, never replaces it.
    pub async fn group_changed(&self, group: Arc<GroupRecord>) {
        let id = group.id.clone();
        let version = group.version;
        self.cache
            .replace_versioned(CacheKind::Groups, &id, group, version)
            .await;
    }
}
