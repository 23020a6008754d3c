//! The scenarios (one module each) and what they share: the tenant, the statistics,
//! the server's memory and where its costs are read from. Every scenario returns an
//! [`Output`]: one JSON object (with `"scenario"`) and a human summary.

pub mod bulk_drain;
pub mod fan_out;
pub mod idle;
pub mod max_rate;
pub mod one_to_one;
pub mod reconnect_storm;
pub mod soak;

use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{Args, Protocol, Scenario};
use crate::server::Sources;
use crate::setup::{Api, Tenant};
use crate::stats::Stats;
use crate::sys;

/// What a scenario reports.
pub struct Output {
    /// The report as one JSON object.
    pub json: serde_json::Value,
    /// The human summary.
    pub human: String,
}

impl Output {
    /// The output of a serializable report with a `human()` text.
    pub fn of<T: Serialize>(report: &T, human: String) -> Result<Output> {
        Ok(Output {
            json: serde_json::to_value(report).context("encoding the report")?,
            human,
        })
    }
}

/// Runs the scenario `args` names; errors are setup failures.
pub async fn run(args: Args) -> Result<Output> {
    match args.scenario().clone() {
        Scenario::OneToOne => one_to_one::run(&args, "one-to-one").await,
        Scenario::Idle => idle::run(&args).await,
        Scenario::MaxRate(o) => max_rate::run(&args, &o).await,
        Scenario::FanOut(o) => fan_out::run(&args, &o).await,
        Scenario::ReconnectStorm(o) => reconnect_storm::run(&args, &o).await,
        Scenario::BulkDrain(o) => bulk_drain::run(&args, &o).await,
        Scenario::Soak(o) => soak::run(&args, &o).await,
    }
}

/// The protocol's name in reports.
pub fn protocol_name(args: &Args) -> &'static str {
    match args.protocol {
        Protocol::Switchboard => "switchboard",
        Protocol::Mqtt => "mqtt",
    }
}

/// Server RSS for `--server-pid` (summed over the nodes), if given and readable.
pub fn server_rss(args: &Args) -> Option<u64> {
    if args.server_pids.is_empty() {
        return None;
    }
    args.server_pids.iter().map(|&pid| sys::rss_kib(pid)).sum()
}

/// Server CPU ticks for `--server-pid` (summed over the nodes).
pub fn server_cpu_ticks(args: &Args) -> Option<u64> {
    if args.server_pids.is_empty() {
        return None;
    }
    args.server_pids
        .iter()
        .map(|&pid| sys::cpu_ticks(pid))
        .sum()
}

/// Where the server's figures are read from.
pub fn sources(args: &Args) -> Sources {
    Sources {
        urls: args.urls.clone(),
        pids: args.server_pids.clone(),
        store_pid: args.store_pid,
        redis_port: args.redis_port,
        metrics: args.protocol == Protocol::Switchboard,
    }
}

/// Warns when the open-files limit cannot hold `devices` connections, and when a
/// `--server-pid` cannot be read.
pub fn preflight(args: &Args, devices: usize) {
    let needed = devices as u64 + 64;
    if let (Some(soft), hard) = sys::open_files_limit() {
        if soft < needed {
            let hint = hard.map_or("unlimited".to_owned(), |h| h.to_string());
            eprintln!(
                "warning: open-files limit is {soft} but {devices} connections need about \
                 {needed}; run `ulimit -n {hint}` (hard limit) before loadgen"
            );
        }
    }
    for &pid in &args.server_pids {
        if sys::rss_kib(pid).is_none() {
            eprintln!("warning: cannot read VmRSS of pid {pid}");
        }
    }
}

/// Fresh statistics, sharded by the machine's parallelism.
pub fn new_stats() -> Result<Arc<Stats>> {
    let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
    Ok(Arc::new(Stats::new(shards.clamp(4, 64))?))
}

/// A REST client per node (the first is the one the tenant is created on).
pub fn apis(args: &Args) -> Result<Vec<Api>> {
    let api = Api::new(&args.urls[0], args.connect_concurrency)?;
    Ok(args.urls.iter().map(|u| api.with_base(u)).collect())
}

/// Creates a fresh tenant `loadgen-<random>` on the first node.
pub async fn new_tenant(args: &Args, api: &Api) -> Result<Tenant> {
    let name = format!("loadgen-{:08x}", rand::random::<u32>());
    let tenant = api
        .create_tenant(args.admin_token(), &name)
        .await
        .context("creating the tenant")?;
    eprintln!("tenant {name} ({})", tenant.tenant_id);
    Ok(tenant)
}

/// CPU seconds between two tick readings.
pub fn cpu_secs(before: Option<u64>, after: Option<u64>) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / sys::TICKS_PER_SEC),
        _ => None,
    }
}

/// Microseconds of CPU per unit of work (rounded to 0.1 µs).
pub fn us_per(cpu_secs: Option<f64>, n: u64) -> Option<f64> {
    cpu_secs
        .filter(|_| n > 0)
        .map(|s| crate::report::round(s * 1e6 / n as f64, 1))
}
