//! Outbound webhooks, the sending side (`docs/webhooks.md`): the sender task that
//! drains the outbox ([`dispatcher`]), the signature and the HTTP attempt
//! ([`signing`]), the per-endpoint circuit breaker ([`breaker`]).
//!
//! The events themselves are recorded by the actor tree (`actors::webhooks`) in the
//! store's outbox, where they survive a crash; this module only reads the outbox, so a
//! node that dies loses nothing but the attempts it had in flight, which another node
//! (or this one after a restart) takes back once their lease runs out.

pub mod breaker;
pub mod dispatcher;
pub mod signing;

use std::time::Duration;

/// The sender's tunables (`webhook_*` in the configuration, bounded there).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Attempts per delivery before it is a dead letter.
    pub max_attempts: u32,
    /// First retry delay (before jitter).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// One attempt in all.
    pub timeout: Duration,
    /// Connecting.
    pub connect_timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Consecutive failures that open an endpoint's breaker.
    pub breaker_failures: u32,
    /// How long a breaker stays open before a probe.
    pub breaker_cooldown: Duration,
    /// Outbox poll period when nothing wakes the sender.
    pub poll: Duration,
    /// Delivered and dropped deliveries are deleted this long after.
    pub retention: Duration,
    /// A claim holds this long (longer than any attempt).
    pub lease: Duration,
}

/// The delay before attempt `attempts + 1`: `base × 2^(attempts − 1)`, at most `max`,
/// times a random factor in [0.5, 1] (jitter, so retries of many deliveries spread out).
pub fn backoff(settings: &WebhookSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = settings
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(settings.backoff_max);
    let r = (ulid::Ulid::new().random() as u64) as f64 / u64::MAX as f64;
    full.mul_f64(0.5 + 0.5 * r)
}

/// What the HTTP handlers need of the sender: a client for test deliveries.
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    /// The sender's settings.
    pub settings: WebhookSettings,
    /// An HTTP client with the sender's timeouts.
    pub client: reqwest::Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            concurrency: 1,
            breaker_failures: 1,
            breaker_cooldown: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            retention: Duration::from_secs(60),
            lease: Duration::from_secs(7),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let s = settings();
        for (attempts, full) in [
            (1u32, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..20 {
                let d = backoff(&s, attempts).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d} ms, full {full}"
                );
            }
        }
    }
}
