//! Several nodes as one server (`docs/cluster.md`): membership with leases, one owner
//! per device with fencing epochs, the bus between nodes, and connections whose socket
//! and session are on different nodes.
//!
//! On one node none of this exists: [`crate::Env::cluster`] is `None` and every path
//! that would consult it takes the local branch.

pub mod bus;
pub mod envelope;
pub mod inbound;
pub mod membership;
pub mod outbound;
pub mod ownership;
pub mod remote_conns;
pub mod tasks;

use std::sync::{Arc, Weak};

pub use bus::{Bus, CallError, Transport, TransportError};
pub use membership::{Beat, Membership};
pub use ownership::{Claim, Locate, Ownership};
pub use remote_conns::RemoteConns;

use crate::settings::ClusterSettings;
use crate::store::{Store, StoreResult};

/// This node's part in a cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's timings.
    pub settings: ClusterSettings,
    /// Lease and the other nodes.
    pub membership: Arc<Membership>,
    /// Device ownership.
    pub ownership: Ownership,
    /// Messages to other nodes.
    pub bus: Arc<Bus>,
    /// Connections with their socket and session on different nodes.
    pub conns: Arc<RemoteConns>,
    /// The actor tree's root, once started (an operator's restart of a session owned
    /// here, asked through another node, goes to its tenant supervisor).
    pub root: std::sync::OnceLock<ractor::ActorRef<crate::root::RootMsg>>,
}

impl Cluster {
    /// Joins the cluster as `node` (reachable at `addr`): registers the node with its
    /// lease and starts the bus over `transport`.
    pub async fn join(
        store: Arc<dyn Store>,
        node: &str,
        addr: &str,
        settings: ClusterSettings,
        transport: Arc<dyn Transport>,
    ) -> StoreResult<Arc<Cluster>> {
        let membership = Membership::join(store.clone(), node, addr, settings).await?;
        let conns = Arc::new(RemoteConns::default());
        Ok(Arc::new_cyclic(|me: &Weak<Cluster>| {
            let me = me.clone();
            let bus = Bus::start(
                node,
                transport,
                settings.call_timeout,
                Box::new(move |gone| {
                    if let Some(c) = me.upgrade() {
                        c.unreachable(gone);
                    }
                }),
            );
            Cluster {
                settings,
                ownership: Ownership::new(store, membership.clone()),
                membership,
                bus,
                conns,
                root: std::sync::OnceLock::new(),
            }
        }))
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        self.membership.me()
    }

    /// A batch to `node` reached nobody: if it is not alive any more, forget it as an
    /// owner and close what is attached to it.
    fn unreachable(&self, node: &str) {
        if !self.membership.alive(node) {
            self.node_gone(node);
        } else {
            tracing::debug!(%node, "a live node did not receive a batch");
        }
    }

    /// `node` is gone (its lease ran out).
    pub fn node_gone(&self, node: &str) {
        self.conns.node_gone(node);
    }
}
