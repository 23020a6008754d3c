//! Shared rate budgets above the device: one token bucket per tenant and one global
//! bucket, plus the [`TokenBucket`] every tier (device, pair, tenant, global) uses.
//!
//! A budget of N per minute is a bucket holding up to N tokens, refilled continuously
//! at N per minute. Buckets support `refund` so a send refused by a later tier does
//! not burn the budgets of the tiers checked before it.
//!
//! These are the budgets of one process. In a cluster the device, tenant and global
//! budgets are also taken from a store shared by every node ([`shared`]), after these.

pub mod shared;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A token bucket: up to `capacity` at once, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens (at least one).
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket {
            capacity,
            per_sec: capacity / 60.0,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// One token at a time, one every `60 / per_minute` seconds: sends are spaced
    /// evenly, never burst (the device→recipient pair budget: WhatsApp tolerates about
    /// one message per 6 s to the same user).
    pub fn spaced(per_minute: u32) -> Self {
        let per_sec = f64::from(per_minute.max(1)) / 60.0;
        TokenBucket {
            capacity: 1.0,
            per_sec,
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
    }

    /// Takes `n` tokens, or says how long until they are free. More than the capacity
    /// at once takes a full bucket (so a large group send is possible, and spends the
    /// whole budget).
    pub fn try_take(&mut self, n: u32) -> Result<(), Duration> {
        self.refill();
        let need = f64::from(n.max(1)).min(self.capacity);
        if self.tokens >= need {
            self.tokens -= need;
            Ok(())
        } else {
            let wait = (need - self.tokens) / self.per_sec;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Gives back `n` tokens taken by [`TokenBucket::try_take`].
    pub fn refund(&mut self, n: u32) {
        let back = f64::from(n.max(1)).min(self.capacity);
        self.tokens = (self.tokens + back).min(self.capacity);
    }

    /// Whether the bucket is full (nothing to remember about it).
    pub fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.capacity
    }
}

/// A budget of N per minute that holds strictly: up to N at once, and never more than
/// N in any 60 s window. Each unit comes back exactly one minute after it was spent
/// (a sliding log of the last sends, with their costs), so unlike a plain token bucket
/// a full burst followed by steady refill cannot reach 2N within one minute.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    capacity: u64,
    window: Duration,
    spent: std::collections::VecDeque<(Instant, u64)>,
    in_window: u64,
}

impl SlidingWindow {
    /// A budget of `per_minute` (at least one).
    pub fn per_minute(per_minute: u32) -> Self {
        Self::new(per_minute, Duration::from_secs(60))
    }

    /// A budget of `n` per `window` (at least one).
    pub fn new(n: u32, window: Duration) -> Self {
        SlidingWindow {
            capacity: u64::from(n.max(1)),
            window,
            spent: std::collections::VecDeque::new(),
            in_window: 0,
        }
    }

    /// Takes `n` units, or says how long until they are free. More than the capacity
    /// at once needs (and spends) the whole budget.
    pub fn try_take(&mut self, n: u32) -> Result<(), Duration> {
        let now = Instant::now();
        while let Some((first, cost)) = self.spent.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.in_window -= cost;
                self.spent.pop_front();
            } else {
                break;
            }
        }
        let need = u64::from(n.max(1)).min(self.capacity);
        if self.in_window + need <= self.capacity {
            self.spent.push_back((now, need));
            self.in_window += need;
            return Ok(());
        }
        // Wait until enough of the oldest spends have come back.
        let mut freed = self.capacity - self.in_window;
        let mut at = now;
        for (t, cost) in &self.spent {
            freed += cost;
            at = *t + self.window;
            if freed >= need {
                break;
            }
        }
        Err(at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }

    /// Gives back the units taken by the last [`SlidingWindow::try_take`].
    pub fn refund(&mut self) {
        if let Some((_, cost)) = self.spent.pop_back() {
            self.in_window -= cost;
        }
    }
}

/// Which budget refused a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The device's budget for the send's priority tier.
    Device,
    /// The tenant's budget.
    Tenant,
    /// The server-wide budget.
    Global,
}

/// Tenant and global budgets, shared by every device session (in [`crate::Env`]).
#[derive(Debug)]
pub struct SharedLimits {
    tenant_rate: u32,
    tenants: DashMap<String, TokenBucket>,
    global: Option<Mutex<TokenBucket>>,
}

impl SharedLimits {
    /// Budgets per minute; 0 means unlimited.
    pub fn new(tenant_per_minute: u32, global_per_minute: u32) -> Self {
        SharedLimits {
            tenant_rate: tenant_per_minute,
            tenants: DashMap::new(),
            global: (global_per_minute > 0)
                .then(|| Mutex::new(TokenBucket::per_minute(global_per_minute))),
        }
    }

    /// Takes `n` tokens from the tenant's and the global budget, or from neither.
    pub fn acquire(&self, tenant_id: &str, n: u32) -> Result<(), (Scope, Duration)> {
        let took_tenant = if self.tenant_rate > 0 {
            let taken = match self.tenants.get_mut(tenant_id) {
                Some(mut b) => b.try_take(n),
                None => self
                    .tenants
                    .entry(tenant_id.to_owned())
                    .or_insert_with(|| TokenBucket::per_minute(self.tenant_rate))
                    .try_take(n),
            };
            taken.map_err(|w| (Scope::Tenant, w))?;
            true
        } else {
            false
        };
        if let Some(global) = &self.global {
            let mut g = global.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(w) = g.try_take(n) {
                drop(g);
                if took_tenant {
                    if let Some(mut b) = self.tenants.get_mut(tenant_id) {
                        b.refund(n);
                    }
                }
                return Err((Scope::Global, w));
            }
        }
        Ok(())
    }

    /// Gives back `n` tokens taken by a successful [`SharedLimits::acquire`] (a send a
    /// later budget refused).
    pub fn refund(&self, tenant_id: &str, n: u32) {
        if self.tenant_rate > 0 {
            if let Some(mut b) = self.tenants.get_mut(tenant_id) {
                b.refund(n);
            }
        }
        if let Some(global) = &self.global {
            global.lock().unwrap_or_else(|p| p.into_inner()).refund(n);
        }
    }
}

/// A device's budgets for what is not a send: receipts (per message id), typing
/// indicators and `sync` pages. Shared by the device's connections.
#[derive(Debug)]
pub struct ControlBudgets {
    receipts: Mutex<TokenBucket>,
    typing: Mutex<TokenBucket>,
    sync: Mutex<TokenBucket>,
}

/// What a [`ControlBudgets`] unit is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Message ids in `receipt` frames.
    Receipt,
    /// `typing` frames.
    Typing,
    /// `sync` frames.
    Sync,
}

impl ControlBudgets {
    /// Budgets per minute for receipts, typing and sync (0 is treated as 1).
    pub fn new(per_minute: &[u32; 3]) -> Self {
        ControlBudgets {
            receipts: Mutex::new(TokenBucket::per_minute(per_minute[0])),
            typing: Mutex::new(TokenBucket::per_minute(per_minute[1])),
            sync: Mutex::new(TokenBucket::per_minute(per_minute[2])),
        }
    }

    /// Takes `n` units of `what`, or says how long until they are free.
    pub fn take(&self, what: Control, n: u32) -> Result<(), Duration> {
        let bucket = match what {
            Control::Receipt => &self.receipts,
            Control::Typing => &self.typing,
            Control::Sync => &self.sync,
        };
        bucket.lock().unwrap_or_else(|p| p.into_inner()).try_take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_takes_up_to_capacity_then_waits() {
        let mut b = TokenBucket::per_minute(3);
        for _ in 0..3 {
            assert!(b.try_take(1).is_ok());
        }
        let wait = b.try_take(1).expect_err("empty");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        b.refund(1);
        assert!(b.try_take(1).is_ok());
        // More than the capacity needs a full bucket and empties it.
        let mut b = TokenBucket::per_minute(3);
        assert!(b.try_take(10).is_ok());
        assert!(b.try_take(1).is_err());
    }

    #[test]
    fn sliding_window_never_exceeds_n_in_any_window() {
        let window = Duration::from_millis(300);
        let mut w = SlidingWindow::new(5, window);
        let start = Instant::now();
        let mut sent: Vec<Instant> = Vec::new();
        while start.elapsed() < Duration::from_millis(1000) {
            if w.try_take(1).is_ok() {
                sent.push(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().filter(|s| **s - *t < window).count();
            assert!(in_window <= 5, "{in_window} sends within one window");
        }
        // Burst of 5 at once, then 5 more per window: about 5 × (1 + 1000 / 300).
        assert!((15..=25).contains(&sent.len()), "{}", sent.len());
        let mut w = SlidingWindow::new(1, window);
        assert!(w.try_take(1).is_ok());
        let wait = w.try_take(1).expect_err("spent");
        assert!(wait <= window && wait > Duration::from_millis(200));
        w.refund();
        assert!(w.try_take(1).is_ok());
        // Costs: a send of 3 out of 5 leaves 2.
        let mut w = SlidingWindow::new(5, window);
        assert!(w.try_take(3).is_ok());
        assert!(w.try_take(3).is_err());
        assert!(w.try_take(2).is_ok());
        assert!(w.try_take(1).is_err());
    }

    #[test]
    fn global_refusal_refunds_the_tenant() {
        let l = SharedLimits::new(5, 2);
        assert!(l.acquire("a", 1).is_ok());
        assert!(l.acquire("a", 1).is_ok());
        assert_eq!(l.acquire("a", 1).map_err(|e| e.0), Err(Scope::Global));
        // The tenant kept 3 tokens: the refused call refunded its own.
        let l2 = SharedLimits::new(2, 0);
        assert!(l2.acquire("t", 1).is_ok());
        assert!(l2.acquire("t", 1).is_ok());
        assert_eq!(l2.acquire("t", 1).map_err(|e| e.0), Err(Scope::Tenant));
        assert!(l2.acquire("u", 2).is_ok());
        // A later refusal gives back both.
        let l3 = SharedLimits::new(1, 1);
        assert!(l3.acquire("t", 1).is_ok());
        assert_eq!(l3.acquire("t", 1).map_err(|e| e.0), Err(Scope::Tenant));
        l3.refund("t", 1);
        assert!(l3.acquire("t", 1).is_ok());
    }
}
