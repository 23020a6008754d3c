//! How this process takes part in a deployment of several nodes (`docs/cluster.md`):
//! on MongoDB and Redis it joins the cluster; on MongoDB alone it is the only node and
//! checks that no other is alive on the same database; on the embedded store it is
//! alone and none of this runs.

pub mod budgets;
pub mod redis;

use std::sync::Arc;

use actors::cluster::{Cluster, Membership};
use actors::store::Store;

use crate::config::Config;
use crate::server::StartError;

/// How this node runs.
pub enum Mode {
    /// One process on the embedded store.
    Solo,
    /// The only node on a MongoDB database: its lease keeps a second one from starting.
    SoloOnMongo(Arc<Membership>),
    /// One node of a cluster.
    Cluster(Arc<Cluster>, ::redis::Client),
}

/// Joins the cluster, or checks this node is alone, as the backends say.
pub async fn join(
    config: &Config,
    store: &Arc<dyn Store>,
    node: &str,
    addr: &str,
) -> Result<Mode, StartError> {
    let on_mongo = config.mongodb_uri.as_deref().is_some_and(|u| !u.is_empty());
    if !on_mongo {
        return Ok(Mode::Solo);
    }
    let settings = config.cluster_settings();
    match config.redis_url() {
        Some(url) => {
            let (transport, client) =
                redis::connect(&url, &config.redis_prefix).map_err(StartError::Config)?;
            let cluster = Cluster::join(store.clone(), node, addr, settings, transport)
                .await
                .map_err(|e| StartError::Config(format!("joining the cluster: {e}")))?;
            tracing::info!(
                node,
                nodes = cluster.membership.nodes().len(),
                "joined the cluster"
            );
            Ok(Mode::Cluster(cluster, client))
        }
        None => {
            let membership = Membership::join(store.clone(), node, addr, settings)
                .await
                .map_err(|e| StartError::Config(format!("registering the node: {e}")))?;
            if let Some(other) = membership
                .nodes()
                .into_iter()
                .find(|n| n.id != node && membership.alive(&n.id))
            {
                membership.leave().await;
                return Err(StartError::Config(format!(
                    "node {} ({}) is running on this database; several nodes need REDIS_URL \
                     (see docs/cluster.md)",
                    other.id, other.addr
                )));
            }
            let beat = Arc::downgrade(&membership);
            let every = settings.heartbeat;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(m) = beat.upgrade() else { return };
                    m.beat(actors::store::NodeLoad::default()).await;
                }
            });
            Ok(Mode::SoloOnMongo(membership))
        }
    }
}
