//! A device's rate budgets: one per priority tier, up to N at once and never more than
//! N in any minute (see [`SlidingWindow`]).

use std::time::Duration;

use protocol::Priority;

use crate::limits::SlidingWindow;

/// Per-tier budgets of one device.
pub struct TierLimiter {
    tiers: [SlidingWindow; 4],
}

impl TierLimiter {
    /// Budgets per minute for critical, high, normal, low (0 is treated as 1).
    pub fn new(per_minute: [u32; 4]) -> Self {
        TierLimiter {
            tiers: per_minute.map(SlidingWindow::per_minute),
        }
    }

    /// Takes one token of `priority`'s budget, or says how long until one is free.
    pub fn check(&mut self, priority: Priority) -> Result<(), Duration> {
        self.tiers[priority.index()].try_take()
    }

    /// Gives back the token of a send refused by a later budget.
    pub fn refund(&mut self, priority: Priority) {
        self.tiers[priority.index()].refund();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_has_its_own_budget() {
        let mut l = TierLimiter::new([2, 2, 3, 1]);
        for _ in 0..3 {
            assert!(l.check(Priority::Normal).is_ok());
        }
        let wait = l.check(Priority::Normal).expect_err("over budget");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(l.check(Priority::Critical).is_ok());
        assert!(l.check(Priority::Low).is_ok());
        assert!(l.check(Priority::Low).is_err());
    }
}
