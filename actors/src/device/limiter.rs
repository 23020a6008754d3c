//! A device's rate budgets: one token bucket per priority tier (up to N at once,
//! refilled at N per minute).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use protocol::Priority;

/// Per-tier token buckets of one device.
pub struct TierLimiter {
    tiers: [DefaultDirectRateLimiter; 4],
    clock: DefaultClock,
}

impl TierLimiter {
    /// Budgets per minute for critical, high, normal, low (0 is treated as 1).
    pub fn new(per_minute: [u32; 4]) -> Self {
        let make = |n: u32| {
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_minute(n))
        };
        TierLimiter {
            tiers: per_minute.map(make),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token of `priority`'s budget, or says how long until one is free.
    pub fn check(&self, priority: Priority) -> Result<(), Duration> {
        self.tiers[priority.index()]
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_has_its_own_budget() {
        let l = TierLimiter::new([2, 2, 3, 1]);
        for _ in 0..3 {
            assert!(l.check(Priority::Normal).is_ok());
        }
        let wait = l.check(Priority::Normal).expect_err("over budget");
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(20));
        assert!(l.check(Priority::Critical).is_ok());
        assert!(l.check(Priority::Low).is_ok());
        assert!(l.check(Priority::Low).is_err());
    }
}
