//! Flood limits at the WebSocket handshake: the `Origin` allow-list, and per client IP
//! a cap on open connections and a handshake rate (a token bucket per IP).
//!
//! The IP is the TCP peer's: behind a proxy every client shares the proxy's address,
//! so raise the limits there (or set them to 0) and limit at the proxy instead.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::limits::TokenBucket;
use dashmap::DashMap;

use crate::config::Config;

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The `Origin` is not allowed.
    Origin,
    /// Too many open connections from the IP.
    Connections(u32),
    /// Too many handshakes from the IP; retry after this long.
    Rate(Duration),
}

#[derive(Debug)]
struct PerIp {
    open: u32,
    handshakes: TokenBucket,
}

/// Open connections and handshake budgets per client IP.
#[derive(Debug)]
pub struct IpLimits {
    max_connections: u32,
    handshakes_per_minute: u32,
    allowed_origins: Vec<String>,
    ips: Arc<DashMap<IpAddr, PerIp>>,
}

/// One open connection of an IP, counted until dropped.
#[derive(Debug)]
pub struct OpenSlot {
    ip: IpAddr,
    ips: Arc<DashMap<IpAddr, PerIp>>,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let empty = match self.ips.get_mut(&self.ip) {
            Some(mut e) => {
                e.open = e.open.saturating_sub(1);
                e.open == 0 && e.handshakes.is_full()
            }
            None => false,
        };
        if empty {
            self.ips.remove_if(&self.ip, |_, e| e.open == 0);
        }
    }
}

impl IpLimits {
    /// The limits of `config`.
    pub fn new(config: &Config) -> Self {
        IpLimits {
            max_connections: config.ip_max_connections,
            handshakes_per_minute: config.ip_handshakes_per_minute,
            allowed_origins: config
                .ws_allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            ips: Arc::new(DashMap::new()),
        }
    }

    /// Whether a handshake with this `Origin` header (if any) may proceed. Clients
    /// that send no `Origin` (not browsers) are not checked.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            _ if self.allowed_origins.is_empty() => true,
            None => true,
            Some(o) => {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                self.allowed_origins.contains(&o)
            }
        }
    }

    /// Admits a handshake from `ip`: a slot that counts the connection while it is
    /// open, or why not.
    pub fn admit(&self, ip: IpAddr, origin: Option<&str>) -> Result<OpenSlot, Refusal> {
        if !self.origin_allowed(origin) {
            return Err(Refusal::Origin);
        }
        let mut e = self.ips.entry(ip).or_insert_with(|| PerIp {
            open: 0,
            handshakes: TokenBucket::per_minute(self.handshakes_per_minute),
        });
        if self.max_connections > 0 && e.open >= self.max_connections {
            return Err(Refusal::Connections(self.max_connections));
        }
        if self.handshakes_per_minute > 0 {
            e.handshakes.try_take(1).map_err(Refusal::Rate)?;
        }
        e.open += 1;
        Ok(OpenSlot {
            ip,
            ips: self.ips.clone(),
        })
    }
}
