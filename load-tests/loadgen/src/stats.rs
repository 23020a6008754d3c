//! Shared measurement state: counters, latency histograms and error tallies.
//!
//! Counters are atomics. Histograms and error tallies live in a few mutex-guarded shards
//! (a connection always uses the shard of its index), so recording is cheap and mostly
//! uncontended; they are merged once at the end.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Largest latency the histograms resolve (10 minutes, µs); larger values saturate.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Current Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Locks a mutex, ignoring poisoning (the data are plain counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shard of the per-message measurements.
pub struct Shard {
    /// Send → ack latency (µs).
    ack: Histogram<u64>,
    /// Send → delivery to the recipient (µs).
    e2e: Histogram<u64>,
    /// Error answers by code.
    errors: HashMap<String, u64>,
}

impl Shard {
    fn new() -> Result<Self> {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds");
        Ok(Shard {
            ack: h()?,
            e2e: h()?,
            errors: HashMap::new(),
        })
    }
}

/// All shards merged.
pub struct Merged {
    /// Send → ack latency (µs).
    pub ack: Histogram<u64>,
    /// Send → delivery latency (µs).
    pub e2e: Histogram<u64>,
    /// Error answers by code.
    pub errors: BTreeMap<String, u64>,
}

/// Everything the connection tasks record.
///
/// "Counted" values only cover messages sent in the measured window (their send time is
/// at or after [`Stats::measure_start_us`]); warm-up traffic is excluded.
pub struct Stats {
    /// Counted sends written to a socket.
    pub sent: AtomicU64,
    /// Sends written during the warm-up (not counted).
    pub sent_warmup: AtomicU64,
    /// Counted sends acknowledged.
    pub acked: AtomicU64,
    /// Warm-up sends acknowledged.
    pub acked_warmup: AtomicU64,
    /// Counted sends answered with an error.
    pub errored: AtomicU64,
    /// Counted messages received by their recipient.
    pub delivered: AtomicU64,
    /// Warm-up messages received by their recipient.
    pub delivered_warmup: AtomicU64,
    /// Sends that could not be written (connection broken).
    pub write_failures: AtomicU64,
    /// Frames that were not valid JSON of the expected shape.
    pub bad_frames: AtomicU64,
    /// Unix µs at which counting starts; `u64::MAX` until the send phase is planned.
    measure_start_us: AtomicU64,
    /// Set at the end of the drain: later answers and deliveries are ignored.
    frozen: AtomicBool,
    shards: Vec<Mutex<Shard>>,
    /// Connections the server closed or that broke, by close code or error.
    disconnects: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Empty statistics with `shards` histogram shards.
    pub fn new(shards: usize) -> Result<Self> {
        let shards = (0..shards.max(1))
            .map(|_| Shard::new().map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Stats {
            sent: AtomicU64::new(0),
            sent_warmup: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_warmup: AtomicU64::new(0),
            errored: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_warmup: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            measure_start_us: AtomicU64::new(u64::MAX),
            frozen: AtomicBool::new(false),
            shards,
            disconnects: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sets the Unix µs from which messages are counted.
    pub fn set_measure_start(&self, us: u64) {
        self.measure_start_us.store(us, Relaxed);
    }

    /// Stops counting answers and deliveries, so the report reflects the end of the drain.
    pub fn freeze(&self) {
        self.frozen.store(true, Relaxed);
    }

    /// Whether a message sent at Unix µs `t` is counted.
    #[inline]
    pub fn counted(&self, t: u64) -> bool {
        t >= self.measure_start_us.load(Relaxed)
    }

    #[inline]
    fn frozen(&self) -> bool {
        self.frozen.load(Relaxed)
    }

    fn shard(&self, conn: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[conn % self.shards.len()])
    }

    /// Records one written send (sent at Unix µs `t`).
    #[inline]
    pub fn on_sent(&self, t: u64) {
        if self.counted(t) {
            self.sent.fetch_add(1, Relaxed);
        } else {
            self.sent_warmup.fetch_add(1, Relaxed);
        }
    }

    /// Records the ack of a send made at `t`, received at `now`.
    #[inline]
    pub fn on_ack(&self, conn: usize, t: u64, now: u64) {
        if self.frozen() {
            return;
        }
        if self.counted(t) {
            self.acked.fetch_add(1, Relaxed);
            self.shard(conn)
                .ack
                .saturating_record(now.saturating_sub(t).max(1));
        } else {
            self.acked_warmup.fetch_add(1, Relaxed);
        }
    }

    /// Records an error answer with `code` to a send made at `t` (`None`: no usable id).
    pub fn on_error(&self, conn: usize, t: Option<u64>, code: &str) {
        if self.frozen() {
            return;
        }
        let counted = match t {
            Some(t) => self.counted(t),
            None => self.counted(now_us()),
        };
        if !counted {
            return;
        }
        if t.is_some() {
            self.errored.fetch_add(1, Relaxed);
        }
        let mut shard = self.shard(conn);
        match shard.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                shard.errors.insert(code.to_owned(), 1);
            }
        }
    }

    /// Records the delivery of a message sent at `t`, received at `now`.
    #[inline]
    pub fn on_delivered(&self, conn: usize, t: u64, now: u64) {
        if self.frozen() {
            return;
        }
        if self.counted(t) {
            self.delivered.fetch_add(1, Relaxed);
            self.shard(conn)
                .e2e
                .saturating_record(now.saturating_sub(t).max(1));
        } else {
            self.delivered_warmup.fetch_add(1, Relaxed);
        }
    }

    /// Records an unexpected end of a connection.
    pub fn on_disconnect(&self, reason: String) {
        *lock(&self.disconnects).entry(reason).or_insert(0) += 1;
    }

    /// Unexpected connection ends by reason.
    pub fn disconnects(&self) -> BTreeMap<String, u64> {
        lock(&self.disconnects).clone()
    }

    /// Merges the shards.
    pub fn merged(&self) -> Result<Merged> {
        let mut ack = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?;
        let mut e2e = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?;
        let mut errors = BTreeMap::new();
        for s in &self.shards {
            let s = lock(s);
            ack.add(&s.ack).context("merging histograms")?;
            e2e.add(&s.e2e).context("merging histograms")?;
            for (code, n) in &s.errors {
                *errors.entry(code.clone()).or_insert(0) += n;
            }
        }
        Ok(Merged { ack, e2e, errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_measured_window() {
        let s = Stats::new(2).expect("stats");
        s.on_sent(5);
        assert_eq!(s.sent_warmup.load(Relaxed), 1);
        s.set_measure_start(100);
        s.on_sent(50);
        s.on_sent(150);
        s.on_ack(0, 50, 60);
        s.on_ack(1, 150, 250);
        s.on_delivered(1, 150, 400);
        s.on_error(0, Some(150), "rate_limited");
        s.on_error(1, Some(150), "rate_limited");
        assert_eq!(s.sent.load(Relaxed), 1);
        assert_eq!(s.acked.load(Relaxed), 1);
        assert_eq!(s.delivered.load(Relaxed), 1);
        let crate::stats::Merged { ack, e2e, errors } = s.merged().expect("merge");
        assert_eq!(ack.len(), 1);
        assert_eq!(ack.max(), 100);
        assert_eq!(e2e.max(), 250);
        assert_eq!(errors.get("rate_limited"), Some(&2));
        s.freeze();
        s.on_ack(0, 150, 250);
        assert_eq!(s.acked.load(Relaxed), 1);
    }
}
