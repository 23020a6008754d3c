//! Supervision: a failing session restarts after a growing backoff, a child that fails
//! too often escalates (OTP restart intensity) up to the root, `/health` reflects the
//! tree, and a store outage is not a restart storm.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{call, ChildServer, TestServer, Ws, WAIT};

fn restarts(server: &TestServer) -> u64 {
    server
        .running
        .as_ref()
        .unwrap()
        .state
        .env
        .stats
        .session_restarts
        .load(Ordering::Relaxed)
}

async fn root_restarts(server: &TestServer) -> Value {
    let (status, tree) = server
        .call(
            "GET",
            "/admin/tree?limit=0",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{tree}");
    tree["root"]["restarts"].clone()
}

async fn inject_start_panics(server: &TestServer, device_id: &str, times: u32) {
    let (status, body) = server
        .call(
            "POST",
            &format!("/admin/test/devices/{device_id}/start-panics?times={times}"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// Polls until `f` holds, up to `within`.
async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_session_restarts_with_backoff() {
    let server = TestServer::start_with(|c| {
        c.supervisor_backoff_min_ms = 200;
        c.supervisor_backoff_max_ms = 5000;
        c.supervisor_max_restarts = 10;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let mut wa = t.connect(&a).await;
    // The running session panics now and its next three starts panic too: four
    // failures, restarted after 200, 400, 800 and 1600 ms.
    let started = Instant::now();
    inject_start_panics(&server, &a.id, 3).await;
    assert_eq!(wa.expect_close().await, 1012);
    assert!(until(Duration::from_secs(20), || restarts(&server) >= 4).await);
    let mut wa = t.connect(&a).await;
    wa.ping("up").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200 + 400 + 800),
        "restarted too fast: four failures in {took:?}"
    );
    assert_eq!(restarts(&server), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_failing_too_often_escalates_to_its_tenant() {
    let server = TestServer::start_with(|c| {
        c.supervisor_max_restarts = 3;
        c.supervisor_period_secs = 60;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    // Three restarts are tolerated; the fourth failure fails the tenant supervisor,
    // which stops its other sessions too (B is closed with 1012) and is counted by root.
    inject_start_panics(&server, &a.id, 3).await;
    assert_eq!(wa.expect_close().await, 1012);
    assert_eq!(wb.expect_close().await, 1012);
    let tenant_key = format!("tenant:{}", t.id);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = root_restarts(&server).await;
        if r[&tenant_key] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no escalation: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(restarts(&server), 4);
    // The tree is still up: the tenant starts again on demand, and so do its sessions.
    let mut wa = t.connect(&a).await;
    wa.ping("back").await;
    let (status, health) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_past_the_root_fails_health_and_exits_the_process() {
    // In process: the root stops, `/health` says so.
    let server = TestServer::start_with(|c| {
        c.supervisor_max_restarts = 1;
        c.supervisor_period_secs = 60;
        c.supervisor_backoff_min_ms = 1;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    inject_start_panics(&server, &a.id, 1000).await;
    // Each connect starts the session (and the tenant) again; it keeps failing until
    // the tenant has failed twice, which the root does not tolerate.
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!(
                "{}/v1/ws?token={}",
                t.ws_base,
                t.token(&a).await
            )),
        )
        .await;
        let (status, body) = server.call("GET", "/health", None, None).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "root never escalated: {body}");
    };
    assert_eq!(body["checks"]["actors"]["root"], false, "{body}");
    assert_eq!(body["live"], false, "{body}");

    // The binary exits non-zero so that its orchestrator restarts it.
    let dir = tempfile::tempdir().unwrap();
    let admin = "escalate-admin";
    let mut child = ChildServer::spawn(
        dir.path(),
        admin,
        &[
            ("SWITCHBOARD_TEST_HOOKS", "true"),
            ("SWITCHBOARD_SUPERVISOR_MAX_RESTARTS", "1"),
            ("SWITCHBOARD_SUPERVISOR_BACKOFF_MIN_MS", "1"),
        ],
        None,
    )
    .await;
    let http = reqwest::Client::new();
    let (_, tenant) = call(
        &http,
        &child.base,
        "POST",
        "/admin/tenants",
        Some(admin),
        Some(json!({"name": "x"})),
    )
    .await;
    let key = tenant["api_key"].as_str().unwrap();
    let (_, device) = call(
        &http,
        &child.base,
        "POST",
        "/v1/devices",
        Some(key),
        Some(json!({"address": "+15557770001"})),
    )
    .await;
    let id = device["device_id"].as_str().unwrap();
    let (status, _) = call(
        &http,
        &child.base,
        "POST",
        &format!("/admin/test/devices/{id}/start-panics?times=1000"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (_, token) = call(
        &http,
        &child.base,
        "POST",
        &format!("/v1/devices/{id}/tokens"),
        Some(key),
        None,
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let ws_base = child.ws_base.clone();
    let exit = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                status = child.child.wait() => return status.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio_tungstenite::connect_async(format!("{ws_base}/v1/ws?token={token}")),
                    )
                    .await;
                }
            }
        }
    })
    .await
    .expect("the process did not exit after the root failed");
    assert!(!exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_not_a_restart_storm() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let token = t.token(&a).await;
    let (status, _) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(json!({"down": true})),
        )
        .await;
    assert_eq!(status, 204);
    // Clients keep trying: each attempt fails without restarting anything.
    for _ in 0..50 {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("{}/v1/ws?token={token}", t.ws_base)),
        )
        .await;
    }
    let (status, health) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["checks"]["store"]["ok"], false);
    assert_eq!(health["checks"]["actors"]["ok"], true, "{health}");
    assert!(!health.to_string().contains("INJECTED"), "{health}");
    assert_eq!(restarts(&server), 0, "the outage caused restarts");
    // The store is back: everything works again without a restart.
    server
        .call(
            "POST",
            "/admin/test/store",
            Some(&server.admin_token),
            Some(json!({"down": false})),
        )
        .await;
    let mut wa = Ws::connect(&t.ws_base, &token).await;
    wa.ping("back").await;
    let (status, health) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, 200, "{health}");
    let r = root_restarts(&server).await;
    assert!(r.as_object().unwrap().values().all(|v| v == 0), "{r}");
}
