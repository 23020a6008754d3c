//! Node identity and liveness: this node's lease in the store, renewed every
//! heartbeat, the other nodes as last read, and the self-fencing deadline (see
//! `docs/cluster.md`, "Node identity and liveness").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::settings::ClusterSettings;
use crate::store::{NodeLoad, NodeRecord, Store, StoreResult};

/// Nodes whose lease ran out this long ago are removed from the registry.
const PRUNE_AFTER_MS: i64 = 10 * 60 * 1000;

/// What one heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease was renewed in time.
    Renewed,
    /// The lease was renewed, but only after it had run out (the node was paused or
    /// the store was away): the node must rejoin.
    Lapsed,
    /// The store could not be reached; the deadline stands.
    Failed,
}

/// This node's membership.
pub struct Membership {
    store: Arc<dyn Store>,
    me: String,
    addr: String,
    started_at: i64,
    settings: ClusterSettings,
    base: Instant,
    /// Monotonic ms (since `base`) until which this node may write.
    deadline_ms: AtomicU64,
    /// Bumped by every rejoin: work of an older incarnation is refused.
    incarnation: AtomicU64,
    view: RwLock<HashMap<String, NodeRecord>>,
    rejoins: watch::Sender<u64>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("incarnation", &self.incarnation())
            .finish()
    }
}

impl Membership {
    /// Registers this node (`me`, reachable at `addr`) and takes its first lease.
    pub async fn join(
        store: Arc<dyn Store>,
        me: &str,
        addr: &str,
        settings: ClusterSettings,
    ) -> StoreResult<Arc<Membership>> {
        let (rejoins, _) = watch::channel(0);
        let m = Arc::new(Membership {
            store,
            me: me.to_owned(),
            addr: addr.to_owned(),
            started_at: now_ms(),
            settings,
            base: Instant::now(),
            deadline_ms: AtomicU64::new(0),
            incarnation: AtomicU64::new(1),
            view: RwLock::new(HashMap::new()),
            rejoins,
        });
        let sent = m.mono_ms();
        m.store.put_node(m.record(NodeLoad::default())).await?;
        m.extend(sent);
        m.refresh().await?;
        Ok(m)
    }

    fn record(&self, load: NodeLoad) -> NodeRecord {
        NodeRecord {
            id: self.me.clone(),
            addr: self.addr.clone(),
            started_at: self.started_at,
            lease_until: now_ms() + self.lease_ms(),
            draining: load.draining,
            connections: load.connections,
            sessions: load.sessions,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn skew_ms(&self) -> i64 {
        i64::try_from(self.settings.skew.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The deadline after a renewal sent at `sent`: lease minus skew.
    fn extend(&self, sent: u64) {
        let span = u64::try_from(self.lease_ms() - self.skew_ms()).unwrap_or(0);
        self.deadline_ms
            .fetch_max(sent.saturating_add(span), Ordering::AcqRel);
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Whether this node may still write: its lease is valid by its own clock.
    pub fn may_write(&self) -> bool {
        self.mono_ms() < self.deadline_ms.load(Ordering::Acquire)
    }

    /// The current incarnation (bumped by every rejoin).
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Whether work of incarnation `inc` may still be written.
    pub fn writable(&self, inc: u64) -> bool {
        inc == self.incarnation() && self.may_write()
    }

    /// Rejoin events: the incarnation after each.
    pub fn rejoins(&self) -> watch::Receiver<u64> {
        self.rejoins.subscribe()
    }

    /// Whether `node` is alive as last read: this node always; another while its lease
    /// plus the clock skew margin has not run out.
    pub fn alive(&self, node: &str) -> bool {
        if node == self.me {
            return true;
        }
        let now = now_ms();
        self.view
            .read()
            .ok()
            .and_then(|v| v.get(node).map(|n| n.lease_until + self.skew_ms() > now))
            .unwrap_or(false)
    }

    /// Like [`Membership::alive`], reading the registry again first when `node` is not
    /// known yet or looks dead (a node that just started, or just renewed).
    pub async fn alive_fresh(&self, node: &str) -> bool {
        if self.alive(node) {
            return true;
        }
        let _ = self.refresh().await;
        self.alive(node)
    }

    /// Every node as last read (this one included).
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let mut v: Vec<NodeRecord> = self
            .view
            .read()
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Reads the registry again; removes nodes long dead.
    pub async fn refresh(&self) -> StoreResult<()> {
        let nodes = self.store.list_nodes().await?;
        let now = now_ms();
        for n in &nodes {
            if n.id != self.me && n.lease_until + PRUNE_AFTER_MS < now {
                let _ = self.store.remove_node(&n.id).await;
            }
        }
        if let Ok(mut v) = self.view.write() {
            *v = nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        }
        Ok(())
    }

    /// Renews the lease (and publishes `load`). A renewal sent after the deadline had
    /// passed is a lapse: the incarnation is bumped before the deadline moves, so
    /// nothing of the old incarnation is written under the new lease.
    pub async fn beat(&self, load: NodeLoad) -> Beat {
        let sent = self.mono_ms();
        let lapsed_before = sent >= self.deadline_ms.load(Ordering::Acquire);
        let lease_until = now_ms() + self.lease_ms();
        let renewed = match self.store.renew_node(&self.me, lease_until, load).await {
            Ok(true) => true,
            // Removed as dead by another node: register again, as a lapse.
            Ok(false) => match self.store.put_node(self.record(load)).await {
                Ok(()) => {
                    self.lapse();
                    self.extend(sent);
                    return Beat::Lapsed;
                }
                Err(_) => return Beat::Failed,
            },
            Err(e) => {
                tracing::warn!(error = %e, "node lease renewal failed");
                return Beat::Failed;
            }
        };
        debug_assert!(renewed);
        if lapsed_before {
            self.lapse();
            self.extend(sent);
            return Beat::Lapsed;
        }
        self.extend(sent);
        Beat::Renewed
    }

    fn lapse(&self) {
        let inc = self.incarnation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::warn!(node = %self.me, incarnation = inc, "node lease lapsed: rejoining");
        metrics::counter!(crate::metrics::names::LEASE_LAPSES).increment(1);
        let _ = self.rejoins.send(inc);
    }

    /// Deregisters this node (a drain's last step).
    pub async fn leave(&self) {
        if let Err(e) = self.store.remove_node(&self.me).await {
            tracing::warn!(error = %e, "could not deregister the node");
        }
    }
}
