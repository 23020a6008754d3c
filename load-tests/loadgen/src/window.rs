//! The measured window of a traffic scenario: the plan is broadcast, the first
//! `warmup` seconds are not counted, progress is printed while sending, then the drain
//! waits (bounded) until every counted send is answered and every delivery it calls
//! for has arrived. The server's counters are read as measuring starts and after the
//! drain.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::Args;
use crate::conn::{Peer, Phase, Plan};
use crate::server::{Snapshot, Sources};
use crate::stats::{now_us, Stats};

/// What one window sends.
pub struct Window {
    /// Total messages per second.
    pub rate: f64,
    /// Connections that send (the rate is split evenly over them).
    pub senders: usize,
    /// Seconds not counted, first.
    pub warmup: f64,
    /// Seconds counted.
    pub duration: f64,
    /// Padding bytes per body.
    pub body_bytes: usize,
    /// Longest drain.
    pub drain_timeout: Duration,
    /// Progress line period.
    pub progress_every: Duration,
}

impl Window {
    /// The window the common options describe, at `rate` over `senders`: drained for
    /// at most 5 s, a progress line every second.
    pub fn from_args(args: &Args, rate: f64, senders: usize) -> Self {
        Window {
            rate,
            senders,
            warmup: args.warmup(),
            duration: args.duration(),
            body_bytes: args.body_bytes,
            drain_timeout: Duration::from_secs(5),
            progress_every: Duration::from_secs(1),
        }
    }
}

/// What the window leaves for the report.
pub struct WindowOut {
    /// Seconds spent draining.
    pub drain_secs: f64,
    /// Server counters as measuring began.
    pub before: Snapshot,
    /// Server counters after the drain.
    pub after: Snapshot,
}

/// Runs `win` over the connected `peers`; the caller freezes `stats` afterwards.
pub async fn run(
    win: &Window,
    client: &reqwest::Client,
    sources: &Sources,
    peers: Vec<Peer>,
    phase: &watch::Sender<Phase>,
    stats: &Stats,
) -> WindowOut {
    let warmup = Duration::from_secs_f64(win.warmup);
    let duration = Duration::from_secs_f64(win.duration);
    let lead = Duration::from_millis(100);
    let start = Instant::now() + lead;
    let start_us = now_us() + lead.as_micros() as u64;
    stats.set_measure_start(start_us + warmup.as_micros() as u64);
    let end = start + warmup + duration;
    let plan = Plan {
        peers,
        start,
        end,
        per_conn_rate: win.rate / win.senders.max(1) as f64,
        padding: "x".repeat(win.body_bytes),
    };
    eprintln!(
        "sending {} msgs/s from {} connections ({:.3}/s each): {} s warm-up + {} s",
        win.rate, win.senders, plan.per_conn_rate, win.warmup, win.duration
    );
    phase.send_replace(Phase::Send(Arc::new(plan)));
    let measure_at = start + warmup;
    let snapshot = {
        let client = client.clone();
        let from = sources.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_at).await;
            Snapshot::take(&client, &from).await
        })
    };

    // Progress while sending (warm-up traffic included).
    let mut tick = tokio::time::interval_at(start + win.progress_every, win.progress_every);
    let total = |a: &AtomicU64, b: &AtomicU64| a.load(Relaxed) + b.load(Relaxed);
    let mut last = (0u64, 0u64, 0u64, 0u64);
    loop {
        let at = tokio::select! {
            at = tick.tick() => at,
            () = tokio::time::sleep_until(end) => break,
        };
        let now = (
            total(&stats.sent, &stats.sent_warmup),
            total(&stats.acked, &stats.acked_warmup),
            total(&stats.delivered, &stats.delivered_warmup),
            total(&stats.errored, &stats.errored_warmup),
        );
        let label = if at <= start + warmup {
            "warm-up  "
        } else {
            "measuring"
        };
        eprintln!(
            "  [{:>5.1} s] {label} +{} sent  +{} acked  +{} delivered  +{} errors",
            (at - start).as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2,
            now.3 - last.3,
        );
        last = now;
    }

    let drain_start = Instant::now();
    drain(stats, win.drain_timeout).await;
    let before = snapshot.await.unwrap_or_default();
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let after = Snapshot::take(client, sources).await;
    WindowOut {
        drain_secs,
        before,
        after,
    }
}

/// Waits until every counted send is answered and every delivery it calls for has
/// arrived, at most `timeout`.
pub async fn drain(stats: &Stats, timeout: Duration) {
    let started = Instant::now();
    loop {
        let sent = stats.sent.load(Relaxed);
        let answered = stats.acked.load(Relaxed) + stats.errored.load(Relaxed);
        let expected = stats.expected.load(Relaxed);
        let delivered = stats.delivered.load(Relaxed);
        if answered >= sent && delivered >= expected {
            return;
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "drain timed out: {} unanswered, {} undelivered",
                sent.saturating_sub(answered),
                expected.saturating_sub(delivered)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
