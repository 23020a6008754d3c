//! `bulk-drain`: how fast the queue drains queued sends. Registers `--devices`
//! devices (none connected), enqueues `--messages` 1:1 messages (message k from device
//! k mod D to the next device) through `POST /v1/messages/bulk` in calls of at most
//! `--per-call` messages (≤ 10,000, and fewer when a call's body would pass 16 MiB),
//! then polls the queue gauges of `/metrics` (every `--poll` s) until nothing is queued
//! or in flight, and confirms with the tenant's counts in `GET /admin/queues/stats`
//! that every job is finished. The drain time runs from the first call to that point
//! (pessimistic by up to one poll); a sample of `--check-jobs` jobs is read back one by
//! one.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::time::Instant;

use super::{apis, cpu_secs, new_tenant, preflight, server_cpu_ticks, server_rss, us_per, Output};
use crate::cli::{Args, BulkOpts};
use crate::conn::address_of;
use crate::fleet;
use crate::report::round;
use crate::server::fetch_metrics;
use crate::setup::{Api, JobCounts};

/// Largest body the server takes (16 MiB), with room to spare.
const MAX_BODY: usize = 15 * 1024 * 1024;

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    url: String,
    devices: usize,
    messages: usize,
    priority: String,
    body_bytes: usize,
    per_call: usize,
    calls: usize,
    /// Seconds from the first call's start to the last call's 202.
    enqueue_secs: f64,
    enqueue_msgs_per_sec: f64,
    /// Seconds from the first call's start until every job is finished.
    drain_secs: f64,
    /// `messages` / `drain_secs`: queued messages sent per second, end to end.
    drained_msgs_per_sec: f64,
    /// Seconds from the last 202 until every job is finished.
    after_enqueue_secs: f64,
    completed: u64,
    failed: u64,
    /// The jobs read back one by one, by state.
    checked: std::collections::BTreeMap<String, u64>,
    cpu_secs: Option<f64>,
    cpu_us_per_message: Option<f64>,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
}

impl Report {
    fn human(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "=== loadgen bulk-drain report ({}) ===", self.url);
        let _ = writeln!(
            s,
            "{} messages from {} devices, priority {}, body {} B, {} calls of ≤ {}",
            self.messages, self.devices, self.priority, self.body_bytes, self.calls, self.per_call
        );
        let _ = writeln!(
            s,
            "enqueue          {:.2} s ({:.0} msg/s to 202)",
            self.enqueue_secs, self.enqueue_msgs_per_sec
        );
        let _ = writeln!(
            s,
            "drain            all finished {:.2} s after the first call → {:.0} queued msg/s ({:.2} s after the last 202)",
            self.drain_secs, self.drained_msgs_per_sec, self.after_enqueue_secs
        );
        let _ = writeln!(
            s,
            "jobs             {} completed, {} failed",
            self.completed, self.failed
        );
        let checked: Vec<String> = self
            .checked
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "checked one by one: {}", checked.join(", "));
        if let Some(cpu) = self.cpu_secs {
            let _ = writeln!(
                s,
                "server CPU       {cpu:.2} s ({:.1} µs per queued message)",
                self.cpu_us_per_message.unwrap_or(0.0)
            );
        }
        if let (Some(b), Some(a)) = (self.rss_before_kib, self.rss_after_kib) {
            let _ = writeln!(s, "server RSS       before {b} KiB  after {a} KiB");
        }
        s
    }
}

/// One call's body: messages `range` (k from device k mod D to the next one).
fn call_body(
    ids: &[String],
    range: std::ops::Range<usize>,
    priority: &str,
    padding: &str,
) -> Vec<u8> {
    let d = ids.len();
    let mut s = String::with_capacity(range.len() * (120 + padding.len()));
    s.push_str(r#"{"messages":["#);
    for (n, k) in range.enumerate() {
        if n > 0 {
            s.push(',');
        }
        let from = k % d;
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            r#"{{"device":"{}","to":"{}","body":{{"k":{k},"p":"{padding}"}},"priority":"{priority}"}}"#,
            ids[from],
            address_of((from + 1) % d)
        );
    }
    s.push_str("]}");
    s.into_bytes()
}

/// Jobs queued or in flight by the servers' `/metrics` (`switchboard_queue_depth`,
/// the store's count of pending jobs, from the first node; `switchboard_queue_active`
/// summed over every node), or `None` when a node does not answer.
async fn queue_pending(apis: &[Api], urls: &[String]) -> Option<u64> {
    let mut pending = 0.0;
    for (i, (api, url)) in apis.iter().zip(urls).enumerate() {
        let series = fetch_metrics(api.client(), url).await?;
        for (name, value) in &series {
            let family = name.split('{').next().unwrap_or(name);
            if family == "switchboard_queue_active"
                || (i == 0 && family == "switchboard_queue_depth")
            {
                pending += value;
            }
        }
    }
    Some(pending.max(0.0) as u64)
}

/// Runs the bulk drain.
pub async fn run(args: &Args, o: &BulkOpts) -> Result<Output> {
    preflight(args, 0);
    let apis = apis(args)?;
    let api = &apis[0];
    let tenant = new_tenant(args, api).await?;
    let key = tenant.api_key.clone();
    let devices = fleet::register_all(args, api, &key, 0..args.devices(), false).await?;
    let ids: Vec<String> = devices.into_iter().map(|r| r.device_id).collect();
    let padding = "x".repeat(args.body_bytes);
    let entry = 120 + ids.first().map_or(0, String::len) + padding.len();
    let per_call = o.per_call.min(MAX_BODY / entry).max(1);
    let n = o.messages;
    let every = (n / o.check_jobs.max(1)).max(1);

    let rss_before = server_rss(args);
    let cpu_before = server_cpu_ticks(args);
    let t0 = Instant::now();
    let (mut calls, mut sample, mut last) = (0usize, Vec::new(), String::new());
    for start in (0..n).step_by(per_call) {
        let range = start..(start + per_call).min(n);
        let want = range.len();
        let body = call_body(&ids, range, &o.priority, &padding);
        let job_ids = api.bulk_send(&key, body).await.context("enqueueing")?;
        if job_ids.len() != want {
            bail!(
                "POST /v1/messages/bulk answered {} job ids for {want} messages",
                job_ids.len()
            );
        }
        for (i, id) in job_ids.iter().enumerate() {
            if (start + i) % every == 0 {
                sample.push(id.clone());
            }
        }
        last = job_ids.last().cloned().unwrap_or_default();
        calls += 1;
    }
    let enqueue_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "enqueued {n} messages in {calls} calls in {enqueue_secs:.2} s; waiting for the drain"
    );
    sample.push(last.clone());

    let deadline = t0 + Duration::from_secs_f64(o.drain_timeout);
    let poll = Duration::from_secs_f64(o.poll);
    let mut last_progress = Instant::now();
    // Waits on the queue gauges of `/metrics` (lane depths from a partial index over
    // the pending jobs, in-flight counts from memory: cheap), then confirms with the
    // tenant's counts, a count over every job, which is asked only then (and every 2 s
    // for progress): polled every 0.25 s it cost the server a full scan of the jobs
    // four times a second and slowed the drain being measured.
    let counts: JobCounts = loop {
        let pending = queue_pending(&apis, &args.urls).await;
        let progress_due = last_progress.elapsed() >= Duration::from_secs(2);
        if pending == Some(0) || progress_due {
            let c = api
                .tenant_jobs(args.admin_token(), &tenant.tenant_id)
                .await?;
            if c.completed + c.failed >= n as u64 {
                break c;
            }
            if progress_due {
                last_progress = Instant::now();
                eprintln!(
                    "  [{:>5.1} s] {} completed, {} failed, {} waiting, {} delayed, {} active",
                    t0.elapsed().as_secs_f64(),
                    c.completed,
                    c.failed,
                    c.waiting,
                    c.delayed,
                    c.active
                );
            }
        }
        if Instant::now() >= deadline {
            let job = api.job(&key, &last).await?;
            bail!(
                "not every job finished by --drain-timeout (the last one enqueued is {})",
                job.state
            );
        }
        tokio::time::sleep(poll).await;
    };
    let drain_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(cpu_before, server_cpu_ticks(args));
    let rss_after = server_rss(args);
    let mut checked = std::collections::BTreeMap::new();
    for id in &sample {
        let job = api.job(&key, id).await?;
        let state = match (job.state.as_str(), &job.message_id, &job.error) {
            ("completed", Some(_), _) => "completed".to_owned(),
            ("completed", None, _) => "completed without message_id".to_owned(),
            (s, _, Some(e)) => format!("{s}: {e}"),
            (s, _, None) => s.to_owned(),
        };
        *checked.entry(state).or_insert(0) += 1;
    }
    let report = Report {
        scenario: "bulk-drain",
        url: args.urls[0].clone(),
        devices: ids.len(),
        messages: n,
        priority: o.priority.clone(),
        body_bytes: args.body_bytes,
        per_call,
        calls,
        enqueue_secs: round(enqueue_secs, 3),
        enqueue_msgs_per_sec: round(n as f64 / enqueue_secs.max(1e-9), 0),
        drain_secs: round(drain_secs, 3),
        drained_msgs_per_sec: round(n as f64 / drain_secs.max(1e-9), 0),
        after_enqueue_secs: round(drain_secs - enqueue_secs, 3),
        completed: counts.completed,
        failed: counts.failed,
        checked,
        cpu_secs: cpu,
        cpu_us_per_message: us_per(cpu, n as u64),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
    };
    Output::of(&report, report.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_bodies_send_each_device_to_the_next() {
        let ids = vec!["d_a".to_owned(), "d_b".to_owned(), "d_c".to_owned()];
        let body = call_body(&ids, 2..5, "low", "xx");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let m = v["messages"].as_array().expect("messages");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["device"], "d_c");
        assert_eq!(m[0]["to"], address_of(0));
        assert_eq!(m[1]["device"], "d_a");
        assert_eq!(m[1]["to"], address_of(1));
        assert_eq!(m[2]["body"]["k"], 4);
        assert_eq!(m[2]["priority"], "low");
    }
}
