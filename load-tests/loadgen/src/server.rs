//! What the server spent on the measured window: its CPU time (`/proc/<pid>/stat`,
//! with `--server-pid`) and the growth of its `/metrics` counters (store calls,
//! MongoDB commands, Redis commands, persistence batches), per acked message. With
//! several nodes every node is read and the figures are summed; with `--redis-port`
//! the commands Redis itself executed are counted too.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use serde::Serialize;

use crate::redis_info;
use crate::sys::{cpu_ticks, TICKS_PER_SEC};

/// One node's counters at one moment.
#[derive(Debug, Default, Clone)]
struct NodeSnapshot {
    /// The node's base URL.
    url: String,
    /// User + system CPU ticks of the node's process.
    cpu_ticks: Option<u64>,
    /// Every series of its `/metrics` (`name{labels}` → value).
    series: BTreeMap<String, f64>,
}

/// What loadgen reads at the start and at the end of the measured window.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every node, in `--url` order.
    nodes: Vec<NodeSnapshot>,
    /// User + system CPU ticks of the store's process (`--store-pid`).
    store_cpu_ticks: Option<u64>,
    /// Calls per command of the cluster's Redis (`--redis-port`), if it answered.
    redis_calls: Option<BTreeMap<String, u64>>,
}

/// Where a [`Snapshot`] reads from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Base URL of every node.
    pub urls: Vec<String>,
    /// Process id of every node (empty, or one per URL).
    pub pids: Vec<u32>,
    /// The store's process id.
    pub store_pid: Option<u32>,
    /// Port of the Redis on 127.0.0.1.
    pub redis_port: Option<u16>,
    /// Whether the nodes serve Switchboard's `/metrics` (not in MQTT mode).
    pub metrics: bool,
}

impl Snapshot {
    /// Reads every node's CPU time (when its pid is given) and `/metrics` (when it
    /// answers), the store's CPU time and Redis' command counts.
    pub async fn take(client: &reqwest::Client, from: &Sources) -> Snapshot {
        let store_cpu_ticks = from.store_pid.and_then(cpu_ticks);
        let reads = from.urls.iter().enumerate().map(|(i, url)| async move {
            let cpu_ticks = from.pids.get(i).copied().and_then(cpu_ticks);
            let series = if from.metrics {
                fetch_metrics(client, url).await.unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            NodeSnapshot {
                url: url.clone(),
                cpu_ticks,
                series,
            }
        });
        let redis = async {
            let port = from.redis_port?;
            match redis_info::command_calls(port).await {
                Ok(calls) => Some(calls),
                Err(e) => {
                    eprintln!("warning: Redis INFO: {e:#}");
                    None
                }
            }
        };
        let (nodes, redis_calls) = tokio::join!(join_all(reads), redis);
        Snapshot {
            nodes,
            store_cpu_ticks,
            redis_calls,
        }
    }

    /// CPU ticks summed over the nodes (`None` unless every node's were read).
    fn cpu_ticks(&self) -> Option<u64> {
        self.nodes.iter().map(|n| n.cpu_ticks).sum()
    }

    /// Sum over the nodes of every series of family `name` whose labels contain each
    /// of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.nodes.iter().map(|n| n.sum(name, labels)).sum()
    }

    /// Values of family `name` by the value of `label`, summed over the nodes.
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for node in &self.nodes {
            for (k, v) in node.by_label(name, label) {
                *out.entry(k).or_insert(0.0) += v;
            }
        }
        out
    }
}

impl NodeSnapshot {
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

/// One node's share of the window's work (several nodes only).
#[derive(Debug, Default, Serialize)]
pub struct NodeCosts {
    /// The node's base URL.
    pub url: String,
    /// Its CPU seconds in the window.
    pub cpu_secs: Option<f64>,
    /// Store trait calls it made.
    pub store_calls: f64,
    /// MongoDB commands it sent.
    pub mongodb_commands: f64,
    /// Redis commands it sent.
    pub redis_commands: f64,
    /// Persistence batches it committed.
    pub batches: f64,
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
    /// Commands Redis itself executed per acked message (`--redis-port`; loadgen's own
    /// `INFO` left out). Commands run inside Lua scripts count too, as in `INFO`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_info_commands_per_msg: Option<f64>,
    /// Commands Redis executed, by name (in the window).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub redis_info_commands: BTreeMap<String, f64>,
    /// Each node's share (several nodes only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_node: Vec<NodeCosts>,
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
        let cpu_secs = secs(before.cpu_ticks(), after.cpu_ticks());
        let store = delta("switchboard_store_calls_total", &[]);
        let mongo = delta("switchboard_mongodb_commands_total", &[]);
        let redis = delta("switchboard_redis_commands_total", &[]);
        let batches = delta("switchboard_persist_batch_size_count", &[]);
        let rows = delta("switchboard_persist_batch_size_sum", &[]);
        let redis_calls = redis_growth(before, after);
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
            redis_info_commands_per_msg: redis_calls.as_ref().map(|m| per(m.values().sum())),
            redis_info_commands: redis_calls.unwrap_or_default(),
            per_node: if after.nodes.len() > 1 {
                per_node(before, after)
            } else {
                Vec::new()
            },
        }
    }
}

/// Growth of Redis' command calls from `before` to `after`, without loadgen's `INFO`.
fn redis_growth(before: &Snapshot, after: &Snapshot) -> Option<BTreeMap<String, f64>> {
    let (old, new) = (before.redis_calls.as_ref()?, after.redis_calls.as_ref()?);
    Some(
        new.iter()
            .filter(|(k, _)| k.as_str() != redis_info::OWN_COMMAND)
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(old.get(k).copied().unwrap_or(0)) as f64,
                )
            })
            .filter(|(_, d)| *d > 0.0)
            .collect(),
    )
}

/// Each node's growth from `before` to `after` (nodes matched by position).
fn per_node(before: &Snapshot, after: &Snapshot) -> Vec<NodeCosts> {
    after
        .nodes
        .iter()
        .zip(&before.nodes)
        .map(|(a, b)| {
            let delta = |name: &str| a.sum(name, &[]) - b.sum(name, &[]);
            NodeCosts {
                url: a.url.clone(),
                cpu_secs: match (b.cpu_ticks, a.cpu_ticks) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / TICKS_PER_SEC),
                    _ => None,
                },
                store_calls: delta("switchboard_store_calls_total"),
                mongodb_commands: delta("switchboard_mongodb_commands_total"),
                redis_commands: delta("switchboard_redis_commands_total"),
                batches: delta("switchboard_persist_batch_size_count"),
            }
        })
        .collect()
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
        if !self.store_calls.is_empty() {
            let _ = writeln!(
                s,
                "store calls      {:.3}/msg  ({})",
                self.store_calls_per_msg,
                top(&self.store_calls)
            );
        }
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
        if let Some(per) = self.redis_info_commands_per_msg {
            let _ = writeln!(
                s,
                "Redis (INFO)     {per:.3}/msg executed, inside scripts too  ({})",
                top(&self.redis_info_commands)
            );
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
        for (i, n) in self.per_node.iter().enumerate() {
            let cpu = n.cpu_secs.map_or("?".to_owned(), |c| format!("{c:.2} s"));
            let _ = writeln!(
                s,
                "  node {i}         CPU {cpu}  store calls {:.0}  MongoDB {:.0}  Redis {:.0}  \
                 batches {:.0}  ({})",
                n.store_calls, n.mongodb_commands, n.redis_commands, n.batches, n.url
            );
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Every series of `url`'s `/metrics`, if it answers.
pub async fn fetch_metrics(client: &reqwest::Client, url: &str) -> Option<BTreeMap<String, f64>> {
    match client.get(format!("{url}/metrics")).send().await {
        Ok(res) if res.status().is_success() => res.text().await.ok().map(|t| parse(&t)),
        _ => None,
    }
}

/// Sum of every series of family `name` (a gauge over all its labels).
pub fn family_sum(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| family(k) == name)
        .map(|(_, v)| v)
        .sum()
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

    fn one_node(cpu_ticks: Option<u64>, metrics: &str) -> NodeSnapshot {
        NodeSnapshot {
            url: "http://n".to_owned(),
            cpu_ticks,
            series: parse(metrics),
        }
    }

    #[test]
    fn costs_are_growth_per_message() {
        let before = Snapshot {
            nodes: vec![one_node(
                Some(100),
                "# HELP x\nswitchboard_store_calls_total{op=\"commit_rows\",ok=\"true\"} 10\n\
                 switchboard_persist_batch_size_sum 100\nswitchboard_persist_batch_size_count 4\n",
            )],
            ..Snapshot::default()
        };
        let after = Snapshot {
            nodes: vec![one_node(
                Some(300),
                "switchboard_store_calls_total{op=\"commit_rows\",ok=\"true\"} 30\n\
                 switchboard_store_calls_total{op=\"get_device\",ok=\"true\"} 5\n\
                 switchboard_redis_commands_total 50\n\
                 switchboard_persist_batch_size_sum 700\nswitchboard_persist_batch_size_count 10\n",
            )],
            ..Snapshot::default()
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
        assert_eq!(c.redis_info_commands_per_msg, None);
        assert!(c.per_node.is_empty());
        let series = parse("switchboard_connections 5\nswitchboard_persist_backlog_rows{writer=\"0\"} 2\nswitchboard_persist_backlog_rows{writer=\"1\"} 3\n");
        assert_eq!(family_sum(&series, "switchboard_persist_backlog_rows"), 5.0);
        assert_eq!(family_sum(&series, "switchboard_connections"), 5.0);
    }

    #[test]
    fn several_nodes_are_summed() {
        let node = |cpu, mongo, redis| {
            one_node(
                cpu,
                &format!(
                    "switchboard_mongodb_commands_total{{command=\"insert\"}} {mongo}\n\
                     switchboard_redis_commands_total {redis}\n"
                ),
            )
        };
        let calls = |publish: u64, info: u64| {
            Some(BTreeMap::from([
                ("publish".to_owned(), publish),
                ("info".to_owned(), info),
            ]))
        };
        let before = Snapshot {
            nodes: vec![node(Some(100), 1, 10), node(Some(50), 2, 20)],
            store_cpu_ticks: None,
            redis_calls: calls(5, 1),
        };
        let after = Snapshot {
            nodes: vec![node(Some(200), 11, 30), node(Some(250), 22, 60)],
            store_cpu_ticks: None,
            redis_calls: calls(65, 2),
        };
        let c = ServerCosts::between(&before, &after, 100);
        assert_eq!(c.cpu_secs, Some(3.0));
        assert_eq!(c.mongodb_commands_per_msg, 0.3);
        assert_eq!(c.mongodb_commands["insert"], 30.0);
        assert_eq!(c.redis_commands_per_msg, 0.6);
        assert_eq!(c.redis_info_commands_per_msg, Some(0.6));
        assert_eq!(c.redis_info_commands.len(), 1);
        assert_eq!(c.per_node.len(), 2);
        assert_eq!(c.per_node[1].cpu_secs, Some(2.0));
        assert_eq!(c.per_node[1].redis_commands, 40.0);
        // One node's CPU unreadable: no sum.
        let mut partial = after.clone();
        partial.nodes[0].cpu_ticks = None;
        assert_eq!(ServerCosts::between(&before, &partial, 100).cpu_secs, None);
    }
}
