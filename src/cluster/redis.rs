//! The bus over Redis pub/sub: one channel per node (`{prefix}:bus:{node}`), a publish
//! per batch on a shared connection manager, and a subscriber that hands every batch
//! for this node to the actors, in order, reconnecting by itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use actors::cluster::{Transport, TransportError};
use actors::Env;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

/// The channel of `node`.
pub fn channel(prefix: &str, node: &str) -> String {
    format!("{prefix}:bus:{node}")
}

/// Publishes batches to other nodes.
pub struct RedisTransport {
    conn: ConnectionManager,
    prefix: String,
    commands: metrics::Counter,
}

impl RedisTransport {
    /// A transport on `client` (connects lazily, reconnects by itself).
    pub fn new(client: &redis::Client, prefix: &str) -> Result<RedisTransport, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(RedisTransport {
            conn,
            prefix: prefix.to_owned(),
            commands: metrics::counter!(crate::metrics::names::REDIS_COMMANDS),
        })
    }
}

#[async_trait]
impl Transport for RedisTransport {
    async fn publish(&self, node: &str, payload: String) -> Result<bool, TransportError> {
        let mut conn = self.conn.clone();
        self.commands.increment(1);
        let receivers: i64 = conn
            .publish(channel(&self.prefix, node), payload)
            .await
            .map_err(|e| TransportError(e.to_string()))?;
        Ok(receivers > 0)
    }
}

/// Receives this node's batches for as long as `env` lives; reconnects by itself.
pub fn spawn_receiver(client: redis::Client, prefix: &str, node: &str, env: Weak<Env>) {
    let channel = channel(prefix, node);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            if env.strong_count() == 0 {
                return;
            }
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        delay = Duration::from_millis(100);
                        tracing::info!(%channel, "bus: subscribed");
                        let mut stream = pubsub.into_on_message();
                        while let Some(msg) = stream.next().await {
                            let Some(env) = env.upgrade() else { return };
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            actors::cluster::inbound::handle_batch(&env, &text).await;
                        }
                        tracing::warn!(%channel, "bus: subscription lost; reconnecting");
                    }
                    Err(e) => tracing::debug!(error = %e, "bus: subscribe failed"),
                },
                Err(e) => tracing::debug!(error = %e, "bus: Redis unreachable"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
}

/// The transport and the client its receiver needs.
pub fn connect(url: &str, prefix: &str) -> Result<(Arc<RedisTransport>, redis::Client), String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis URL: {e}"))?;
    let transport = Arc::new(RedisTransport::new(&client, prefix)?);
    Ok((transport, client))
}
