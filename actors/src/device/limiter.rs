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

    /// Takes `cost` units of `priority`'s budget, or says how long until they are free.
    pub fn check(&mut self, priority: Priority, cost: u32) -> Result<(), Duration> {
        self.tiers[priority.index()].try_take(cost)
    }

    /// Gives back the units of a send refused by a later budget.
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
            assert!(l.check(Priority::Normal, 1).is_ok());
        }
        let wait = l.check(Priority::Normal, 1).expect_err("over budget");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(l.check(Priority::Critical, 1).is_ok());
        assert!(l.check(Priority::Low, 1).is_ok());
        assert!(l.check(Priority::Low, 1).is_err());
        // A group send costs its fan-out.
        assert!(l.check(Priority::High, 2).is_ok());
        assert!(l.check(Priority::High, 1).is_err());
    }
}
