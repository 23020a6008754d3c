//! Cross-node routing. On one node every device session is local, so the local bus
//! only says so; a Redis implementation forwards frames to the owning node.

use async_trait::async_trait;

/// Where a device's session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node.
    Local,
    /// Another node, by id.
    Remote(String),
}

/// Routes to device sessions across nodes.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Which node owns `device_id`'s session.
    async fn owner(&self, device_id: &str) -> Owner;
}

/// The single-node bus: everything is local.
#[derive(Debug, Default)]
pub struct LocalBus;

#[async_trait]
impl Bus for LocalBus {
    async fn owner(&self, _device_id: &str) -> Owner {
        Owner::Local
    }
}
