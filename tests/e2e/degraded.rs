//! Degraded dependencies, with servers of the tests' own that they kill and restart:
//! Redis away (the node serves from memory, says it is degraded, reconnects by
//! itself), MongoDB away (nothing acked that is not durable, 503, reads from cache,
//! recovery without a restart), and invalidations reaching every node.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{mongodb_uri, redis_url, unique_name, OwnServer, TestServer, WAIT};

async fn health(server: &TestServer) -> (u16, Value) {
    server.call("GET", "/health", None, None).await
}

/// Polls `/health` until `f` holds.
async fn health_until(server: &TestServer, what: &str, f: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let (status, body) = health(server).await;
        if f(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_degrades_to_memory_and_comes_back() {
    let mut redis = OwnServer::redis().await;
    let url = redis.redis_url();
    let server = TestServer::start_with(|c| {
        c.redis_url = Some(url);
        c.redis_prefix = unique_name();
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let (status, _) = t.call("GET", &format!("/v1/devices/{}", a.id), None).await;
    assert_eq!(status, 200);
    let body = health_until(&server, "healthy with redis", |s, b| {
        s == 200 && b["checks"]["cache"]["state"] == "ok"
    })
    .await;
    assert_eq!(
        body["checks"]["cache"]["layers"],
        json!(["memory", "redis"])
    );
    // The shared layer holds what the node read.
    let (_, stats) = server
        .call("GET", "/admin/cache/stats", Some(&server.admin_token), None)
        .await;
    let devices = stats["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "devices" && c["layer"] == "redis")
        .unwrap()
        .clone();
    assert!(devices["size"].as_u64().unwrap() >= 1, "{stats}");

    redis.kill();
    // Still serving: from memory for what it holds, from the store for the rest.
    let (status, body) = t.call("GET", &format!("/v1/devices/{}", a.id), None).await;
    assert_eq!(status, 200, "{body}");
    let mut wa = t.connect(&a).await;
    let ack = wa
        .send_to("during", &b.address, json!({"redis": "away"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let body = health_until(&server, "degraded", |s, b| {
        s == 200 && b["checks"]["cache"]["state"] == "degraded" && b["status"] == "degraded"
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
    let text = server.metrics_text().await;
    assert!(
        text.contains(r#"switchboard_dependency_up{dependency="redis"} 0"#),
        "no redis-down metric"
    );

    // Redis is back (empty): the node reconnects by itself.
    redis.start().await;
    let deadline = Instant::now() + WAIT * 2;
    loop {
        // Traffic drives the reconnection attempts.
        let _ = t.call("GET", &format!("/v1/devices/{}", b.id), None).await;
        let (status, body) = health(&server).await;
        if status == 200 && body["checks"]["cache"]["state"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_away_refuses_sends_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nx = OwnServer::nx(&dir.path().join("nx.db")).await;
    let uri = nx.mongodb_uri();
    let server = TestServer::start_with(|c| {
        c.mongodb_uri = Some(uri);
        c.mongodb_database = Some("degraded".into());
        c.db_server_selection_timeout = Some(1000);
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    assert_eq!(
        wa.send_to("before", &b.address, json!({"n": 1})).await["type"],
        "ack"
    );
    let (status, _) = t.call("GET", &format!("/v1/devices/{}", b.id), None).await;
    assert_eq!(status, 200);

    nx.kill();
    // Nothing is acked that is not durable.
    let answer = wa.send_to("during", &b.address, json!({"n": 2})).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    let body = health_until(&server, "503 while the store is away", |s, _| s == 503).await;
    assert_eq!(body["checks"]["store"]["backend"], "mongodb", "{body}");
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
    // What the cache holds is still served.
    let (status, body) = t.call("GET", &format!("/v1/devices/{}", b.id), None).await;
    assert_eq!(status, 200, "{body}");

    // Back: the same server serves again, and the refused send can be repeated.
    nx.start().await;
    health_until(&server, "ready again", |s, _| s == 200).await;
    let deadline = Instant::now() + WAIT * 2;
    let ack = loop {
        let answer = wa.send_to("during", &b.address, json!({"n": 2})).await;
        if answer["type"] == "ack" {
            break answer;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut wb = t.connect(&b).await;
    let got = wb.sync_all(0, 100).await;
    let bodies: Vec<&Value> = got.iter().map(|m| &m["body"]).collect();
    assert_eq!(bodies, [&json!({"n": 1}), &json!({"n": 2})], "{got:?}");
    assert_eq!(got[1]["message_id"], ack["message_id"]);
}

/// Two nodes on one store and one Redis: a change made on one is seen at once by the
/// other (its in-process copy is dropped by the invalidation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_node() {
    let database = unique_name();
    let prefix = unique_name();
    let admin = "two-nodes-admin".to_owned();
    let node = |database: String, prefix: String, admin: String| {
        TestServer::start_with(move |c| {
            c.mongodb_uri = Some(mongodb_uri());
            c.mongodb_database = Some(database);
            c.redis_url = Some(redis_url());
            c.redis_prefix = prefix;
            c.admin_token = Some(admin);
        })
    };
    let a = node(database.clone(), prefix.clone(), admin.clone()).await;
    let b = node(database, prefix, admin).await;
    let ta = a.tenant().await;
    let tb = crate::common::Tenant {
        base: b.base.clone(),
        ws_base: b.ws_base.clone(),
        ..ta.clone()
    };
    let (d1, d2) = (ta.device().await, ta.device().await);
    let (_, group) = ta
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [d1.address, d2.address]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap();
    // Node B caches the group and the device.
    let (_, g) = tb.call("GET", &format!("/v1/groups/{gid}"), None).await;
    assert_eq!(g["members"].as_array().unwrap().len(), 2, "{g}");
    let (status, _) = tb
        .call("GET", &format!("/v1/devices/{}", d2.id), None)
        .await;
    assert_eq!(status, 200);
    // Node A changes both.
    let (status, _) = ta
        .call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", d2.address),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = ta
        .call("DELETE", &format!("/v1/devices/{}", d2.id), None)
        .await;
    assert_eq!(status, 204);
    // Node B sees the changes, without waiting for a TTL.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, g) = tb.call("GET", &format!("/v1/groups/{gid}"), None).await;
        let (status, _) = tb
            .call("GET", &format!("/v1/devices/{}", d2.id), None)
            .await;
        if g["members"].as_array().map(Vec::len) == Some(1) && status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "stale on node B: {g} {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
