//! One circuit breaker per endpoint, in this node's memory: after `failures`
//! consecutive failed attempts it opens for `cooldown` (nothing is sent to the
//! endpoint), then lets one probe through (half-open); the probe's success closes it,
//! its failure opens it again for another cooldown.
//!
//! Each node keeps its own breakers (a dead receiver is found dead by each node after a
//! few attempts; nothing needs sharing), bounded by the endpoints it has sent to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Everything (the count of consecutive failures so far).
    Closed(u32),
    /// Nothing until then.
    Open(Instant),
    /// One probe; `true` while it is in flight.
    HalfOpen(bool),
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open or half-open (a breaker turns half-open when
    /// asked, not on a timer, so the gauge reports its last change).
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed(_) => 0.0,
            BreakerState::Open(_) | BreakerState::HalfOpen(_) => 1.0,
        }
    }
}

/// Every endpoint's breaker.
#[derive(Debug)]
pub struct Breakers {
    failures: u32,
    cooldown: Duration,
    states: HashMap<String, BreakerState>,
}

impl Breakers {
    /// Breakers opening after `failures` consecutive failures, for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Breakers {
            failures: failures.max(1),
            cooldown,
            states: HashMap::new(),
        }
    }

    /// The endpoint's state (closed when unknown), moving an open breaker whose cooldown
    /// is over to half-open.
    pub fn state(&mut self, endpoint: &str, now: Instant) -> BreakerState {
        let s = self
            .states
            .get(endpoint)
            .copied()
            .unwrap_or(BreakerState::Closed(0));
        match s {
            BreakerState::Open(until) if now >= until => {
                let next = BreakerState::HalfOpen(false);
                self.states.insert(endpoint.to_owned(), next);
                next
            }
            s => s,
        }
    }

    /// Whether an attempt to `endpoint` may go now; a half-open breaker lets one probe
    /// through (until its outcome is reported).
    pub fn permit(&mut self, endpoint: &str, now: Instant) -> bool {
        match self.state(endpoint, now) {
            BreakerState::Closed(_) => true,
            BreakerState::Open(_) | BreakerState::HalfOpen(true) => false,
            BreakerState::HalfOpen(false) => {
                self.states
                    .insert(endpoint.to_owned(), BreakerState::HalfOpen(true));
                true
            }
        }
    }

    /// When a refused attempt may be tried again.
    pub fn retry_at(&mut self, endpoint: &str, now: Instant) -> Instant {
        match self.state(endpoint, now) {
            BreakerState::Open(until) => until,
            // A probe is in flight: look again shortly.
            _ => now + Duration::from_millis(200).min(self.cooldown),
        }
    }

    /// The endpoints nothing may be sent to now (open, or half-open with the probe out).
    pub fn blocked(&mut self, now: Instant) -> Vec<String> {
        let ids: Vec<String> = self.states.keys().cloned().collect();
        ids.into_iter()
            .filter(|id| {
                matches!(
                    self.state(id, now),
                    BreakerState::Open(_) | BreakerState::HalfOpen(true)
                )
            })
            .collect()
    }

    /// Records an attempt's outcome; answers the new state if it changed.
    pub fn record(&mut self, endpoint: &str, ok: bool, now: Instant) -> Option<BreakerState> {
        let before = self.state(endpoint, now);
        let after = match (before, ok) {
            (_, true) => BreakerState::Closed(0),
            (BreakerState::Closed(n), false) if n + 1 < self.failures => {
                BreakerState::Closed(n + 1)
            }
            (BreakerState::Open(until), false) => BreakerState::Open(until),
            (_, false) => BreakerState::Open(now + self.cooldown),
        };
        if after == BreakerState::Closed(0) {
            // Closed and clean is the default: forget it (bounded memory).
            self.states.remove(endpoint);
        } else {
            self.states.insert(endpoint.to_owned(), after);
        }
        let kind = |s: BreakerState| std::mem::discriminant(&s);
        (kind(before) != kind(after)).then_some(after)
    }

    /// Forgets an endpoint (deleted).
    pub fn forget(&mut self, endpoint: &str) {
        self.states.remove(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_once_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breakers::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(b.permit("e", t0));
            assert_eq!(b.record("e", false, t0), None);
        }
        assert!(b.permit("e", t0));
        assert!(matches!(
            b.record("e", false, t0),
            Some(BreakerState::Open(_))
        ));
        assert!(!b.permit("e", t0 + Duration::from_secs(5)));
        assert_eq!(b.blocked(t0 + Duration::from_secs(5)), vec!["e".to_owned()]);
        // Cooldown over: one probe, no second one while it is out.
        let t1 = t0 + Duration::from_secs(11);
        assert!(b.permit("e", t1));
        assert!(!b.permit("e", t1));
        // The probe fails: open again.
        assert!(matches!(
            b.record("e", false, t1),
            Some(BreakerState::Open(_))
        ));
        let t2 = t1 + Duration::from_secs(11);
        assert!(b.permit("e", t2));
        assert_eq!(b.record("e", true, t2), Some(BreakerState::Closed(0)));
        assert!(b.permit("e", t2));
        assert!(b.blocked(t2).is_empty());
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breakers::new(2, Duration::from_secs(1));
        b.record("e", false, t0);
        b.record("e", true, t0);
        assert_eq!(b.record("e", false, t0), None);
        assert!(b.permit("e", t0));
    }
}
