//! Timing of every store call, whatever the backend: per-operation call counts and
//! latencies, and a bounded log of the operations slower than `slow_query_ms` (the
//! replaced system's `getSlowQueries`), for `/admin/db/stats` and `/metrics`. A
//! [`StoreHook`] of the one decorator around the store (`hooked.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actors::store::StoreResult;
use serde::Serialize;

use super::hooked::StoreHook;

/// Slow operations kept, newest last; older ones are dropped.
pub const SLOW_LOG_CAPACITY: usize = 1000;

/// One store operation slower than the threshold.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SlowOp {
    /// Store method (e.g. `commit_rows`).
    pub operation: &'static str,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
    /// When it finished, Unix milliseconds.
    pub at: i64,
}

/// Calls of one store operation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OpStat {
    /// Store method.
    pub operation: &'static str,
    /// Calls since the server started.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Mean duration, milliseconds.
    pub mean_ms: f64,
    /// Longest call, milliseconds.
    pub max_ms: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    calls: u64,
    errors: u64,
    total_us: u64,
    max_us: u64,
}

/// Timings of the store's operations.
#[derive(Debug)]
pub struct Timing {
    threshold_us: AtomicU64,
    slow: Mutex<VecDeque<SlowOp>>,
    totals: Mutex<HashMap<&'static str, Totals>>,
}

impl Timing {
    /// Records operations slower than `slow` (zero: every one).
    pub fn new(slow: Duration) -> Self {
        Timing {
            threshold_us: AtomicU64::new(u64::try_from(slow.as_micros()).unwrap_or(u64::MAX)),
            slow: Mutex::new(VecDeque::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }

    /// The slow-operation threshold, milliseconds.
    pub fn threshold_ms(&self) -> f64 {
        self.threshold_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Calls, errors and latencies per operation, most called first.
    pub fn operations(&self) -> Vec<OpStat> {
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out: Vec<OpStat> = totals
            .iter()
            .map(|(op, t)| OpStat {
                operation: op,
                calls: t.calls,
                errors: t.errors,
                mean_ms: t.total_us as f64 / t.calls.max(1) as f64 / 1000.0,
                max_ms: t.max_us as f64 / 1000.0,
            })
            .collect();
        out.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.operation.cmp(b.operation)));
        out
    }

    /// Calls per operation.
    pub fn calls(&self) -> HashMap<&'static str, u64> {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(op, t)| (*op, t.calls))
            .collect()
    }

    /// Slow operations that finished at or after `since_ms` (Unix ms), newest first.
    pub fn slow_since(&self, since_ms: i64) -> Vec<SlowOp> {
        let slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.iter()
            .rev()
            .filter(|s| s.at >= since_ms)
            .cloned()
            .collect()
    }
}

impl StoreHook for Timing {
    fn before(&self, _op: &'static str) -> StoreResult<()> {
        Ok(())
    }

    fn after(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        metrics::counter!(crate::metrics::names::STORE_CALLS, "op" => op, "ok" => if ok { "true" } else { "false" })
            .increment(1);
        {
            let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            let t = totals.entry(op).or_default();
            t.calls += 1;
            t.errors += u64::from(!ok);
            t.total_us = t.total_us.saturating_add(us);
            t.max_us = t.max_us.max(us);
        }
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        if us > threshold || threshold == 0 {
            let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
            if slow.len() >= SLOW_LOG_CAPACITY {
                slow.pop_front();
            }
            slow.push_back(SlowOp {
                operation: op,
                duration_ms: us as f64 / 1000.0,
                at: actors::clock::now_ms(),
            });
        }
    }
}
