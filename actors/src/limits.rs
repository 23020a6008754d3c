//! Shared rate budgets above the device: one token bucket per tenant and one global
//! bucket, plus the [`TokenBucket`] every tier (device, pair, tenant, global) uses.
//!
//! A budget of N per minute is a bucket holding up to N tokens, refilled continuously
//! at N per minute. Buckets support `refund` so a send refused by a later tier does
//! not burn the budgets of the tiers checked before it.

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

    /// Takes one token, or says how long until one is free.
    pub fn try_take(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Gives back a token taken by [`TokenBucket::try_take`].
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    /// Whether the bucket is full (nothing to remember about it).
    pub fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.capacity
    }
}

/// A budget of N per minute that holds strictly: up to N at once, and never more than
/// N in any 60 s window. Each token comes back exactly one minute after it was spent
/// (a sliding log of the last N sends), so unlike a plain token bucket a full burst
/// followed by steady refill cannot reach 2N within one minute.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    capacity: usize,
    window: Duration,
    spent: std::collections::VecDeque<Instant>,
}

impl SlidingWindow {
    /// A budget of `per_minute` (at least one).
    pub fn per_minute(per_minute: u32) -> Self {
        Self::new(per_minute, Duration::from_secs(60))
    }

    /// A budget of `n` per `window` (at least one).
    pub fn new(n: u32, window: Duration) -> Self {
        SlidingWindow {
            capacity: n.max(1) as usize,
            window,
            spent: std::collections::VecDeque::new(),
        }
    }

    /// Takes one token, or says how long until one is free.
    pub fn try_take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        while let Some(first) = self.spent.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.spent.pop_front();
            } else {
                break;
            }
        }
        if self.spent.len() < self.capacity {
            self.spent.push_back(now);
            return Ok(());
        }
        let oldest = self.spent.front().copied().unwrap_or(now);
        let wait = (oldest + self.window).saturating_duration_since(now);
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Gives back the token taken by the last [`SlidingWindow::try_take`].
    pub fn refund(&mut self) {
        self.spent.pop_back();
    }
}

/// Which shared budget refused a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
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

    /// Takes one token from the tenant's and the global budget, or neither.
    pub fn acquire(&self, tenant_id: &str) -> Result<(), (Scope, Duration)> {
        let took_tenant = if self.tenant_rate > 0 {
            let taken = match self.tenants.get_mut(tenant_id) {
                Some(mut b) => b.try_take(),
                None => self
                    .tenants
                    .entry(tenant_id.to_owned())
                    .or_insert_with(|| TokenBucket::per_minute(self.tenant_rate))
                    .try_take(),
            };
            taken.map_err(|w| (Scope::Tenant, w))?;
            true
        } else {
            false
        };
        if let Some(global) = &self.global {
            let mut g = global.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(w) = g.try_take() {
                drop(g);
                if took_tenant {
                    if let Some(mut b) = self.tenants.get_mut(tenant_id) {
                        b.refund();
                    }
                }
                return Err((Scope::Global, w));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_takes_up_to_capacity_then_waits() {
        let mut b = TokenBucket::per_minute(3);
        for _ in 0..3 {
            assert!(b.try_take().is_ok());
        }
        let wait = b.try_take().expect_err("empty");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        b.refund();
        assert!(b.try_take().is_ok());
    }

    #[test]
    fn sliding_window_never_exceeds_n_in_any_window() {
        let window = Duration::from_millis(300);
        let mut w = SlidingWindow::new(5, window);
        let start = Instant::now();
        let mut sent: Vec<Instant> = Vec::new();
        while start.elapsed() < Duration::from_millis(1000) {
            if w.try_take().is_ok() {
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
        assert!(w.try_take().is_ok());
        let wait = w.try_take().expect_err("spent");
        assert!(wait <= window && wait > Duration::from_millis(200));
        w.refund();
        assert!(w.try_take().is_ok());
    }

    #[test]
    fn global_refusal_refunds_the_tenant() {
        let l = SharedLimits::new(5, 2);
        assert!(l.acquire("a").is_ok());
        assert!(l.acquire("a").is_ok());
        assert_eq!(l.acquire("a").map_err(|e| e.0), Err(Scope::Global));
        // The tenant kept 3 tokens: the refused call refunded its own.
        let l2 = SharedLimits::new(2, 0);
        assert!(l2.acquire("t").is_ok());
        assert!(l2.acquire("t").is_ok());
        assert_eq!(l2.acquire("t").map_err(|e| e.0), Err(Scope::Tenant));
        assert!(l2.acquire("u").is_ok());
    }
}
