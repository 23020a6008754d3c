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

/// A histogram for latencies in µs up to [`MAX_LATENCY_US`].
fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds")
}

/// Latencies of one kind, overall and split by whether sender and recipient were
/// connected to the same node (the split is recorded only with several nodes).
pub struct Split {
    /// Every sample.
    pub all: Histogram<u64>,
    /// Sender and recipient on different nodes.
    pub cross: Histogram<u64>,
    /// Sender and recipient on the same node.
    pub same: Histogram<u64>,
}

impl Split {
    fn new() -> Result<Self> {
        Ok(Split {
            all: histogram()?,
            cross: histogram()?,
            same: histogram()?,
        })
    }

    /// Records `us`; `cross` says which part of the split it is in (`None`: one node).
    fn record(&mut self, us: u64, cross: Option<bool>) {
        self.all.saturating_record(us);
        match cross {
            Some(true) => self.cross.saturating_record(us),
            Some(false) => self.same.saturating_record(us),
            None => {}
        }
    }

    fn add(&mut self, other: &Split) -> Result<()> {
        self.all.add(&other.all).context("merging histograms")?;
        self.cross.add(&other.cross).context("merging histograms")?;
        self.same.add(&other.same).context("merging histograms")?;
        Ok(())
    }
}

/// One shard of the per-message measurements.
pub struct Shard {
    /// Send → ack latency (µs).
    ack: Split,
    /// Send → delivery to the recipient (µs).
    e2e: Split,
    /// Error answers by code.
    errors: HashMap<String, u64>,
}

impl Shard {
    fn new() -> Result<Self> {
        Ok(Shard {
            ack: Split::new()?,
            e2e: Split::new()?,
            errors: HashMap::new(),
        })
    }
}

/// All shards merged.
pub struct Merged {
    /// Send → ack latency (µs).
    pub ack: Split,
    /// Send → delivery latency (µs).
    pub e2e: Split,
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
    /// Counted sends to a device connected to another node than the sender.
    pub sent_cross: AtomicU64,
    /// Sends written during the warm-up (not counted).
    pub sent_warmup: AtomicU64,
    /// Counted sends acknowledged.
    pub acked: AtomicU64,
    /// Warm-up sends acknowledged.
    pub acked_warmup: AtomicU64,
    /// Counted sends answered with an error.
    pub errored: AtomicU64,
    /// Warm-up sends answered with an error.
    pub errored_warmup: AtomicU64,
    /// Deliveries the counted acks call for: one per 1:1 send, the group's other
    /// connected members per group send.
    pub expected: AtomicU64,
    /// Counted messages received by their recipient (live or through `sync`).
    pub delivered: AtomicU64,
    /// Of those, the ones that came in a `sync` page (the recipient was offline).
    pub delivered_sync: AtomicU64,
    /// Warm-up messages received by their recipient.
    pub delivered_warmup: AtomicU64,
    /// `sync`s that reached the `last_seq` of their connection's `ready`.
    pub syncs: AtomicU64,
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
            sent_cross: AtomicU64::new(0),
            sent_warmup: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_warmup: AtomicU64::new(0),
            errored: AtomicU64::new(0),
            errored_warmup: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_sync: AtomicU64::new(0),
            delivered_warmup: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            measure_start_us: AtomicU64::new(u64::MAX),
            frozen: AtomicBool::new(false),
            shards,
            disconnects: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts over (between the steps of one run over the same connections): every
    /// counter and histogram back to zero, nothing counted until the next
    /// [`Stats::set_measure_start`]. Answers to earlier sends that arrive later carry an
    /// earlier send time, so they land in the warm-up counters.
    pub fn reset(&self) {
        self.measure_start_us.store(u64::MAX, Relaxed);
        for c in [
            &self.sent,
            &self.sent_cross,
            &self.sent_warmup,
            &self.acked,
            &self.acked_warmup,
            &self.errored,
            &self.errored_warmup,
            &self.expected,
            &self.delivered,
            &self.delivered_sync,
            &self.delivered_warmup,
            &self.syncs,
            &self.write_failures,
            &self.bad_frames,
        ] {
            c.store(0, Relaxed);
        }
        for s in &self.shards {
            let mut guard = lock(s);
            let s = &mut *guard;
            for h in [&mut s.ack, &mut s.e2e] {
                h.all.reset();
                h.cross.reset();
                h.same.reset();
            }
            s.errors.clear();
        }
        lock(&self.disconnects).clear();
        self.frozen.store(false, Relaxed);
    }

    /// Sends written (warm-up included) and answers got for them (acks and errors,
    /// warm-up included): the run is quiet when both are equal.
    pub fn outstanding(&self) -> u64 {
        let sent = self.sent.load(Relaxed) + self.sent_warmup.load(Relaxed);
        let answered = self.acked.load(Relaxed)
            + self.acked_warmup.load(Relaxed)
            + self.errored.load(Relaxed)
            + self.errored_warmup.load(Relaxed);
        sent.saturating_sub(answered)
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

    /// Records one written send (sent at Unix µs `t`; `cross`: to a device connected
    /// to another node).
    #[inline]
    pub fn on_sent(&self, t: u64, cross: bool) {
        if self.counted(t) {
            self.sent.fetch_add(1, Relaxed);
            if cross {
                self.sent_cross.fetch_add(1, Relaxed);
            }
        } else {
            self.sent_warmup.fetch_add(1, Relaxed);
        }
    }

    /// Records the ack of a send made at `t`, received at `now` (`cross`: whether
    /// sender and recipient were on different nodes; `None` on one node); `fanout` is
    /// the number of deliveries the send calls for.
    #[inline]
    pub fn on_ack(&self, conn: usize, t: u64, now: u64, cross: Option<bool>, fanout: u64) {
        if self.frozen() {
            return;
        }
        if self.counted(t) {
            self.acked.fetch_add(1, Relaxed);
            self.expected.fetch_add(fanout, Relaxed);
            self.shard(conn)
                .ack
                .record(now.saturating_sub(t).max(1), cross);
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
            if t.is_some() {
                self.errored_warmup.fetch_add(1, Relaxed);
            }
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

    /// Records the live delivery of a message sent at `t`, received at `now` (`cross`
    /// as for [`Stats::on_ack`]).
    #[inline]
    pub fn on_delivered(&self, conn: usize, t: u64, now: u64, cross: Option<bool>) {
        if self.frozen() {
            return;
        }
        if self.counted(t) {
            self.delivered.fetch_add(1, Relaxed);
            self.shard(conn)
                .e2e
                .record(now.saturating_sub(t).max(1), cross);
        } else {
            self.delivered_warmup.fetch_add(1, Relaxed);
        }
    }

    /// Records a message sent at `t` that its recipient got in a `sync` page (it was
    /// offline when it was sent); not in the end-to-end latency.
    pub fn on_synced(&self, t: u64) {
        if self.frozen() {
            return;
        }
        if self.counted(t) {
            self.delivered.fetch_add(1, Relaxed);
            self.delivered_sync.fetch_add(1, Relaxed);
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
        let mut ack = Split::new()?;
        let mut e2e = Split::new()?;
        let mut errors = BTreeMap::new();
        for s in &self.shards {
            let s = lock(s);
            ack.add(&s.ack)?;
            e2e.add(&s.e2e)?;
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
        s.on_sent(5, true);
        assert_eq!(s.sent_warmup.load(Relaxed), 1);
        s.set_measure_start(100);
        s.on_sent(50, false);
        s.on_sent(150, true);
        s.on_ack(0, 50, 60, None, 1);
        s.on_ack(1, 150, 250, Some(true), 63);
        s.on_delivered(1, 150, 400, Some(true));
        s.on_error(0, Some(150), "rate_limited");
        s.on_error(1, Some(150), "rate_limited");
        assert_eq!(s.sent.load(Relaxed), 1);
        assert_eq!(s.sent_cross.load(Relaxed), 1);
        assert_eq!(s.acked.load(Relaxed), 1);
        assert_eq!(s.delivered.load(Relaxed), 1);
        assert_eq!(s.expected.load(Relaxed), 63);
        let crate::stats::Merged { ack, e2e, errors } = s.merged().expect("merge");
        assert_eq!(ack.all.len(), 1);
        assert_eq!(ack.all.max(), 100);
        assert_eq!(ack.cross.len(), 1);
        assert_eq!(ack.same.len(), 0);
        assert_eq!(e2e.all.max(), 250);
        assert_eq!(errors.get("rate_limited"), Some(&2));
        s.freeze();
        s.on_ack(0, 150, 250, None, 1);
        assert_eq!(s.acked.load(Relaxed), 1);
    }

    #[test]
    fn reset_starts_over_and_late_answers_are_warm_up() {
        let s = Stats::new(2).expect("stats");
        s.set_measure_start(100);
        s.on_sent(150, false);
        s.on_sent(160, false);
        s.on_ack(0, 150, 250, None, 1);
        s.on_synced(150);
        assert_eq!(s.delivered_sync.load(Relaxed), 1);
        assert_eq!(s.outstanding(), 1);
        s.freeze();
        s.reset();
        assert_eq!(s.sent.load(Relaxed), 0);
        assert_eq!(s.merged().expect("merge").ack.all.len(), 0);
        s.set_measure_start(1_000);
        // The answer to the send at 160 arrives after the reset.
        s.on_ack(0, 160, 1_100, None, 1);
        assert_eq!(s.acked.load(Relaxed), 0);
        assert_eq!(s.acked_warmup.load(Relaxed), 1);
        s.on_error(0, Some(170), "rate_limited");
        assert_eq!(s.errored_warmup.load(Relaxed), 1);
        assert!(s.merged().expect("merge").errors.is_empty());
    }
}
