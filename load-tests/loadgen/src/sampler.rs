//! Periodic samples of the server (`--server-pid`, summed over the nodes): resident
//! memory, open file descriptors (`/proc/<pid>/fd`), threads (`/proc/<pid>/status`) and
//! the gauges of its `/metrics` (open connections, running device sessions, rows waiting
//! in the persistence writers). The soak reports each series' first, last, lowest and
//! highest value and its least-squares slope per minute; the storm its peak RSS.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::server::{family_sum, fetch_metrics};
use crate::sys;

/// One sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t_s: f64,
    /// VmRSS (KiB).
    pub rss_kib: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// `switchboard_connections`.
    pub connections: Option<f64>,
    /// `switchboard_sessions_running`.
    pub sessions: Option<f64>,
    /// `switchboard_persist_backlog_rows` (all writers).
    pub backlog_rows: Option<f64>,
}

/// Sums a reading over the pids (`None` unless every one was read).
fn over<F: Fn(u32) -> Option<u64>>(pids: &[u32], f: F) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

/// Reads one sample.
pub async fn take(client: &reqwest::Client, urls: &[String], pids: &[u32], t_s: f64) -> Sample {
    let mut s = Sample {
        t_s: (t_s * 10.0).round() / 10.0,
        rss_kib: over(pids, sys::rss_kib),
        fds: over(pids, sys::open_fds),
        threads: over(pids, sys::threads),
        ..Sample::default()
    };
    let mut gauges: Option<(f64, f64, f64)> = None;
    for url in urls {
        if let Some(m) = fetch_metrics(client, url).await {
            let g = gauges.get_or_insert((0.0, 0.0, 0.0));
            g.0 += family_sum(&m, "switchboard_connections");
            g.1 += family_sum(&m, "switchboard_sessions_running");
            g.2 += family_sum(&m, "switchboard_persist_backlog_rows");
        }
    }
    if let Some((c, sess, b)) = gauges {
        s.connections = Some(c);
        s.sessions = Some(sess);
        s.backlog_rows = Some(b);
    }
    s
}

/// Samples every `every` until stopped.
pub struct Sampler {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling now (the first sample at once).
    pub fn start(
        client: reqwest::Client,
        urls: Vec<String>,
        pids: Vec<u32>,
        every: Duration,
    ) -> Sampler {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                out.push(take(&client, &urls, &pids, started.elapsed().as_secs_f64()).await);
            }
            out.push(take(&client, &urls, &pids, started.elapsed().as_secs_f64()).await);
            out
        });
        Sampler { stop, handle }
    }

    /// Stops and returns the samples (a last one taken now).
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or_default()
    }
}

/// One series summarized.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// First sample.
    pub first: f64,
    /// Last sample.
    pub last: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
    /// Least-squares slope, per minute.
    pub slope_per_min: f64,
}

/// Summarizes the series `field` picks (`None` when no sample has it).
pub fn series(samples: &[Sample], field: impl Fn(&Sample) -> Option<f64>) -> Option<Series> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| field(s).map(|v| (s.t_s, v)))
        .collect();
    let (first, last) = (pts.first()?.1, pts.last()?.1);
    let n = pts.len() as f64;
    let (mt, mv) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let cov: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let slope = if var > 0.0 { cov / var * 60.0 } else { 0.0 };
    Some(Series {
        first,
        last,
        min: pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        max: pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        slope_per_min: (slope * 1000.0).round() / 1000.0,
    })
}

/// Every series of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// VmRSS (KiB).
    pub rss_kib: Option<Series>,
    /// Open file descriptors.
    pub fds: Option<Series>,
    /// Threads.
    pub threads: Option<Series>,
    /// Open connections (server's gauge).
    pub connections: Option<Series>,
    /// Running device sessions (server's gauge).
    pub sessions: Option<Series>,
    /// Rows waiting in the persistence writers.
    pub backlog_rows: Option<Series>,
}

impl Summary {
    /// Summarizes `samples`.
    pub fn of(samples: &[Sample]) -> Summary {
        Summary {
            rss_kib: series(samples, |s| s.rss_kib.map(|v| v as f64)),
            fds: series(samples, |s| s.fds.map(|v| v as f64)),
            threads: series(samples, |s| s.threads.map(|v| v as f64)),
            connections: series(samples, |s| s.connections),
            sessions: series(samples, |s| s.sessions),
            backlog_rows: series(samples, |s| s.backlog_rows),
        }
    }

    /// Appends one line per series.
    pub fn human(&self, s: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "sampled", "first", "last", "min", "max", "slope/min"
        );
        for (name, v) in [
            ("server RSS (KiB)", &self.rss_kib),
            ("open fds", &self.fds),
            ("threads", &self.threads),
            ("connections (gauge)", &self.connections),
            ("sessions running", &self.sessions),
            ("persist backlog rows", &self.backlog_rows),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    s,
                    "{name:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>12.1}",
                    v.first, v.last, v.min, v.max, v.slope_per_min
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_has_extremes_and_a_slope_per_minute() {
        let samples: Vec<Sample> = (0..5)
            .map(|i| Sample {
                t_s: i as f64 * 30.0,
                rss_kib: Some(1000 + i * 100),
                fds: if i == 2 { None } else { Some(50) },
                ..Sample::default()
            })
            .collect();
        let rss = series(&samples, |s| s.rss_kib.map(|v| v as f64)).expect("rss");
        assert_eq!(
            (rss.first, rss.last, rss.min, rss.max),
            (1000.0, 1400.0, 1000.0, 1400.0)
        );
        // 100 KiB per 30 s = 200 KiB per minute.
        assert!((rss.slope_per_min - 200.0).abs() < 1e-6);
        let fds = series(&samples, |s| s.fds.map(|v| v as f64)).expect("fds");
        assert_eq!(fds.slope_per_min, 0.0);
        assert!(series(&samples, |s| s.connections).is_none());
    }
}
