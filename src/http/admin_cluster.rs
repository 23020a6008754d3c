//! The cluster as operators see it, behind the admin token: `GET /admin/cluster` (every
//! node, its liveness, connections and sessions) and `GET /admin/cluster/devices/{id}`
//! (which node owns a device's session, under which epoch).

use std::sync::atomic::Ordering;

use actix_web::{get, web, HttpResponse};
use actors::clock::now_ms;
use actors::store::NodeRecord;
use serde::Serialize;

use super::openapi as doc;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// One node of `GET /admin/cluster`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Node id (new at every process start).
    pub id: String,
    /// Where its HTTP API listens.
    pub addr: String,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// Its lease runs until then (Unix ms; 0 on one node without a registry).
    pub lease_until: i64,
    /// Whether its lease holds now.
    pub alive: bool,
    /// Draining: it takes no new connections and gives its devices up.
    pub draining: bool,
    /// Open WebSocket connections at its last heartbeat.
    pub connections: u64,
    /// Device sessions it runs at its last heartbeat.
    pub sessions: u64,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

/// Answer of `GET /admin/cluster`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `solo` (embedded store), `solo_on_mongodb` (MongoDB without Redis: one node at a
    /// time) or `cluster` (MongoDB and Redis: several nodes).
    pub mode: &'static str,
    /// The node that answered.
    pub node: String,
    /// Every node the registry knows, this one included, by id.
    pub nodes: Vec<NodeView>,
}

fn view(r: NodeRecord, me: &str, now: i64) -> NodeView {
    NodeView {
        this_node: r.id == me,
        alive: r.lease_until > now,
        id: r.id,
        addr: r.addr,
        started_at: r.started_at,
        lease_until: r.lease_until,
        draining: r.draining,
        connections: r.connections,
        sessions: r.sessions,
    }
}

/// `GET /admin/cluster`: the nodes, their liveness and load.
#[utoipa::path(get, path = "/admin/cluster", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ClusterView, description = "the nodes"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN)))]
#[get("/admin/cluster")]
pub async fn cluster_view(_: AdminAuth, state: web::Data<AppState>) -> HttpResponse {
    if let Some(m) = membership(&state) {
        // Read the registry now rather than as of the last heartbeat.
        if let Err(e) = m.refresh().await {
            tracing::debug!(error = %e, "admin cluster view: registry not read");
        }
    }
    HttpResponse::Ok().json(snapshot(&state))
}

/// The node registry this node keeps: the cluster's, or its own on MongoDB alone.
fn membership(state: &AppState) -> Option<std::sync::Arc<actors::cluster::Membership>> {
    match (&state.env.cluster, &state.solo_membership) {
        (Some(c), _) => Some(c.membership.clone()),
        (None, m) => m.clone(),
    }
}

/// The cluster as this node last read it (every heartbeat), with this node's own
/// figures live; also part of the `/admin` tree, which is built once a second and so
/// reads no store for it.
pub fn snapshot(state: &AppState) -> ClusterView {
    let env = &state.env;
    let now = now_ms();
    let membership = membership(state);
    let mode = match (&env.cluster, &membership) {
        (Some(_), _) => "cluster",
        (None, Some(_)) => "solo_on_mongodb",
        (None, None) => "solo",
    };
    let me = env.settings.node_id.clone();
    let connections = env.stats.connections.load(Ordering::Relaxed);
    let sessions = env.directory.running_count() as u64;
    let draining = env.stats.draining.load(Ordering::Relaxed);
    let mut nodes: Vec<NodeView> = match &membership {
        Some(m) => m.nodes().into_iter().map(|r| view(r, &me, now)).collect(),
        None => Vec::new(),
    };
    // This node's own figures are live, not as of its last heartbeat.
    match nodes.iter_mut().find(|n| n.this_node) {
        Some(n) => {
            n.connections = connections;
            n.sessions = sessions;
            n.draining = draining;
        }
        None => nodes.push(NodeView {
            id: me.clone(),
            addr: state.advertised.clone(),
            started_at: state.started_at_ms,
            lease_until: 0,
            alive: true,
            draining,
            connections,
            sessions,
            this_node: true,
        }),
    }
    ClusterView {
        mode,
        node: me,
        nodes,
    }
}

/// Answer of `GET /admin/cluster/devices/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceOwner {
    /// The device.
    pub device_id: String,
    /// The node owning (or that last owned) its session.
    pub node: String,
    /// The fencing epoch of that ownership.
    pub epoch: u64,
    /// Released after its last row was durable (the next owner needs no fence).
    pub clean: bool,
    /// When it was claimed or released (Unix ms).
    pub since: i64,
    /// Whether the owning node's lease holds now.
    pub node_alive: bool,
    /// Whether its session runs on the node that answered.
    pub running_here: bool,
}

/// `GET /admin/cluster/devices/{id}`: which node owns a device's session (on one node:
/// this one). 404 in a cluster when no node has run it yet.
#[utoipa::path(get, path = "/admin/cluster/devices/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, body = DeviceOwner, description = "the owning node"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 404, body = ErrorBody, description = "`not_found` (in a cluster): no node has run this device's session"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/admin/cluster/devices/{id}")]
pub async fn device_owner(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let env = &state.env;
    let running_here = env.directory.running(&id).is_some();
    let Some(cluster) = &env.cluster else {
        // One node: every session runs here; there are no owner records or epochs.
        return Ok(HttpResponse::Ok().json(DeviceOwner {
            device_id: id,
            node: env.settings.node_id.clone(),
            epoch: 0,
            clean: !running_here,
            since: state.started_at_ms,
            node_alive: true,
            running_here,
        }));
    };
    let record = env
        .store
        .get_owner(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("no node has run this device's session"))?;
    Ok(HttpResponse::Ok().json(DeviceOwner {
        node_alive: cluster.membership.alive(&record.node),
        running_here,
        device_id: record.device_id,
        node: record.node,
        epoch: record.epoch,
        clean: record.clean,
        since: record.since,
    }))
}
