//! One owner per device: claims with fencing epochs, releases, and where a device's
//! session is (see `docs/cluster.md`, "One owner per device").

use std::sync::Arc;

use dashmap::DashMap;

use super::membership::Membership;
use crate::clock::now_ms;
use crate::store::{Store, StoreError, StoreResult};

/// Cached owners kept, at most (past this the cache starts over).
const CACHE_MAX: usize = 200_000;
/// Claims tried before giving up on a contended record.
const CLAIM_TRIES: usize = 4;

/// Where a device's session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// Here: running, or this node may start it.
    Here,
    /// On this live node.
    There(String),
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the device under `epoch`. `unclean`: the previous owner did not
    /// release it (it died or was paused), so its inbox must be fenced first.
    Owned {
        /// The fencing epoch.
        epoch: u64,
        /// Whether the takeover needs fences.
        unclean: bool,
    },
    /// A live node owns it.
    Elsewhere(String),
}

/// Device ownership of this node.
pub struct Ownership {
    store: Arc<dyn Store>,
    membership: Arc<Membership>,
    owners: DashMap<String, String>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("cached", &self.owners.len())
            .finish()
    }
}

impl Ownership {
    /// Ownership over `store`, judging liveness by `membership`.
    pub fn new(store: Arc<dyn Store>, membership: Arc<Membership>) -> Self {
        Ownership {
            store,
            membership,
            owners: DashMap::new(),
        }
    }

    fn me(&self) -> &str {
        self.membership.me()
    }

    /// Remembers that `node` owns `device`.
    pub fn note(&self, device: &str, node: &str) {
        if self.owners.len() >= CACHE_MAX {
            self.owners.clear();
        }
        self.owners.insert(device.to_owned(), node.to_owned());
    }

    /// Forgets the cached owner of `device` (it answered "not mine", or is gone).
    pub fn forget(&self, device: &str) {
        self.owners.remove(device);
    }

    /// Forgets every cached owner (a rejoin).
    pub fn forget_all(&self) {
        self.owners.clear();
    }

    /// The cached owner of `device`, if any.
    pub fn cached(&self, device: &str) -> Option<String> {
        self.owners.get(device).map(|n| n.clone())
    }

    /// Where `device`'s session is: a cached live owner, else the store's record. A
    /// record of a live other node that has not released it means there; anything else
    /// (none, released, a dead node, this node) means here.
    pub async fn locate(&self, device: &str) -> StoreResult<Locate> {
        if let Some(node) = self.cached(device) {
            if node == self.me() {
                return Ok(Locate::Here);
            }
            if self.membership.alive(&node) {
                return Ok(Locate::There(node));
            }
            self.forget(device);
        }
        let Some(record) = self.store.get_owner(device).await? else {
            return Ok(Locate::Here);
        };
        if record.clean || record.node == self.me() {
            return Ok(Locate::Here);
        }
        if self.membership.alive_fresh(&record.node).await {
            self.note(device, &record.node);
            return Ok(Locate::There(record.node));
        }
        Ok(Locate::Here)
    }

    /// Claims `device` for this node (a session starting). A record that was not
    /// released needs fences, even one of this node: the caller has let every row this
    /// node queued for the device settle, but an earlier session here may have fenced
    /// the inbox after a takeover and stopped before filling its fences.
    pub async fn claim(&self, device: &str) -> StoreResult<Claim> {
        for _ in 0..CLAIM_TRIES {
            let record = self.store.get_owner(device).await?;
            let (seen, unclean) = match &record {
                None => (None, false),
                Some(r) if r.clean => (Some(r.epoch), false),
                Some(r) if r.node == self.me() => (Some(r.epoch), true),
                Some(r) if self.membership.alive_fresh(&r.node).await => {
                    self.note(device, &r.node);
                    return Ok(Claim::Elsewhere(r.node.clone()));
                }
                Some(r) => (Some(r.epoch), true),
            };
            if let Some(new) = self
                .store
                .claim_owner(device, self.me(), seen, now_ms())
                .await?
            {
                self.note(device, self.me());
                match record {
                    Some(r) if unclean && r.node != self.me() => {
                        tracing::info!(device_id = device, epoch = new.epoch, previous = %r.node, "device taken over from a dead node");
                    }
                    _ => {}
                }
                return Ok(Claim::Owned {
                    epoch: new.epoch,
                    unclean,
                });
            }
        }
        Err(StoreError::Unavailable(format!(
            "ownership of {device} is contended"
        )))
    }

    /// Releases `device` (its session stopped and every row of it is durable), if this
    /// node still holds it at `epoch` and has not rejoined since incarnation `inc`.
    pub async fn release(&self, device: &str, epoch: u64, inc: u64) {
        if inc != self.membership.incarnation() {
            return;
        }
        match self
            .store
            .release_owner(device, self.me(), epoch, now_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::debug!(device_id = device, epoch, "release: no longer ours"),
            Err(e) => tracing::warn!(device_id = device, error = %e, "could not release a device"),
        }
    }
}
