//! What every handler shares.

use std::sync::Arc;

use actors::root::RootMsg;
use actors::Env;
use credentials::TokenKeys;
use ractor::ActorRef;
use tokio::sync::watch;

use crate::config::Config;

/// Shared application state (`web::Data<AppState>`).
pub struct AppState {
    /// The actor tree's context.
    pub env: Arc<Env>,
    /// The root supervisor.
    pub root: ActorRef<RootMsg>,
    /// The backend's admin statistics.
    pub store_admin: Arc<dyn crate::store::StoreAdmin>,
    /// Timings of every store call.
    pub timing: Arc<crate::store::timed::Timing>,
    /// This node's id (random per process; names it in cache invalidations).
    pub node_id: String,
    /// Where this node's HTTP API is reachable (`advertise_url`, or the bound address).
    pub advertised: String,
    /// When this process started (Unix ms).
    pub started_at_ms: i64,
    /// The node's registration when it is the only node on a MongoDB database (in a
    /// cluster it is `env.cluster`).
    pub solo_membership: Option<Arc<actors::cluster::Membership>>,
    /// Configuration.
    pub config: Arc<Config>,
    /// The admin bearer token.
    pub admin_token: String,
    /// Device-token signing keys.
    pub tokens: TokenKeys,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// WebSocket handshake limits (origin, per IP).
    pub ip_limits: crate::ws::guard::IpLimits,
    /// Injected store faults (only with `test_hooks`).
    pub store_faults: Option<Arc<crate::store::hooked::Faults>>,
    /// Uploaded files: their store, limits and processing.
    pub media: Arc<crate::media::Media>,
    /// The webhook sender's settings and HTTP client (test deliveries).
    pub webhooks: crate::webhooks::WebhookHandle,
    /// The runtime the actor tree runs on. WebSocket sessions are moved onto it after
    /// the handshake, so a frame reaches its device actor without waking another thread.
    pub runtime: tokio::runtime::Handle,
}
