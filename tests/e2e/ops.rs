//! Operations endpoints end to end: `/metrics` parsed as Prometheus text,
//! `/admin/cache/stats` and `/admin/db/stats` with their auth, shapes and real values.
//!
//! The metrics recorder is global to the test process (every server of the process
//! adds to the same counters), so process-wide counters are checked as deltas, and
//! tenant-labelled ones (each test has its own tenant) exactly.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Device, Tenant, TestServer, Ws};

// ---- a small Prometheus text-format parser ----

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: families (name → type, help) and samples.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} without quoted value in {{{s}}}"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("dangling escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key:?}"
        );
        assert!(
            out.insert(key.clone(), value).is_none(),
            "label {key} twice"
        );
    }
    out
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {v:?}")),
    }
}

fn valid_metric_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text and checks the format rules: every sample is `name{labels} value`,
/// every family has `# HELP` and `# TYPE` before its samples, histograms have
/// monotonic buckets ending in `+Inf` (equal to `_count`) and a `_sum`.
fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_metric_name(name), "bad HELP line {line:?}");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            e.helps.insert(name.to_owned(), help.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE without kind");
            assert!(valid_metric_name(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type {kind} for {name}"
            );
            assert!(
                e.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE of {name} twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').expect("unclosed label set");
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    line[close + 1..].trim(),
                )
            }
            None => {
                let (n, v) = line.split_once(' ').expect("sample without value");
                (n, BTreeMap::new(), v.trim())
            }
        };
        assert!(valid_metric_name(name), "bad sample name in {line:?}");
        // An optional timestamp may follow the value.
        let value = parse_value(value.split_whitespace().next().expect("no value"));
        let family = family_of(&e.types, name);
        assert!(
            e.types.contains_key(&family),
            "sample {name} before/without a # TYPE line"
        );
        assert!(
            e.helps.contains_key(&family),
            "family {family} has no # HELP"
        );
        e.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&e);
    e
}

fn family_of(types: &HashMap<String, String>, sample: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_owned();
            }
        }
    }
    sample.to_owned()
}

fn check_histograms(e: &Exposition) {
    for (family, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        // Series are told apart by their labels without `le`.
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = s.labels.clone();
            let le = parse_value(&labels.remove("le").expect("bucket without le"));
            series
                .entry(format!("{labels:?}"))
                .or_default()
                .push((le, s.value));
        }
        assert!(!series.is_empty(), "histogram {family} without buckets");
        for (labels, buckets) in series {
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            assert!(
                les.windows(2).all(|w| w[0] < w[1]),
                "{family}{labels}: le not increasing"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{labels}: bucket counts not monotonic: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family}{labels}: no +Inf bucket");
            let find = |suffix: &str| {
                e.samples
                    .iter()
                    .find(|s| {
                        s.name == format!("{family}{suffix}") && format!("{:?}", s.labels) == labels
                    })
                    .unwrap_or_else(|| panic!("{family}{labels}: no {suffix}"))
                    .value
            };
            assert_eq!(
                find("_count"),
                last.1,
                "{family}{labels}: _count != +Inf bucket"
            );
            assert!(find("_sum") >= 0.0);
        }
    }
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`, if any.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like `get`, 0 when absent (a counter not yet touched).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

async fn scrape(server: &TestServer) -> Exposition {
    let res = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    parse_exposition(&res.text().await.unwrap())
}

#[test]
fn the_parser_rejects_what_it_should() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
              # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
              h_sum 0.3\nh_count 2\n";
    let e = parse_exposition(ok);
    assert_eq!(e.value("a_total", &[("y", "q\"")]), 3.0);
    let bad = [
        "a_total 1\n",                                                 // no TYPE
        "# TYPE a_total counter\na_total 1\n",                         // no HELP
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",
    ];
    for text in bad {
        let owned = text.to_owned();
        let failed = std::panic::catch_unwind(move || parse_exposition(&owned)).is_err();
        assert!(failed, "accepted: {text:?}");
    }
}

// ---- helpers ----

/// Two connected devices of a fresh tenant.
async fn pair(server: &TestServer) -> (Tenant, Device, Device, Ws, Ws) {
    let t = server.tenant().await;
    let alice = t.device().await;
    let bob = t.device().await;
    let wa = t.connect(&alice).await;
    let wb = t.connect(&bob).await;
    (t, alice, bob, wa, wb)
}

async fn admin_get(server: &TestServer, path: &str) -> Value {
    let (status, body) = server
        .call("GET", path, Some(&server.admin_token), None)
        .await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[track_caller]
fn assert_unauthorized(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
}

/// Polls `/metrics` until `check` holds (up to 10 s); returns the last scrape.
async fn scrape_until(server: &TestServer, check: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = scrape(server).await;
        if check(&e) || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- /metrics ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let server = TestServer::start().await;
    let before = scrape(&server).await;
    let (t, _alice, bob, mut wa, mut wb) = pair(&server).await;
    for i in 0..3 {
        let ack = wa
            .send_to(
                &format!("c{i}"),
                &bob.address,
                json!({"text": format!("hi {i}")}),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let msg = wb.recv_type("message").await;
        assert_eq!(msg["body"]["text"], format!("hi {i}"));
    }
    // The session counts a live push right after queueing it: the client may be faster.
    let tenant = [("tenant", t.id.as_str())];
    let after = scrape_until(&server, |e| {
        e.value("switchboard_messages_delivered_total", &tenant) >= 3.0
    })
    .await;

    for (family, kind) in [
        ("switchboard_connections", "gauge"),
        ("switchboard_ws_frames_in_total", "counter"),
        ("switchboard_ws_frames_out_total", "counter"),
        ("switchboard_messages_sent_total", "counter"),
        ("switchboard_messages_acked_total", "counter"),
        ("switchboard_messages_delivered_total", "counter"),
        ("switchboard_ack_latency_seconds", "histogram"),
        ("switchboard_delivery_latency_seconds", "histogram"),
        ("switchboard_persist_batch_size", "histogram"),
        ("switchboard_persist_commit_seconds", "histogram"),
        ("switchboard_rate_limit_rejections_total", "counter"),
        ("switchboard_actor_restarts_total", "counter"),
        ("switchboard_cache_hits_total", "counter"),
        ("switchboard_cache_misses_total", "counter"),
        ("switchboard_cache_entries", "gauge"),
        ("switchboard_sessions_running", "gauge"),
        ("switchboard_persist_backlog_rows", "gauge"),
        ("switchboard_mailbox_depth", "gauge"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "family {family}"
        );
    }

    // Tenant-labelled counters: this tenant only, so exact.
    assert_eq!(
        after.get("switchboard_messages_sent_total", &tenant),
        Some(3.0)
    );
    assert_eq!(
        after.get("switchboard_messages_acked_total", &tenant),
        Some(3.0)
    );
    assert_eq!(
        after.get("switchboard_messages_delivered_total", &tenant),
        Some(3.0)
    );

    // Process-wide ones moved at least by what this test did.
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert!(delta("switchboard_ws_frames_in_total", &[]) >= 3.0);
    assert!(delta("switchboard_ws_frames_out_total", &[]) >= 3.0);
    assert!(delta("switchboard_ack_latency_seconds_count", &[]) >= 3.0);
    assert!(delta("switchboard_delivery_latency_seconds_count", &[]) >= 3.0);
    assert!(delta("switchboard_persist_batch_size_count", &[]) >= 1.0);
    assert!(
        delta("switchboard_persist_batch_size_sum", &[]) >= 6.0,
        "3 sends = 6 rows"
    );
    assert!(delta("switchboard_persist_commit_seconds_count", &[]) >= 1.0);
    assert!(after.value("switchboard_ack_latency_seconds_sum", &[]) > 0.0);
    assert!(after.value("switchboard_connections", &[]) >= 2.0);
    assert!(after.value("switchboard_sessions_running", &[]) >= 1.0);
    assert!(after
        .get("switchboard_persist_backlog_rows", &[("writer", "0")])
        .is_some());
    assert!(after
        .get(
            "switchboard_mailbox_depth",
            &[("actor", "persistence:writer:0")]
        )
        .is_some());
    // Routing resolved bob's address: a miss, then hits.
    let addresses = [("kind", "addresses"), ("layer", "memory")];
    assert!(delta("switchboard_cache_misses_total", &addresses) >= 1.0);
    assert!(delta("switchboard_cache_hits_total", &addresses) >= 2.0);
    // API keys (the `sessions` kind) are cached too; entries are counted at scrape time.
    let keys = [("kind", "sessions"), ("layer", "memory")];
    assert!(after.value("switchboard_cache_hits_total", &keys) >= 1.0);
    let all = [("kind", "all"), ("layer", "memory")];
    assert!(after.get("switchboard_cache_entries", &all).unwrap() >= 1.0);

    // The Grafana dashboard only charts families that exist, through its
    // Prometheus datasource variable.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/switchboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("switchboard_") {
                    continue;
                }
                let family = family_of(&after.types, word);
                assert!(
                    after.types.contains_key(&family),
                    "dashboard uses unknown {word}"
                );
                charted += 1;
            }
        }
    }
    assert!(charted >= 15, "{charted}");

    // No token needed: Prometheus scrapes it as it is.
    let res = server
        .http
        .get(format!("{}/metrics", server.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rate_limits_and_restarts() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 2).await;
    let before = scrape(&server).await;
    let (t, alice, bob, mut wa, _wb) = pair(&server).await;
    for i in 0..2 {
        let ack = wa
            .send_to(&format!("c{i}"), &bob.address, json!({"text": "x"}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = wa.send_to("c3", &bob.address, json!({"text": "x"})).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let after = scrape(&server).await;
    let level = [("level", "device")];
    assert!(
        after.value("switchboard_rate_limit_rejections_total", &level)
            - before.value("switchboard_rate_limit_rejections_total", &level)
            >= 1.0
    );
    let tenant = [("tenant", t.id.as_str())];
    assert_eq!(
        after.get("switchboard_messages_sent_total", &tenant),
        Some(2.0)
    );

    let kind = [("kind", "device_session")];
    let restarts_before = after.value("switchboard_actor_restarts_total", &kind);
    let (status, body) = server
        .call(
            "POST",
            &format!("/admin/test/devices/{}/panic", alice.id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let later = scrape_until(&server, |e| {
        e.value("switchboard_actor_restarts_total", &kind) > restarts_before
    })
    .await;
    assert!(
        later.value("switchboard_actor_restarts_total", &kind) > restarts_before,
        "no restart counted"
    );
}

// ---- /admin/cache/stats ----

fn cache<'a>(stats: &'a Value, kind: &str, layer: &str) -> &'a Value {
    stats["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["layer"] == layer)
        .unwrap_or_else(|| panic!("no {kind}/{layer} cache in {stats}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stats_need_the_admin_token() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/admin/cache/stats", None, None).await;
    assert_unauthorized(status, &body);
    let (status, body) = server
        .call("GET", "/admin/cache/stats", Some("not-the-token"), None)
        .await;
    assert_unauthorized(status, &body);
    let t = server.tenant().await;
    let (status, body) = server
        .call("GET", "/admin/cache/stats", Some(&t.key), None)
        .await;
    assert_unauthorized(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stats_count_hits_misses_and_sizes() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let start = admin_get(&server, "/admin/cache/stats").await;
    for kind in [
        "sessions",
        "tenants",
        "devices",
        "device_status",
        "addresses",
        "groups",
        "contacts",
        "stats",
    ] {
        let c = cache(&start, kind, "memory");
        for field in ["hits", "misses", "size"] {
            assert!(c[field].is_u64(), "{kind}.{field}: {c}");
        }
        assert!(c["hit_rate"].is_null() || c["hit_rate"].is_f64(), "{c}");
    }
    let keys_before = cache(&start, "sessions", "memory").clone();

    // API key lookups: each call after the first is a hit.
    for _ in 0..5 {
        let (status, body) = t.call("GET", "/v1/devices", None).await;
        assert_eq!(status, 200, "{body}");
    }
    // Contacts: loaded once into the cache, then served from it.
    let (status, body) = t
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts", d.id),
            Some(json!({"contacts": [{"address": "+15559990001", "name": "x"}]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    for _ in 0..3 {
        let (status, body) = t
            .call("GET", &format!("/v1/devices/{}/contacts", d.id), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["contacts"].as_array().unwrap().len(), 1, "{body}");
    }

    let end = admin_get(&server, "/admin/cache/stats").await;
    let keys = cache(&end, "sessions", "memory");
    assert!(
        n(&keys["hits"]) >= n(&keys_before["hits"]) + 5,
        "{keys_before} -> {keys}"
    );
    assert!(n(&keys["size"]) >= 1, "{keys}");
    let rate = keys["hit_rate"].as_f64().unwrap();
    let expect = n(&keys["hits"]) as f64 / (n(&keys["hits"]) + n(&keys["misses"])) as f64;
    assert!((rate - expect).abs() < 1e-9, "{keys}");

    let contacts = cache(&end, "contacts", "memory");
    assert_eq!(n(&contacts["misses"]), 1, "{contacts}");
    assert_eq!(n(&contacts["hits"]), 2, "{contacts}");
    assert_eq!(n(&contacts["size"]), 1, "{contacts}");
    assert!((contacts["hit_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);

    // Changing the contacts drops the cached list.
    let (status, _) = t
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts", d.id),
            Some(json!({"contacts": [{"address": "+15559990002"}]})),
        )
        .await;
    assert!(status == 200 || status == 201);
    let mut size = u64::MAX;
    for _ in 0..100 {
        let s = admin_get(&server, "/admin/cache/stats").await;
        size = n(&cache(&s, "contacts", "memory")["size"]);
        if size == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(size, 0, "invalidated list still counted");

    let total = &end["total"];
    let sum: u64 = end["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| n(&c["hits"]))
        .sum();
    assert_eq!(n(&total["hits"]), sum, "{end}");
    // Clearing a kind by hand (logged) empties it.
    let (status, _) = server
        .call(
            "DELETE",
            "/admin/cache/sessions",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let s = admin_get(&server, "/admin/cache/stats").await;
    assert_eq!(n(&cache(&s, "sessions", "memory")["size"]), 0, "{s}");
    let (status, _) = server
        .call(
            "DELETE",
            "/admin/cache/nope",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stats_count_directory_lookups() {
    let server = TestServer::start().await;
    let (_t, _alice, bob, mut wa, _wb) = pair(&server).await;
    let before = admin_get(&server, "/admin/cache/stats").await;
    let addr_before = cache(&before, "addresses", "memory").clone();
    for i in 0..4 {
        let ack = wa
            .send_to(&format!("c{i}"), &bob.address, json!({"text": "x"}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let after = admin_get(&server, "/admin/cache/stats").await;
    let addr = cache(&after, "addresses", "memory");
    let lookups =
        n(&addr["hits"]) + n(&addr["misses"]) - n(&addr_before["hits"]) - n(&addr_before["misses"]);
    assert!(lookups >= 4, "{addr_before} -> {addr}");
    assert!(n(&addr["hits"]) >= n(&addr_before["hits"]) + 3, "{addr}");
    assert!(n(&addr["size"]) >= 1, "{addr}");
}

// ---- /admin/db/stats ----

fn table<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no table {name} in {stats}"))
}

fn index<'a>(table: &'a Value, name: &str) -> &'a Value {
    table["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no index {name} in {table}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_stats_need_the_admin_token() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/admin/db/stats", None, None).await;
    assert_unauthorized(status, &body);
    let (status, body) = server
        .call("GET", "/admin/db/stats?hours=1", Some("nope"), None)
        .await;
    assert_unauthorized(status, &body);
    let (status, body) = server
        .call(
            "GET",
            "/admin/db/stats?hours=soon",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The routes are described in the OpenAPI document.
    let (status, doc) = server.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    for path in ["/metrics", "/admin/cache/stats", "/admin/db/stats"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["CacheStats"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_stats_show_tables_indexes_and_their_queries() {
    let server = TestServer::start().await;
    let (t, alice, bob, mut wa, _wb) = pair(&server).await;
    for i in 0..5 {
        let ack = wa
            .send_to(&format!("c{i}"), &bob.address, json!({"text": "x"}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // A history read goes through the (device_id, seq) index.
    let (status, body) = t
        .call("GET", &format!("/v1/devices/{}/messages", bob.id), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let stats = admin_get(&server, "/admin/db/stats").await;
    assert_eq!(stats["backend"], "sqlite");
    let db = &stats["database"];
    assert!(n(&db["page_size"]) >= 512, "{db}");
    assert_eq!(
        n(&db["size_bytes"]),
        n(&db["page_size"]) * n(&db["page_count"])
    );

    // Every send is stored once, with two small inbox rows: the sender's copy and the
    // recipient's.
    let messages = table(&stats, "messages");
    assert_eq!(n(&messages["rows"]), 5, "{messages}");
    let inbox = table(&stats, "inbox");
    assert_eq!(n(&inbox["rows"]), 10, "{inbox}");
    assert!(n(&inbox["size_bytes"]) > 0, "{inbox}");
    assert!(
        n(&inbox["total_bytes"]) >= n(&inbox["size_bytes"]),
        "{inbox}"
    );
    let by_seq = inbox["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["origin"] == "pk")
        .unwrap_or_else(|| panic!("no primary key in {inbox}"));
    assert_eq!(by_seq["unique"], true);
    assert_eq!(strings(&by_seq["columns"]), ["device_id", "seq"]);
    let users = strings(&by_seq["used_by"]);
    for op in ["read_inbox", "last_seq"] {
        assert!(users.contains(&op), "{op} not in {users:?}");
    }
    // Sessions read their last seq at start; history read the page.
    assert!(n(&by_seq["uses"]) >= 3, "{by_seq}");
    let copies = index(inbox, "inbox_copy");
    assert_eq!(copies["unique"], true, "{copies}");
    let users = strings(&copies["used_by"]);
    for op in ["inbox_messages", "message_copies", "delete_device"] {
        assert!(users.contains(&op), "{op} not in {users:?}");
    }
    let statuses = index(inbox, "inbox_status");
    assert_eq!(strings(&statuses["used_by"]), ["statuses"]);
    let sent = index(inbox, "inbox_sent");
    assert_eq!(strings(&sent["used_by"]), ["recent_client_ids"]);

    let devices = table(&stats, "devices");
    assert_eq!(n(&devices["rows"]), 2);
    let tenants = table(&stats, "tenants");
    assert_eq!(n(&tenants["rows"]), 1);
    assert!(
        tenants["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| strings(&i["used_by"]).contains(&"tenant_by_key_hash")),
        "{tenants}"
    );
    let contacts = table(&stats, "contacts");
    assert!(
        contacts["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| strings(&i["used_by"]).contains(&"list_contacts")),
        "{contacts}"
    );

    // Every known query has a plan, with the index it uses.
    let queries = stats["queries"].as_array().unwrap();
    let read_inbox = queries
        .iter()
        .find(|q| q["operation"] == "read_inbox")
        .unwrap();
    assert!(strings(&read_inbox["indexes"]).contains(&by_seq["name"].as_str().unwrap()));
    assert!(!strings(&read_inbox["plan"]).is_empty());
    for q in queries {
        assert!(
            !strings(&q["plan"]).iter().any(|l| l.starts_with("error")),
            "{q}"
        );
    }
    // Operation counts are real.
    let ops = stats["operations"].as_array().unwrap();
    let commits = ops
        .iter()
        .find(|o| o["operation"] == "commit_rows")
        .expect("commit_rows counted");
    assert!(n(&commits["calls"]) >= 1, "{commits}");
    let created = ops
        .iter()
        .find(|o| o["operation"] == "create_device")
        .expect("create_device counted");
    assert_eq!(n(&created["calls"]), 2, "{created}");

    // Nothing here is slow at the default threshold.
    let slow = &stats["slow_operations"];
    assert_eq!(slow["threshold_ms"], 100.0);
    assert_eq!(n(&slow["hours"]), 24);
    assert_eq!(n(&slow["capacity"]), 1000);
    drop(alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_stats_list_slow_operations_over_the_threshold() {
    let server = TestServer::start_with(|c| c.slow_query_ms = 0).await;
    let (_t, _alice, bob, mut wa, _wb) = pair(&server).await;
    let ack = wa.send_to("c1", &bob.address, json!({"text": "x"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stats = admin_get(&server, "/admin/db/stats?hours=1").await;
    let slow = &stats["slow_operations"];
    assert_eq!(slow["threshold_ms"], 0.0);
    assert_eq!(n(&slow["hours"]), 1);
    let items = slow["items"].as_array().unwrap();
    let ops: Vec<&str> = items
        .iter()
        .map(|i| i["operation"].as_str().unwrap())
        .collect();
    for op in ["create_tenant", "create_device", "commit_rows", "last_seq"] {
        assert!(ops.contains(&op), "{op} not in {ops:?}");
    }
    for item in items {
        assert!(item["duration_ms"].as_f64().unwrap() >= 0.0, "{item}");
        assert!(
            item["at"].as_i64().unwrap() <= started_ms + 60_000,
            "{item}"
        );
    }
    // Newest first.
    let ats: Vec<i64> = items.iter().map(|i| i["at"].as_i64().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "{ats:?}");

    // A zero-hour window holds only what finished since the request began.
    let recent = admin_get(&server, "/admin/db/stats?hours=0").await;
    let recent_items = recent["slow_operations"]["items"].as_array().unwrap();
    assert!(recent_items.len() < items.len(), "{recent_items:?}");
    for item in recent_items {
        assert!(item["at"].as_i64().unwrap() >= started_ms, "{item}");
    }
}

/// `DB_COMMAND_METRICS=true` on MongoDB: every command the driver sends is counted by
/// name, so one send shows as `insert` round trips (two: the message, the inbox rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_commands_are_counted_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let nx = crate::common::OwnServer::nx(&dir.path().join("nx.db")).await;
    let uri = nx.mongodb_uri();
    let server = TestServer::start_with(|c| {
        c.mongodb_uri = Some(uri);
        c.mongodb_database = Some("command_metrics".into());
        c.db_command_metrics = true;
    })
    .await;
    let (_t, _alice, bob, mut wa, mut wb) = pair(&server).await;
    let before = scrape(&server).await;
    let inserts = |e: &Exposition| {
        e.value(
            "switchboard_mongodb_commands_total",
            &[("command", "insert")],
        )
    };
    let ack = wa.send_to("m1", &bob.address, json!({"n": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    wb.recv_type("message").await;
    let after = scrape_until(&server, |e| inserts(e) >= inserts(&before) + 2.0).await;
    assert!(
        inserts(&after) >= inserts(&before) + 2.0,
        "inserts {} → {}",
        inserts(&before),
        inserts(&after)
    );
    assert_eq!(
        after
            .types
            .get("switchboard_mongodb_commands_total")
            .map(String::as_str),
        Some("counter")
    );
}
