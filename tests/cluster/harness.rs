//! A cluster of server binaries for the tests, and the checks every fault test ends
//! with (every acked message found by `sync`, seqs unique and gap-free).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{call, mongodb_uri, redis_url, unique_name, ChildServer, Device, Tenant, Ws};

/// The admin token of every test cluster.
pub const ADMIN: &str = "cluster-test-admin-token";
/// Heartbeat, lease and skew of the test clusters (ms): a dead node's devices move
/// within about four seconds. A renewal is one write to nx-27017, which under the
/// queue tests' load (and a busy 2-core CI machine) can take over a second: a shorter
/// lease makes live nodes lapse and rejoin.
pub const HEARTBEAT_MS: u64 = 250;
pub const LEASE_MS: u64 = 3000;
pub const SKEW_MS: u64 = 300;

/// Where a test cluster keeps its state: one database and key prefix for all nodes.
pub struct Backends {
    pub mongodb_uri: String,
    pub redis_url: String,
    pub name: String,
}

impl Backends {
    /// The run's shared MongoDB and Redis, under a fresh name.
    pub fn shared() -> Backends {
        Backends {
            mongodb_uri: mongodb_uri(),
            redis_url: redis_url(),
            name: unique_name(),
        }
    }
}

/// Nodes of one cluster, each a child process with its own data directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub backends: Backends,
    pub nodes: Vec<Option<ChildServer>>,
    pub http: reqwest::Client,
    extra: Vec<(String, String)>,
}

impl Cluster {
    /// `n` nodes on the run's MongoDB and Redis.
    pub async fn start(n: usize) -> Cluster {
        Self::start_on(n, Backends::shared(), &[]).await
    }

    /// `n` nodes on `backends`, with extra environment for every node.
    pub async fn start_on(n: usize, backends: Backends, extra: &[(&str, &str)]) -> Cluster {
        // CLUSTER_TEST_KEEP=1 keeps each cluster's directory (node logs) after the test.
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("CLUSTER_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("cluster directory: {}", dir.path().display());
        }
        let mut c = Cluster {
            dir,
            backends,
            nodes: Vec::new(),
            http: reqwest::Client::new(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for i in 0..n {
            let node = c.spawn(i).await;
            c.nodes.push(Some(node));
        }
        c
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        let d = self.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Starts node `i` (its log in the cluster's directory, kept on failure).
    pub async fn spawn(&self, i: usize) -> ChildServer {
        let heartbeat = HEARTBEAT_MS.to_string();
        let lease = LEASE_MS.to_string();
        let skew = SKEW_MS.to_string();
        let b = &self.backends;
        let mut env: Vec<(&str, &str)> = vec![
            ("MONGODB_URI", &b.mongodb_uri),
            ("SWITCHBOARD_MONGODB_DATABASE", &b.name),
            ("REDIS_URL", &b.redis_url),
            ("SWITCHBOARD_REDIS_PREFIX", &b.name),
            ("SWITCHBOARD_CLUSTER_HEARTBEAT_MS", &heartbeat),
            ("SWITCHBOARD_CLUSTER_LEASE_MS", &lease),
            ("SWITCHBOARD_CLUSTER_SKEW_MS", &skew),
            ("SWITCHBOARD_CLUSTER_CALL_TIMEOUT_MS", "3000"),
            ("SWITCHBOARD_SEND_TIMEOUT_MS", "15000"),
            ("SWITCHBOARD_SHUTDOWN_TIMEOUT_SECS", "5"),
            ("DB_SERVER_SELECTION_TIMEOUT", "2000"),
            // The load of the fault tests retries under the same ids: not a budget test.
            ("SWITCHBOARD_RATE_LIMIT_NORMAL", "100000"),
            ("RUST_LOG", "info"),
            ("SWITCHBOARD_LOG_FORMAT", "text"),
        ];
        env.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{i}.log")))
            .unwrap();
        ChildServer::spawn(&self.node_dir(i), ADMIN, &env, Some(log)).await
    }

    /// Node `i` (panics if it was stopped).
    pub fn node(&self, i: usize) -> &ChildServer {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// A new tenant, created through node 0.
    pub async fn tenant(&self) -> Tenant {
        let base = &self.node(0).base;
        let (s, body) = call(
            &self.http,
            base,
            "POST",
            "/admin/tenants",
            Some(ADMIN),
            Some(json!({"name": "cluster"})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        Tenant {
            id: body["tenant_id"].as_str().unwrap().to_owned(),
            key: body["api_key"].as_str().unwrap().to_owned(),
            base: base.clone(),
            ws_base: self.node(0).ws_base.clone(),
            http: self.http.clone(),
        }
    }

    /// `tenant` as seen through node `i`.
    pub fn via(&self, tenant: &Tenant, i: usize) -> Tenant {
        Tenant {
            base: self.node(i).base.clone(),
            ws_base: self.node(i).ws_base.clone(),
            ..tenant.clone()
        }
    }

    /// Connects `device` to node `i`.
    pub async fn connect(&self, tenant: &Tenant, device: &Device, i: usize) -> Ws {
        let token = self.via(tenant, i).token(device).await;
        Ws::connect(&self.node(i).ws_base, &token).await
    }

    /// Sends a signal to node `i` (`SIGKILL`, `SIGSTOP`, `SIGCONT`, `SIGTERM`).
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.node(i).child.id().expect("node has a pid");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for node `i` to exit and forgets it; answers its exit status.
    pub async fn reap(&mut self, i: usize) -> std::process::ExitStatus {
        let mut node = self.nodes[i].take().expect("node is running");
        tokio::time::timeout(Duration::from_secs(30), node.child.wait())
            .await
            .expect("node did not exit")
            .unwrap()
    }

    /// What `/admin/cluster` says through node `i`.
    pub async fn view(&self, i: usize) -> Value {
        let (s, body) = call(
            &self.http,
            &self.node(i).base,
            "GET",
            "/admin/cluster",
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(s, 200, "{body}");
        body
    }

    /// The logs of every node (for a failure message).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let path = self.dir.path().join(format!("node{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .take(30)
                .collect();
            out.push_str(&format!("--- node{i} (last warnings) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Every message of `device`'s inbox, through `sync` on a fresh connection to `node`
/// of `cluster`, checked: seqs 1, 2, 3, … with no gap and no repeat. Answers the
/// messages (statuses left out).
pub async fn inbox_checked(
    cluster: &Cluster,
    tenant: &Tenant,
    device: &Device,
    node: usize,
) -> Vec<Value> {
    let mut ws = cluster.connect(tenant, device, node).await;
    let all = ws.sync_all(0, 500).await;
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "seqs of {} are not 1..n: {all:?}", device.id);
    all.into_iter().filter(|m| m["type"] == "message").collect()
}

/// The tally of a load run: what was sent, what was acked and by whom.
#[derive(Default, Debug)]
pub struct Tally {
    pub sent: u64,
    pub acked: BTreeMap<String, Value>,
    pub refused: u64,
}

/// Checks that every acked message is found exactly once in its recipient's inbox;
/// prints the counts. `inboxes` maps a recipient address to its messages.
pub fn check_found(label: &str, tally: &Tally, inboxes: &HashMap<String, Vec<Value>>) {
    let mut found = 0u64;
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for (key, ack) in &tally.acked {
        let to = ack["to"].as_str().unwrap();
        let id = ack["message_id"].as_str().unwrap();
        let hits = inboxes.get(to).map_or(0, |msgs| {
            msgs.iter().filter(|m| m["message_id"] == id).count()
        });
        match hits {
            0 => missing.push(key.clone()),
            1 => found += 1,
            _ => twice.push(key.clone()),
        }
    }
    eprintln!(
        "{label}: sent {}, acked {}, refused {}, found {found}, missing {}, duplicated {}",
        tally.sent,
        tally.acked.len(),
        tally.refused,
        missing.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "{label}: acked but missing: {missing:?}"
    );
    assert!(twice.is_empty(), "{label}: found twice: {twice:?}");
}
