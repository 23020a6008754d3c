//! `max-rate`: the highest 1:1 rate the server sustains within a latency bound. Over one
//! set of connections, steps of `--warmup` + `--duration` seconds are run at rising
//! offered rates: doubling from `--rate` until a step fails, then bisecting between the
//! best passing and the lowest failing rate until they are within `--precision`, at most
//! `--max-steps` steps and `--max-time` seconds. A step passes when the generator kept
//! up (sent ≥ 95 % of the offered rate), nothing was lost, left unanswered or refused,
//! and the p99 end-to-end latency is at most `--threshold-ms`. Between steps the
//! backlog of a failed step is given up to `--settle` s to be answered.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{new_stats, one_to_one, preflight, protocol_name, sources, us_per, Output};
use crate::cli::{Args, MaxRateOpts};
use crate::conn::{Phase, Route};
use crate::fleet;
use crate::report::{round, tally, Traffic};
use crate::server::ServerCosts;
use crate::stats::Stats;
use crate::window::{self, Window};

/// One step of the search.
#[derive(Debug, Serialize)]
struct Step {
    /// Offered msg/s.
    rate: f64,
    /// Whether it met every condition.
    passed: bool,
    /// Why it failed (empty when it passed).
    why: String,
    /// The step's figures.
    #[serde(flatten)]
    traffic: Traffic,
    /// Server CPU µs per delivered message (with --server-pid).
    cpu_us_per_delivered: Option<f64>,
}

/// Parameters echoed in the report.
#[derive(Debug, Serialize)]
struct Params {
    url: String,
    devices: usize,
    first_rate: f64,
    threshold_ms: f64,
    step_duration_s: f64,
    warmup_s: f64,
    body_bytes: usize,
    ceiling: f64,
    precision: f64,
    max_steps: usize,
    max_time_s: f64,
}

/// The report.
#[derive(Debug, Serialize)]
struct MaxRateReport {
    scenario: &'static str,
    protocol: &'static str,
    params: Params,
    connections: usize,
    /// Highest passing offered rate (msg/s).
    best_rate: Option<f64>,
    /// Lowest failing offered rate.
    lowest_failing_rate: Option<f64>,
    /// Why the search stopped.
    stopped: String,
    elapsed_s: f64,
    steps: Vec<Step>,
    disconnects: std::collections::BTreeMap<String, u64>,
}

impl MaxRateReport {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let p = &self.params;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "=== loadgen max-rate report ({}, {}) ===",
            self.protocol, p.url
        );
        let _ = writeln!(
            s,
            "{} connections; steps of {} s (+{} s warm-up); pass: p99 e2e ≤ {} ms, nothing lost/unacked/refused",
            self.connections, p.step_duration_s, p.warmup_s, p.threshold_ms
        );
        let _ = writeln!(
            s,
            "{:>9} {:>9} {:>9} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}  result",
            "offered",
            "sent/s",
            "acked/s",
            "lost",
            "unacked",
            "errors",
            "ack p50",
            "ack p99",
            "e2e p50",
            "e2e p99",
            "cpu µs"
        );
        let ms = |us: u64| format!("{:.1}ms", us as f64 / 1000.0);
        for st in &self.steps {
            let t = &st.traffic;
            let _ = writeln!(
                s,
                "{:>9.0} {:>9.0} {:>9.0} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
                st.rate,
                t.sent_per_sec,
                t.msgs_per_sec,
                t.lost,
                t.unacked,
                t.errored,
                ms(t.ack_latency.p50_us),
                ms(t.ack_latency.p99_us),
                ms(t.e2e_latency.p50_us),
                ms(t.e2e_latency.p99_us),
                st.cpu_us_per_delivered
                    .map_or("?".to_owned(), |c| format!("{c:.1}")),
                if st.passed {
                    "pass".to_owned()
                } else {
                    format!("FAIL: {}", st.why)
                }
            );
        }
        match self.best_rate {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "highest passing rate: {r:.0} msg/s{}",
                    self.lowest_failing_rate
                        .map_or(String::new(), |f| format!(" (lowest failing {f:.0})"))
                );
            }
            None => {
                let _ = writeln!(s, "no step passed");
            }
        }
        let _ = writeln!(s, "stopped: {} after {:.0} s", self.stopped, self.elapsed_s);
        if !self.disconnects.is_empty() {
            let _ = writeln!(s, "disconnects      {}", tally(&self.disconnects));
        }
        s
    }
}

/// Rounds a rate to three significant digits (at least 1 msg/s).
fn round_rate(r: f64) -> f64 {
    if r < 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(r.log10().floor() - 2.0).max(1.0);
    (r / mag).round() * mag
}

/// The next rate to try, or `None` when the search is done.
fn next_rate(lo: f64, hi: Option<f64>, last: f64, o: &MaxRateOpts) -> Option<f64> {
    let next = match hi {
        None => {
            if last >= o.ceiling {
                return None;
            }
            (last * 2.0).min(o.ceiling)
        }
        Some(h) => {
            if lo > 0.0 && (h - lo) / lo <= o.precision {
                return None;
            }
            if lo <= 0.0 {
                h / 2.0
            } else {
                (lo + h) / 2.0
            }
        }
    };
    let next = round_rate(next);
    (next != lo && Some(next) != hi && next >= 1.0).then_some(next)
}

/// Why a step failed, or an empty string.
fn verdict(t: &Traffic, rate: f64, threshold_ms: f64) -> String {
    let mut why = Vec::new();
    if t.sent_per_sec < 0.95 * rate {
        why.push(format!("generator sent {:.0}/s", t.sent_per_sec));
    }
    if t.lost > 0 {
        why.push(format!("{} lost", t.lost));
    }
    if t.unacked > 0 {
        why.push(format!("{} unacked", t.unacked));
    }
    if t.errored > 0 {
        why.push(format!("{} refused", t.errored));
    }
    if t.e2e_latency.count == 0 || t.e2e_latency.p99_us as f64 > threshold_ms * 1000.0 {
        why.push(format!(
            "p99 e2e {:.1} ms",
            t.e2e_latency.p99_us as f64 / 1000.0
        ));
    }
    why.join(", ")
}

/// Waits until the answers to the previous step's outstanding sends came in (they
/// arrive as warm-up answers after the reset), at most `settle`.
async fn settle(stats: &Stats, outstanding: u64, settle: Duration) {
    if outstanding == 0 {
        return;
    }
    let started = Instant::now();
    eprintln!("settling: {outstanding} sends of the last step unanswered");
    while started.elapsed() < settle {
        let late = stats.acked_warmup.load(Relaxed) + stats.errored_warmup.load(Relaxed);
        if late >= outstanding {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("settle timed out after {settle:?}");
}

/// Runs the search.
pub async fn run(args: &Args, o: &MaxRateOpts) -> Result<Output> {
    preflight(args, args.devices());
    let (server, client) = one_to_one::server(args).await?;
    let stats = new_stats()?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let conns = fleet::connect_all(
        args,
        &server,
        args.devices(),
        |_| Route::Random,
        fleet::spawn_live(phase_rx, stats.clone()),
    )
    .await;
    if conns.opened() < 2 {
        bail!("at least 2 connections are needed");
    }
    let started = Instant::now();
    let step_secs = args.warmup() + args.duration() + 1.0;
    let mut steps: Vec<Step> = Vec::new();
    let (mut lo, mut hi) = (0.0f64, None::<f64>);
    let mut rate = round_rate(args.rate());
    let mut disconnects = std::collections::BTreeMap::new();
    let stopped = loop {
        if steps.len() >= o.max_steps {
            break format!("--max-steps {} reached", o.max_steps);
        }
        if started.elapsed().as_secs_f64() + step_secs > o.max_time {
            break format!("--max-time {} s reached", o.max_time);
        }
        eprintln!("--- step {}: {rate} msg/s", steps.len() + 1);
        stats.reset();
        let win = Window::from_args(args, rate, conns.opened());
        let out = window::run(
            &win,
            &client,
            &sources(args),
            conns.peers.clone(),
            &phase_tx,
            &stats,
        )
        .await;
        stats.freeze();
        let outstanding = stats.outstanding();
        let (traffic, _) = Traffic::collect(&stats, args.duration(), out.drain_secs)?;
        for (k, v) in stats.disconnects() {
            *disconnects.entry(k).or_insert(0) += v;
        }
        let costs = ServerCosts::between(&out.before, &out.after, traffic.acked);
        let why = verdict(&traffic, rate, o.threshold_ms);
        let passed = why.is_empty();
        eprintln!(
            "    {rate} msg/s: {} (p99 e2e {:.1} ms, {} lost, {} unacked)",
            if passed { "pass" } else { "FAIL" },
            traffic.e2e_latency.p99_us as f64 / 1000.0,
            traffic.lost,
            traffic.unacked
        );
        steps.push(Step {
            rate,
            passed,
            why,
            cpu_us_per_delivered: us_per(costs.cpu_secs, traffic.delivered),
            traffic,
        });
        if passed {
            lo = lo.max(rate);
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        // Late answers of this step land in the warm-up counters after the reset.
        stats.reset();
        settle(&stats, outstanding, Duration::from_secs_f64(o.settle)).await;
        match next_rate(lo, hi, rate, o) {
            Some(r) => rate = r,
            None => {
                break if hi.is_none() {
                    format!("--ceiling {} reached", o.ceiling)
                } else {
                    "converged".to_owned()
                }
            }
        }
    };
    phase_tx.send_replace(Phase::Close);
    let connections = conns.opened();
    fleet::close_all(conns.handles).await;
    let report = MaxRateReport {
        scenario: "max-rate",
        protocol: protocol_name(args),
        params: Params {
            url: args.url_list(),
            devices: args.devices(),
            first_rate: args.rate(),
            threshold_ms: o.threshold_ms,
            step_duration_s: args.duration(),
            warmup_s: args.warmup(),
            body_bytes: args.body_bytes,
            ceiling: o.ceiling,
            precision: o.precision,
            max_steps: o.max_steps,
            max_time_s: o.max_time,
        },
        connections,
        best_rate: (lo > 0.0).then_some(lo),
        lowest_failing_rate: hi,
        stopped,
        elapsed_s: round(started.elapsed().as_secs_f64(), 1),
        steps,
        disconnects,
    };
    Output::of(&report, report.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MaxRateOpts {
        MaxRateOpts {
            threshold_ms: 50.0,
            max_steps: 10,
            max_time: 300.0,
            ceiling: 100_000.0,
            precision: 0.1,
            settle: 30.0,
        }
    }

    #[test]
    fn doubles_then_bisects_until_close_enough() {
        let o = opts();
        assert_eq!(next_rate(2000.0, None, 2000.0, &o), Some(4000.0));
        assert_eq!(
            next_rate(8000.0, Some(16_000.0), 16_000.0, &o),
            Some(12_000.0)
        );
        assert_eq!(
            next_rate(8000.0, Some(12_000.0), 12_000.0, &o),
            Some(10_000.0)
        );
        assert_eq!(next_rate(10_000.0, Some(10_500.0), 10_500.0, &o), None);
        // Nothing passed yet: halve.
        assert_eq!(next_rate(0.0, Some(2000.0), 2000.0, &o), Some(1000.0));
        // Ceiling.
        assert_eq!(next_rate(100_000.0, None, 100_000.0, &o), None);
        assert_eq!(next_rate(64_000.0, None, 64_000.0, &o), Some(100_000.0));
        assert_eq!(round_rate(12_345.0), 12_300.0);
        assert_eq!(round_rate(7.4), 7.0);
    }

    #[test]
    fn a_step_fails_on_loss_latency_or_a_short_generator() {
        let mut t = Traffic {
            sent_per_sec: 1000.0,
            ..Traffic::default()
        };
        t.e2e_latency.count = 10;
        t.e2e_latency.p99_us = 20_000;
        assert_eq!(verdict(&t, 1000.0, 50.0), "");
        t.e2e_latency.p99_us = 60_000;
        assert!(verdict(&t, 1000.0, 50.0).contains("p99"));
        t.e2e_latency.p99_us = 1;
        t.lost = 1;
        t.sent_per_sec = 500.0;
        let why = verdict(&t, 1000.0, 50.0);
        assert!(why.contains("lost") && why.contains("generator"), "{why}");
    }
}
