//! `reconnect-storm`: D devices, each M messages behind, connect at once and catch up.
//!
//! 1. Register D devices and their tokens over REST (none connected).
//! 2. Fill their inboxes while they are offline, over WebSockets: by group sends
//!    (`--fill group`, default: groups of up to 1,023 devices plus one sender, M sends
//!    per group, one inbox row per member and send) or 1:1 sends from `--senders`
//!    sender devices (`--fill direct`). Every send is acked once durable, so when the
//!    fill ends every backlog is stored. The senders disconnect.
//! 3. The storm: all D devices open their WebSocket at once (or `--storm-concurrency`
//!    at a time) and `sync` from their last seq (0: they never connected) in pages of
//!    1,000, following `next_after_seq` until `more` is false. Each device checks what
//!    it got: exactly M messages, no message id twice, seqs strictly increasing, the
//!    bodies' backlog positions in order, and `ready`'s `last_seq` equal to M.
//!
//! Reported: time until every device is synced, per-device time to `ready` and to
//! synced (p50 / p99 / max, from the storm's start), messages per device, and the
//! server's CPU over the storm and its RSS before, at the peak and after.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{apis, cpu_secs, new_tenant, preflight, server_cpu_ticks, server_rss, us_per, Output};
use crate::cli::{Args, Fill, StormOpts};
use crate::conn::frames::{self, sync_frame, Frame};
use crate::conn::{address_of, Ws};
use crate::fleet::{self, tally_failure};
use crate::report::{round, tally};
use crate::sampler::{Sample, Sampler};
use crate::setup::Api;
use crate::stats::now_us;

/// Members a group may have besides its sender.
const GROUP_RECIPIENTS: usize = 1023;

/// How the backlog was filled.
#[derive(Debug, Serialize)]
struct FillReport {
    method: &'static str,
    senders: usize,
    /// Sends acked.
    sends: u64,
    /// Inbox rows of the offline devices these sends wrote.
    backlog_rows: u64,
    secs: f64,
    backlog_rows_per_sec: f64,
}

/// Percentiles of per-device times (ms from the storm's start).
#[derive(Debug, Default, Serialize)]
struct Times {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Times {
    fn of(mut v: Vec<f64>) -> Times {
        if v.is_empty() {
            return Times::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Times {
            p50_ms: round(at(0.5), 1),
            p99_ms: round(at(0.99), 1),
            max_ms: round(at(1.0), 1),
        }
    }

    fn human(&self) -> String {
        format!(
            "p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// What one device of the storm saw.
#[derive(Debug, Default)]
struct DeviceResult {
    ready_ms: f64,
    synced_ms: f64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    last_seq: u64,
    pages: u64,
    sync_errors: u64,
}

/// The storm's figures.
#[derive(Debug, Serialize)]
struct StormReport {
    /// Devices that connected and synced to the end.
    synced: usize,
    /// Devices that did not (by error).
    failed: u64,
    failures: BTreeMap<String, u64>,
    /// From the storm's start until the last device was synced.
    secs_to_all_synced: f64,
    messages_received: u64,
    messages_per_sec: f64,
    /// Devices that got exactly M messages.
    devices_exact: usize,
    /// Devices that got fewer / more.
    devices_short: usize,
    devices_over: usize,
    duplicates: u64,
    out_of_order: u64,
    /// Devices whose `ready` said another `last_seq` than M.
    ready_last_seq_mismatch: usize,
    pages: u64,
    sync_errors: u64,
    time_to_ready: Times,
    time_to_synced: Times,
}

/// The server over the storm.
#[derive(Debug, Serialize)]
struct ServerFigures {
    cpu_secs: Option<f64>,
    cpu_us_per_message: Option<f64>,
    rss_before_fill_kib: Option<u64>,
    rss_before_storm_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    fds_peak: Option<u64>,
    threads_peak: Option<u64>,
}

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    url: String,
    devices: usize,
    backlog: u64,
    body_bytes: usize,
    fill: FillReport,
    storm: StormReport,
    server: ServerFigures,
}

impl Report {
    fn human(&self) -> String {
        let mut s = String::new();
        let (f, st, sv) = (&self.fill, &self.storm, &self.server);
        // Writing to a String cannot fail.
        let _ = writeln!(s, "=== loadgen reconnect-storm report ({}) ===", self.url);
        let _ = writeln!(
            s,
            "{} devices, each {} messages behind (body {} B)",
            self.devices, self.backlog, self.body_bytes
        );
        let _ = writeln!(
            s,
            "fill             {} via {} sends from {} senders in {:.1} s ({} backlog rows, {:.0} rows/s)",
            f.sends, f.method, f.senders, f.secs, f.backlog_rows, f.backlog_rows_per_sec
        );
        let _ = writeln!(
            s,
            "storm            {} synced, {} failed; all synced {:.2} s after the start ({} messages, {:.0}/s){}",
            st.synced,
            st.failed,
            st.secs_to_all_synced,
            st.messages_received,
            st.messages_per_sec,
            if st.failures.is_empty() {
                String::new()
            } else {
                format!("; failures{}", tally(&st.failures))
            }
        );
        let _ = writeln!(
            s,
            "per device       {} exactly {}, {} short, {} over; {} duplicates, {} out of order; {} ready last_seq ≠ {}",
            st.devices_exact, self.backlog, st.devices_short, st.devices_over, st.duplicates, st.out_of_order, st.ready_last_seq_mismatch, self.backlog
        );
        let _ = writeln!(s, "time to ready    {}", st.time_to_ready.human());
        let _ = writeln!(s, "time to synced   {}", st.time_to_synced.human());
        let _ = writeln!(
            s,
            "sync pages       {} ({} sync errors)",
            st.pages, st.sync_errors
        );
        if let Some(cpu) = sv.cpu_secs {
            let _ = writeln!(
                s,
                "server CPU       {cpu:.2} s over the storm ({:.1} µs per message synced)",
                sv.cpu_us_per_message.unwrap_or(0.0)
            );
        }
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{} MiB", v / 1024));
        if sv.rss_before_storm_kib.is_some() {
            let _ = writeln!(
                s,
                "server RSS       before fill {}  before storm {}  peak {}  after {}",
                kib(sv.rss_before_fill_kib),
                kib(sv.rss_before_storm_kib),
                kib(sv.rss_peak_kib),
                kib(sv.rss_after_kib)
            );
            let _ = writeln!(
                s,
                "server peaks     {} fds, {} threads",
                sv.fds_peak.map_or("?".to_owned(), |v| v.to_string()),
                sv.threads_peak.map_or("?".to_owned(), |v| v.to_string())
            );
        }
        s
    }
}

/// Sends `frames` over `ws` with at most `window` unanswered, until all are answered
/// (or `deadline`); returns the acks.
async fn send_all(
    ws: Ws,
    frames: impl Iterator<Item = String>,
    window: usize,
    deadline: Instant,
) -> Result<u64> {
    let (mut sink, mut stream) = ws.split();
    let mut frames = frames.peekable();
    let (mut outstanding, mut acked) = (0usize, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        while outstanding < window {
            let Some(f) = frames.next() else { break };
            sink.feed(Message::text(f))
                .await
                .context("writing a fill send")?;
            outstanding += 1;
        }
        sink.flush().await.context("writing a fill send")?;
        if outstanding == 0 && frames.peek().is_none() {
            break;
        }
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow!("the fill did not finish within --fill-timeout"))?;
        let Some(Ok(Message::Text(text))) = msg else {
            match msg {
                Some(Ok(Message::Close(f))) => bail!("a sender was closed: {f:?}"),
                Some(Err(e)) => return Err(e).context("a sender's connection"),
                None => bail!("a sender's connection ended"),
                _ => continue,
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
            continue;
        };
        match frame.kind {
            "ack" => {
                outstanding -= 1;
                acked += 1;
            }
            "error" => {
                outstanding -= 1;
                *errors
                    .entry(frame.code.unwrap_or("?").to_owned())
                    .or_insert(0) += 1;
            }
            _ => {}
        }
    }
    close(&mut sink).await;
    if !errors.is_empty() {
        bail!(
            "fill sends refused:{} (raise the server's rate limits)",
            tally(&errors)
        );
    }
    Ok(acked)
}

async fn close(sink: &mut SplitSink<Ws, Message>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
}

/// A fill send frame: backlog position `k` (and the send time, unused).
fn fill_frame(id: &str, key: &str, value: &str, k: u64, padding: &str) -> String {
    format!(
        r#"{{"type":"send","id":"{id}","{key}":"{value}","body":{{"k":{k},"t":{},"p":"{padding}"}}}}"#,
        now_us()
    )
}

/// Fills every inbox by group sends.
async fn fill_groups(
    args: &Args,
    api: &Api,
    key: &str,
    o: &StormOpts,
    ws_base: &str,
) -> Result<FillReport> {
    let d = args.devices();
    let groups = d.div_ceil(GROUP_RECIPIENTS);
    let senders = fleet::register_all(args, api, key, d..d + groups, true).await?;
    let mut ids = Vec::with_capacity(groups);
    for g in 0..groups {
        let mut members: Vec<String> = (g * GROUP_RECIPIENTS..((g + 1) * GROUP_RECIPIENTS).min(d))
            .map(address_of)
            .collect();
        members.push(address_of(d + g));
        ids.push(
            api.create_group(key, &format!("storm {g}"), &members)
                .await?,
        );
    }
    let padding = "x".repeat(args.body_bytes);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.fill_timeout);
    let mut tasks = FuturesUnordered::new();
    for (g, sender) in senders.iter().enumerate() {
        let token = sender.token.clone().unwrap_or_default();
        let (ws, _) = frames::open(ws_base, &token).await?;
        let (gid, padding, m) = (ids[g].clone(), padding.clone(), o.backlog);
        tasks.push(async move {
            let frames =
                (0..m).map(move |k| fill_frame(&format!("fill.{k}"), "group", &gid, k, &padding));
            send_all(ws, frames, 4, deadline).await
        });
    }
    eprintln!(
        "filling: {groups} group senders, {} group sends each",
        o.backlog
    );
    let mut sends = 0;
    while let Some(r) = tasks.next().await {
        sends += r?;
    }
    let secs = started.elapsed().as_secs_f64();
    let rows = d as u64 * o.backlog;
    Ok(FillReport {
        method: "group",
        senders: groups,
        sends,
        backlog_rows: rows,
        secs: round(secs, 2),
        backlog_rows_per_sec: round(rows as f64 / secs.max(1e-9), 0),
    })
}

/// Fills every inbox by 1:1 sends from `--senders` devices.
async fn fill_direct(
    args: &Args,
    api: &Api,
    key: &str,
    o: &StormOpts,
    ws_base: &str,
) -> Result<FillReport> {
    let d = args.devices();
    let n = o.senders.min(d);
    let senders = fleet::register_all(args, api, key, d..d + n, true).await?;
    let padding = "x".repeat(args.body_bytes);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.fill_timeout);
    let mut tasks = FuturesUnordered::new();
    for (s, sender) in senders.iter().enumerate() {
        let token = sender.token.clone().unwrap_or_default();
        let (ws, _) = frames::open(ws_base, &token).await?;
        let (padding, m) = (padding.clone(), o.backlog);
        tasks.push(async move {
            // Position k to every recipient of this sender, then k + 1: each inbox
            // gets its messages in order.
            let frames = (0..m).flat_map(move |k| {
                let padding = padding.clone();
                (s..d).step_by(n).map(move |r| {
                    fill_frame(&format!("fill.{k}.{r}"), "to", &address_of(r), k, &padding)
                })
            });
            send_all(ws, frames, 64, deadline).await
        });
    }
    eprintln!("filling: {n} senders, {} 1:1 sends", d as u64 * o.backlog);
    let mut sends = 0;
    while let Some(r) = tasks.next().await {
        sends += r?;
    }
    let secs = started.elapsed().as_secs_f64();
    let rows = d as u64 * o.backlog;
    Ok(FillReport {
        method: "direct",
        senders: n,
        sends,
        backlog_rows: rows,
        secs: round(secs, 2),
        backlog_rows_per_sec: round(rows as f64 / secs.max(1e-9), 0),
    })
}

/// One device of the storm: connect, sync every page, check what came. Returns its
/// result and its socket (kept open until every device is done).
async fn storm_one(
    ws_base: &str,
    token: &str,
    t0: Instant,
    deadline: Instant,
) -> Result<(DeviceResult, Ws)> {
    let ms = |at: Instant| (at - t0).as_secs_f64() * 1000.0;
    let (mut ws, last_seq) = frames::open(ws_base, token).await?;
    let mut r = DeviceResult {
        ready_ms: ms(Instant::now()),
        last_seq,
        ..DeviceResult::default()
    };
    let mut ids: HashSet<String> = HashSet::new();
    let (mut after, mut prev_seq, mut prev_k) = (0u64, 0u64, None::<u64>);
    let mut retries = 0;
    'pages: loop {
        ws.send(sync_frame(after)).await.context("sending sync")?;
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| anyhow!("not synced within --storm-timeout"))?;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => bail!("closed while syncing: {f:?}"),
                Some(Err(e)) => return Err(e).context("reading a sync page"),
                None => bail!("connection ended while syncing"),
                Some(Ok(_)) => continue,
            };
            let frame: Frame<'_> =
                serde_json::from_str(text.as_str()).context("a frame that is not JSON")?;
            match frame.kind {
                "messages" => {
                    r.pages += 1;
                    for item in frame.items.iter().filter(|i| i.kind == "message") {
                        r.received += 1;
                        let seq = item.seq.unwrap_or(0);
                        if seq <= prev_seq {
                            r.out_of_order += 1;
                        }
                        prev_seq = seq;
                        if let Some(id) = item.message_id {
                            if !ids.insert(id.to_owned()) {
                                r.duplicates += 1;
                            }
                        }
                        let k = item.body.as_ref().and_then(|b| b.k);
                        if let (Some(k), Some(p)) = (k, prev_k) {
                            if k <= p {
                                r.out_of_order += 1;
                            }
                        }
                        prev_k = k.or(prev_k);
                    }
                    match frame.next_after_seq {
                        Some(next) if frame.more && next > after => {
                            after = next;
                            continue 'pages;
                        }
                        _ => break 'pages,
                    }
                }
                "error" => {
                    r.sync_errors += 1;
                    retries += 1;
                    if retries > 5 {
                        bail!("sync refused: {}", frame.code.unwrap_or("?"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'pages;
                }
                _ => {}
            }
        }
    }
    r.synced_ms = ms(Instant::now());
    Ok((r, ws))
}

/// Runs the reconnect storm.
pub async fn run(args: &Args, o: &StormOpts) -> Result<Output> {
    let d = args.devices();
    preflight(args, d + o.senders);
    let apis = apis(args)?;
    let api = &apis[0];
    let tenant = new_tenant(args, api).await?;
    let key = tenant.api_key;
    let ws_base = args.ws_base(0);
    let rss_before_fill = server_rss(args);
    let devices = fleet::register_all(args, api, &key, 0..d, true).await?;
    let fill = match o.fill {
        Fill::Group => fill_groups(args, api, &key, o, &ws_base).await,
        Fill::Direct => fill_direct(args, api, &key, o, &ws_base).await,
    }
    .context("filling the backlog")?;
    eprintln!(
        "filled {} backlog rows in {:.1} s; storm: {d} devices connect and sync",
        fill.backlog_rows, fill.secs
    );

    let rss_before = server_rss(args);
    let cpu_before = server_cpu_ticks(args);
    let sampler = Sampler::start(
        api.client().clone(),
        Vec::new(),
        args.server_pids.clone(),
        Duration::from_millis(250),
    );
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.storm_timeout);
    let gate = Arc::new(Semaphore::new(if o.storm_concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        o.storm_concurrency
    }));
    let mut tasks = FuturesUnordered::new();
    for dev in &devices {
        let token = dev.token.clone().unwrap_or_default();
        let (ws_base, gate) = (ws_base.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            storm_one(&ws_base, &token, t0, deadline).await
        }));
    }
    let mut results = Vec::with_capacity(d);
    let mut sockets = Vec::with_capacity(d);
    let mut failures = BTreeMap::new();
    let mut last_progress = Instant::now();
    while let Some(joined) = tasks.next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((r, ws)) => {
                results.push(r);
                sockets.push(ws);
            }
            Err(e) => tally_failure(&mut failures, &e),
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "  synced {}/{d} ({} failed)",
                results.len(),
                failures.values().sum::<u64>()
            );
        }
    }
    let storm_secs = results.iter().map(|r| r.synced_ms).fold(0.0, f64::max) / 1000.0;
    let cpu = cpu_secs(cpu_before, server_cpu_ticks(args));
    let samples: Vec<Sample> = sampler.stop().await;
    let rss_after = server_rss(args);
    // Close the storm's sockets (bounded).
    let closing = sockets.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    });
    futures_util::future::join_all(closing).await;

    let m = o.backlog;
    let received: u64 = results.iter().map(|r| r.received).sum();
    let storm = StormReport {
        synced: results.len(),
        failed: failures.values().sum(),
        failures,
        secs_to_all_synced: round(storm_secs, 3),
        messages_received: received,
        messages_per_sec: round(received as f64 / storm_secs.max(1e-9), 0),
        devices_exact: results.iter().filter(|r| r.received == m).count(),
        devices_short: results.iter().filter(|r| r.received < m).count(),
        devices_over: results.iter().filter(|r| r.received > m).count(),
        duplicates: results.iter().map(|r| r.duplicates).sum(),
        out_of_order: results.iter().map(|r| r.out_of_order).sum(),
        ready_last_seq_mismatch: results.iter().filter(|r| r.last_seq != m).count(),
        pages: results.iter().map(|r| r.pages).sum(),
        sync_errors: results.iter().map(|r| r.sync_errors).sum(),
        time_to_ready: Times::of(results.iter().map(|r| r.ready_ms).collect()),
        time_to_synced: Times::of(results.iter().map(|r| r.synced_ms).collect()),
    };
    let peak = |f: fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).max();
    let report = Report {
        scenario: "reconnect-storm",
        url: args.urls[0].clone(),
        devices: d,
        backlog: m,
        body_bytes: args.body_bytes,
        fill,
        storm,
        server: ServerFigures {
            cpu_secs: cpu,
            cpu_us_per_message: us_per(cpu, received),
            rss_before_fill_kib: rss_before_fill,
            rss_before_storm_kib: rss_before,
            rss_peak_kib: peak(|s| s.rss_kib),
            rss_after_kib: rss_after,
            fds_peak: peak(|s| s.fds),
            threads_peak: peak(|s| s.threads),
        },
    };
    Output::of(&report, report.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_nearest_rank_percentiles() {
        let t = Times::of((1..=100).map(f64::from).collect());
        assert_eq!((t.p50_ms, t.p99_ms, t.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(Times::of(Vec::new()).max_ms, 0.0);
    }

    #[test]
    fn fill_frames_are_sends_with_a_position() {
        let f = fill_frame("fill.3.7", "to", "+15550000007", 3, "xx");
        let v: serde_json::Value = serde_json::from_str(&f).expect("json");
        assert_eq!(v["to"], "+15550000007");
        assert_eq!(v["body"]["k"], 3);
        let g = fill_frame("fill.3", "group", "g_1", 3, "");
        let v: serde_json::Value = serde_json::from_str(&g).expect("json");
        assert_eq!(v["group"], "g_1");
    }
}
