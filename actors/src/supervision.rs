//! Restart policy shared by the supervisors: restart a failed child after a backoff
//! that grows with its recent failures, and give up (escalate to the supervisor's own
//! supervisor) when it failed more than `max_restarts` times within `period` — OTP's
//! restart intensity. A child that keeps failing therefore costs a bounded number of
//! restarts per period instead of a restart storm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor treats failing children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Failures tolerated within `period`; one more escalates.
    pub max_restarts: u32,
    /// The window failures are counted in.
    pub period: Duration,
    /// Delay before the first restart; doubled per recent failure.
    pub backoff_min: Duration,
    /// Longest delay before a restart.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            period: Duration::from_secs(10),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart the child after this delay.
    RestartAfter(Duration),
    /// Too many failures in the period: fail the supervisor too.
    Escalate,
}

/// Recent failures of one child.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    failures: VecDeque<Instant>,
}

impl RestartHistory {
    /// Records a failure now and decides.
    pub fn record(&mut self, policy: &RestartPolicy) -> Decision {
        self.record_at(policy, Instant::now())
    }

    fn record_at(&mut self, policy: &RestartPolicy, now: Instant) -> Decision {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.period)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let recent = self.failures.len() as u32;
        if recent > policy.max_restarts {
            return Decision::Escalate;
        }
        let factor = 1u32 << (recent - 1).min(16);
        Decision::RestartAfter((policy.backoff_min * factor).min(policy.backoff_max))
    }

    /// Failures within the period, as of the last one recorded.
    pub fn recent(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_escalates_and_forgets_old_failures() {
        let policy = RestartPolicy {
            max_restarts: 3,
            period: Duration::from_secs(10),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(30),
        };
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(h.record_at(&policy, t0), Decision::RestartAfter(ms(10)));
        assert_eq!(
            h.record_at(&policy, t0 + ms(1)),
            Decision::RestartAfter(ms(20))
        );
        assert_eq!(
            h.record_at(&policy, t0 + ms(2)),
            Decision::RestartAfter(ms(30))
        );
        assert_eq!(h.record_at(&policy, t0 + ms(3)), Decision::Escalate);
        // Long after: the old failures no longer count.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(h.record_at(&policy, later), Decision::RestartAfter(ms(10)));
        assert_eq!(h.recent(), 1);
    }
}
