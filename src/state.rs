//! What every handler shares.

use std::sync::Arc;

use actors::root::RootMsg;
use actors::Env;
use credentials::TokenKeys;
use ractor::ActorRef;
use tokio::sync::watch;

use crate::config::Config;
use crate::store::sqlite::SqliteStore;

/// Shared application state (`web::Data<AppState>`).
pub struct AppState {
    /// The actor tree's context.
    pub env: Arc<Env>,
    /// The root supervisor.
    pub root: ActorRef<RootMsg>,
    /// The embedded store (for its admin statistics).
    pub sqlite: Arc<SqliteStore>,
    /// Configuration.
    pub config: Arc<Config>,
    /// The admin bearer token.
    pub admin_token: String,
    /// Device-token signing keys.
    pub tokens: TokenKeys,
    /// Shared cache: API key hash → tenant id (`apikey:<hash>`), so authentication
    /// usually costs no store read.
    pub cache: Arc<dyn actors::cache::Cache>,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// WebSocket handshake limits (origin, per IP).
    pub ip_limits: crate::ws::guard::IpLimits,
    /// Injected store faults (only with `test_hooks`).
    pub store_faults: Option<Arc<crate::store::hooked::Faults>>,
}
