//! What the server spent on the measured window: its CPU time (`/proc/<pid>/stat`,
//! with `--server-pid`) and the growth of its `/metrics` counters (store calls,
//! MongoDB commands, Redis commands, persistence batches), per acked message.

use std::collections::BTreeMap;

use serde::Serialize;

/// Kernel clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on Linux's
/// user-space ABI on every common architecture).
const TICKS_PER_SEC: f64 = 100.0;

/// The server's counters at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// User + system CPU ticks of the server process.
    cpu_ticks: Option<u64>,
    /// User + system CPU ticks of the store's process (`--store-pid`).
    store_cpu_ticks: Option<u64>,
    /// Every series of `/metrics` (`name{labels}` → value).
    series: BTreeMap<String, f64>,
}

impl Snapshot {
    /// Reads the server's CPU time (when `pid` is given) and `/metrics` (when it answers).
    pub async fn take(
        client: &reqwest::Client,
        base: &str,
        pid: Option<u32>,
        store_pid: Option<u32>,
    ) -> Snapshot {
        let store_cpu_ticks = store_pid.and_then(cpu_ticks);
        let cpu_ticks = pid.and_then(cpu_ticks);
        let series = match client.get(format!("{base}/metrics")).send().await {
            Ok(res) if res.status().is_success() => {
                res.text().await.map(|t| parse(&t)).unwrap_or_default()
            }
            _ => BTreeMap::new(),
        };
        Snapshot {
            cpu_ticks,
            store_cpu_ticks,
            series,
        }
    }

    /// Sum of every series of family `name` whose labels contain each of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| family(k) == name && labels.iter().all(|l| k.contains(l)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Values of family `name` by the value of `label`.
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.series {
            if family(k) != name {
                continue;
            }
            if let Some(value) = label_value(k, label) {
                *out.entry(value.to_owned()).or_insert(0.0) += v;
            }
        }
        out
    }
}

/// The server's costs over the window, per acked message where it makes sense.
#[derive(Debug, Default, Serialize)]
pub struct ServerCosts {
    /// Server CPU seconds (user + system) in the window.
    pub cpu_secs: Option<f64>,
    /// Server CPU microseconds per acked message.
    pub cpu_us_per_msg: Option<f64>,
    /// CPU seconds of the store's process (`--store-pid`, e.g. a local MongoDB).
    pub store_cpu_secs: Option<f64>,
    /// Store trait calls per acked message.
    pub store_calls_per_msg: f64,
    /// Store trait calls by operation (in the window).
    pub store_calls: BTreeMap<String, f64>,
    /// MongoDB commands per acked message (server started with `DB_COMMAND_METRICS=true`).
    pub mongodb_commands_per_msg: f64,
    /// MongoDB commands by name (in the window).
    pub mongodb_commands: BTreeMap<String, f64>,
    /// Redis commands per acked message.
    pub redis_commands_per_msg: f64,
    /// Persistence batches committed in the window.
    pub batches: f64,
    /// Mean rows per batch.
    pub mean_batch_rows: Option<f64>,
    /// Cache hit rate (all kinds, in-process layer) in the window.
    pub memory_hit_rate: Option<f64>,
}

impl ServerCosts {
    /// The growth from `before` to `after`, over `acked` messages.
    pub fn between(before: &Snapshot, after: &Snapshot, acked: u64) -> ServerCosts {
        let per = |v: f64| {
            if acked > 0 {
                round(v / acked as f64)
            } else {
                0.0
            }
        };
        let delta =
            |name: &str, labels: &[&str]| after.sum(name, labels) - before.sum(name, labels);
        let grown = |name: &str, label: &str| {
            let old = before.by_label(name, label);
            after
                .by_label(name, label)
                .into_iter()
                .map(|(k, v)| {
                    let d = v - old.get(&k).copied().unwrap_or(0.0);
                    (k, d)
                })
                .filter(|(_, d)| *d > 0.0)
                .collect::<BTreeMap<_, _>>()
        };
        let secs = |b: Option<u64>, a: Option<u64>| match (b, a) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / TICKS_PER_SEC),
            _ => None,
        };
        let cpu_secs = secs(before.cpu_ticks, after.cpu_ticks);
        let store = delta("switchboard_store_calls_total", &[]);
        let mongo = delta("switchboard_mongodb_commands_total", &[]);
        let redis = delta("switchboard_redis_commands_total", &[]);
        let batches = delta("switchboard_persist_batch_size_count", &[]);
        let rows = delta("switchboard_persist_batch_size_sum", &[]);
        let hits = delta("switchboard_cache_hits_total", &["layer=\"memory\""]);
        let misses = delta("switchboard_cache_misses_total", &["layer=\"memory\""]);
        ServerCosts {
            store_cpu_secs: secs(before.store_cpu_ticks, after.store_cpu_ticks),
            cpu_secs,
            cpu_us_per_msg: cpu_secs
                .filter(|_| acked > 0)
                .map(|s| round(s * 1e6 / acked as f64)),
            store_calls_per_msg: per(store),
            store_calls: grown("switchboard_store_calls_total", "op"),
            mongodb_commands_per_msg: per(mongo),
            mongodb_commands: grown("switchboard_mongodb_commands_total", "command"),
            redis_commands_per_msg: per(redis),
            batches,
            mean_batch_rows: (batches > 0.0).then(|| round(rows / batches)),
            memory_hit_rate: (hits + misses > 0.0).then(|| round(hits / (hits + misses))),
        }
    }
}

impl ServerCosts {
    /// Appends the human-readable lines of the report.
    pub fn human(&self, s: &mut String) {
        use std::fmt::Write as _;
        let top = |m: &BTreeMap<String, f64>| {
            let mut v: Vec<(&String, &f64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.total_cmp(a.1));
            v.iter()
                .take(6)
                .map(|(k, n)| format!("{k} {n:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Writing to a String cannot fail.
        if let (Some(cpu), Some(per)) = (self.cpu_secs, self.cpu_us_per_msg) {
            let _ = writeln!(
                s,
                "server CPU       {cpu:.2} s  ({per:.1} µs per acked message)"
            );
        }
        if let Some(cpu) = self.store_cpu_secs {
            let _ = writeln!(s, "store CPU        {cpu:.2} s  (the --store-pid process)");
        }
        let _ = writeln!(
            s,
            "store calls      {:.3}/msg  ({})",
            self.store_calls_per_msg,
            top(&self.store_calls)
        );
        if !self.mongodb_commands.is_empty() {
            let _ = writeln!(
                s,
                "MongoDB commands {:.3}/msg  ({})",
                self.mongodb_commands_per_msg,
                top(&self.mongodb_commands)
            );
        }
        if self.redis_commands_per_msg > 0.0 {
            let _ = writeln!(s, "Redis commands   {:.3}/msg", self.redis_commands_per_msg);
        }
        if let Some(rows) = self.mean_batch_rows {
            let _ = writeln!(
                s,
                "persist batches  {:.0}, {rows:.1} rows each",
                self.batches
            );
        }
        if let Some(rate) = self.memory_hit_rate {
            let _ = writeln!(
                s,
                "cache hit rate   {:.1} % (in-process layer)",
                rate * 100.0
            );
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// User + system ticks of `pid` from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// Fields 14 and 15 (`utime`, `stime`) of a `/proc/<pid>/stat` line; the command name
/// (field 2, in parentheses) may hold spaces, so fields are counted after its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Prometheus text exposition → `name{labels}` → value (comments skipped).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The family name of a series key (`name{…}` → `name`).
fn family(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// The value of `label` in a series key, if present.
fn label_value<'a>(key: &'a str, label: &str) -> Option<&'a str> {
    let labels = key.split_once('{')?.1;
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "4242 (switch board) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn costs_are_growth_per_message() {
        let before = Snapshot {
            cpu_ticks: Some(100),
            store_cpu_ticks: None,
            series: parse(
                "# HELP x\nswitchboard_store_calls_total{op=\"commit_rows\",ok=\"true\"} 10\n\
                 switchboard_persist_batch_size_sum 100\nswitchboard_persist_batch_size_count 4\n",
            ),
        };
        let after = Snapshot {
            cpu_ticks: Some(300),
            store_cpu_ticks: None,
            series: parse(
                "switchboard_store_calls_total{op=\"commit_rows\",ok=\"true\"} 30\n\
                 switchboard_store_calls_total{op=\"get_device\",ok=\"true\"} 5\n\
                 switchboard_redis_commands_total 50\n\
                 switchboard_persist_batch_size_sum 700\nswitchboard_persist_batch_size_count 10\n",
            ),
        };
        let c = ServerCosts::between(&before, &after, 100);
        assert_eq!(c.cpu_secs, Some(2.0));
        assert_eq!(c.cpu_us_per_msg, Some(20_000.0));
        assert_eq!(c.store_calls_per_msg, 0.25);
        assert_eq!(c.store_calls["commit_rows"], 20.0);
        assert_eq!(c.store_calls["get_device"], 5.0);
        assert_eq!(c.redis_commands_per_msg, 0.5);
        assert_eq!(c.batches, 6.0);
        assert_eq!(c.mean_batch_rows, Some(100.0));
    }
}
