//! Job control (get, cancel, retry), tenant isolation, queue stats and restart,
//! contact syncs as background jobs, and queued jobs surviving SIGKILL of the binary.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::bulk::{bulk, count, inbox, job, job_ids, now_ms, wait_jobs};
use crate::common::{address, call, on_mongodb, ChildServer, Tenant, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_belong_to_their_tenant() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let (s, answer) = bulk(
        &tenant,
        json!({"send_at": now_ms() + 600_000, "messages": [{"device": a.id, "to": b.address, "body": {}}]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let id = &job_ids(&answer)[0];
    let other = server.tenant().await;
    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("DELETE", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/retry")),
    ] {
        let (s, body) = other.call(method, &path, None).await;
        assert_eq!(s, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (s, body) = tenant.call("GET", "/v1/jobs/j_nope", None).await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = server
        .call("GET", &format!("/v1/jobs/{id}"), None, None)
        .await;
    assert_eq!(s, 401);
    // The owner still sees it untouched.
    assert_eq!(job(&tenant, id).await["state"], "delayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_job_not_yet_sent() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let (s, answer) = bulk(
        &tenant,
        json!({"send_at": now_ms() + 2_000, "messages": [
            {"device": a.id, "to": b.address, "body": {"n": 1}},
            {"device": a.id, "to": b.address, "body": {"n": 2}}
        ]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let (s, view) = tenant
        .call("DELETE", &format!("/v1/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["state"], "cancelled");
    let (s, body) = tenant
        .call("DELETE", &format!("/v1/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    // The other one runs at its time; the cancelled one never does.
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        v[1]["state"] == "completed"
    })
    .await;
    assert_eq!(views[0]["state"], "cancelled");
    assert_eq!(views[1]["state"], "completed", "{views:?}");
    let got = inbox(&tenant, &b).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"]["n"], 2);
    // A completed job cannot be cancelled nor retried.
    let (s, _) = tenant
        .call("DELETE", &format!("/v1/jobs/{}", ids[1]), None)
        .await;
    assert_eq!(s, 409);
    let (s, _) = tenant
        .call("POST", &format!("/v1/jobs/{}/retry", ids[1]), None)
        .await;
    assert_eq!(s, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_is_retried_after_the_cause_is_fixed() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let missing = address();
    let (s, answer) = bulk(
        &tenant,
        json!({"messages": [{"device": a.id, "to": missing, "body": {"text": "hello"}}]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        v[0]["state"] == "failed"
    })
    .await;
    let failed = &views[0];
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().starts_with("not_found"),
        "{failed}"
    );
    assert_eq!(
        failed["attempts"], 1,
        "permanent errors fail at once: {failed}"
    );
    assert!(failed.get("message_id").is_none());

    // Fix the cause: the recipient now exists.
    let (s, created) = tenant
        .call(
            "POST",
            "/v1/devices",
            Some(json!({"address": missing, "name": "late"})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let (s, view) = tenant
        .call("POST", &format!("/v1/jobs/{}/retry", ids[0]), None)
        .await;
    assert_eq!(s, 200, "{view}");
    assert!(
        ["waiting", "active", "completed"].contains(&view["state"].as_str().unwrap()),
        "{view}"
    );
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        v[0]["state"] == "completed"
    })
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    assert!(views[0].get("error").is_none(), "{}", views[0]);
    let recipient = crate::common::Device {
        id: created["device_id"].as_str().unwrap().to_owned(),
        address: missing,
    };
    let got = inbox(&tenant, &recipient).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["message_id"], views[0]["message_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_and_restart() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let (s, _) = server.call("GET", "/admin/queues/stats", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = server
        .call("GET", "/admin/queues/stats", Some(&tenant.key), None)
        .await;
    assert_eq!(s, 401);

    let mut messages: Vec<Value> = (0..5)
        .map(|i| json!({"device": a.id, "to": b.address, "body": {"n": i}, "priority": "high"}))
        .collect();
    messages.push(json!({"device": a.id, "to": address(), "body": {}, "priority": "low"}));
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let (s, later) = bulk(
        &tenant,
        json!({"send_at": now_ms() + 600_000, "messages": [{"device": a.id, "to": b.address, "body": {}}]}),
    )
    .await;
    assert_eq!(s, 202, "{later}");
    wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 5 && count(v, "failed") == 1
    })
    .await;
    let (s, stats) = server
        .call(
            "GET",
            "/admin/queues/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(stats["completed"], 5, "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["delayed"], 1, "{stats}");
    assert_eq!(stats["waiting"], 0, "{stats}");
    assert_eq!(stats["active"], 0, "{stats}");
    assert_eq!(stats["cancelled"], 0, "{stats}");
    let rate = stats["success_rate"].as_f64().unwrap();
    assert!((rate - 5.0 / 6.0).abs() < 1e-9, "{stats}");
    assert_eq!(stats["lanes"]["high"]["completed"], 5, "{stats}");
    assert_eq!(stats["lanes"]["low"]["failed"], 1, "{stats}");
    assert_eq!(stats["lanes"]["normal"]["delayed"], 1, "{stats}");
    assert_eq!(stats["lanes"]["critical"]["completed"], 0, "{stats}");
    assert_eq!(stats["tenants"][&tenant.id]["completed"], 5, "{stats}");
    assert_eq!(stats["dispatcher_running"], true);
    let (_, doc) = server.call("GET", "/openapi.json", None, None).await;
    for path in [
        "/v1/messages/bulk",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/retry",
        "/admin/queues/stats",
        "/admin/queues/restart",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }

    // Restart the dispatcher: jobs keep flowing, none lost.
    let (s, _) = server
        .call("POST", "/admin/queues/restart", None, None)
        .await;
    assert_eq!(s, 401);
    let (s, body) = server
        .call(
            "POST",
            "/admin/queues/restart",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["restarted"], true);
    assert_eq!(body["running"], true);
    let (s, answer) = bulk(
        &tenant,
        json!({"messages": [{"device": a.id, "to": b.address, "body": {"n": 99}}]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 1
    })
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    let (_, stats) = server
        .call(
            "GET",
            "/admin/queues/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(stats["dispatcher_restarts"], 1, "{stats}");
    assert_eq!(
        stats["delayed"], 1,
        "the scheduled job survived the restart: {stats}"
    );
    assert_eq!(inbox(&tenant, &b).await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_sending_loses_and_duplicates_nothing() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 1_000_000).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    // nx (the MongoDB-protocol test server) is far slower than SQLite: fewer there.
    let n: u64 = if on_mongodb() { 600 } else { 2000 };
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"device": a.id, "to": b.address, "body": {"n": i}}))
        .collect();
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (s, _) = server
            .call(
                "POST",
                "/admin/queues/restart",
                Some(&server.admin_token),
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stats) = server
            .call(
                "GET",
                "/admin/queues/stats",
                Some(&server.admin_token),
                None,
            )
            .await;
        if stats["completed"] == n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {stats}"
        );
        assert_eq!(stats["failed"], 0, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = inbox(&tenant, &b).await;
    let bodies: HashSet<u64> = got
        .iter()
        .map(|m| m["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got.len() as u64, n, "duplicates or losses");
    assert_eq!(bodies.len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_sync_runs_as_a_background_job() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let contacts: Vec<Value> = (0..3)
        .map(|i| json!({"address": format!("+1999000{i:04}"), "name": format!("c{i}")}))
        .collect();
    let (s, body) = tenant
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts?async=true", a.id),
            Some(json!({ "contacts": contacts })),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_owned();
    let views = wait_jobs(
        &tenant,
        std::slice::from_ref(&id),
        Duration::from_secs(10),
        |v| v[0]["state"] == "completed",
    )
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    assert_eq!(views[0]["kind"], "contacts");
    assert_eq!(views[0]["progress"], json!({"done": 3, "total": 3}));

    // Over 10,000 entries: a job instead of 413.
    let many: Vec<Value> = (0..25_000)
        .map(|i| json!({"address": format!("+1888{i:07}")}))
        .collect();
    let (s, body) = tenant
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts", a.id),
            Some(json!({ "contacts": many })),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_owned();
    let views = wait_jobs(
        &tenant,
        std::slice::from_ref(&id),
        Duration::from_secs(30),
        |v| v[0]["state"] == "completed",
    )
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    assert_eq!(
        views[0]["progress"],
        json!({"done": 25_000, "total": 25_000})
    );
    let (s, list) = tenant
        .call("GET", &format!("/v1/devices/{}/contacts", a.id), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["contacts"].as_array().unwrap().len(), 25_003);
    // Validation still names the entry, before any job exists.
    let (s, body) = tenant
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts?async=true", a.id),
            Some(json!({"contacts": [{"address": "x"}]})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("contacts[0].address"));
}

// ---------------------------------------------------------------- SIGKILL

const ADMIN: &str = "jobs-test-admin-token";

async fn spawn_server(data_dir: &Path) -> ChildServer {
    ChildServer::spawn(data_dir, ADMIN, &[("RATE_LIMIT_NORMAL", "1000000")], None).await
}

async fn stats(http: &reqwest::Client, base: &str) -> Value {
    let (s, body) = call(http, base, "GET", "/admin/queues/stats", Some(ADMIN), None).await;
    assert_eq!(s, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_sigkill_and_run_once() {
    // nx (the MongoDB-protocol test server) is far slower than SQLite: fewer there.
    let n: usize = if on_mongodb() { 800 } else { 4000 };
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path()).await;
    let http = reqwest::Client::new();
    let (s, body) = call(
        &http,
        &server.base,
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let tenant = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http: http.clone(),
    };
    let a = tenant.device().await;
    let b = tenant.device().await;
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"device": a.id, "to": b.address, "body": {"n": i}}))
        .collect();
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    // Kill -9 once some, not all, are sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let st = stats(&http, &server.base).await;
        let done = st["completed"].as_u64().unwrap();
        if done >= 200 {
            break st;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.child.start_kill().unwrap();
    let status = server.child.wait().await.unwrap();
    assert!(!status.success());
    let done_before = before["completed"].as_u64().unwrap();
    assert!(
        done_before < n as u64,
        "all sent before the kill; nothing to prove: {before}"
    );

    let server = spawn_server(dir.path()).await;
    let tenant = Tenant {
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        ..tenant
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let st = stats(&http, &server.base).await;
        if st["completed"] == n as u64 {
            break;
        }
        if st["failed"] != 0 {
            for id in &ids {
                let v = job(&tenant, id).await;
                if v["state"] == "failed" {
                    panic!("a job failed after the restart: {v}\n{st}");
                }
            }
        }
        assert_eq!(st["failed"], 0, "{st}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained after restart: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly once: n messages in the recipient's inbox, one per job, each job's
    // message_id among them.
    let got = inbox(&tenant, &b).await;
    let bodies: HashSet<u64> = got
        .iter()
        .map(|m| m["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got.len(),
        n,
        "duplicates or losses (completed {done_before} before the kill)"
    );
    assert_eq!(bodies.len(), n);
    let message_ids: HashSet<&str> = got
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    for id in ids.iter().step_by(97) {
        let v = job(&tenant, id).await;
        assert_eq!(v["state"], "completed");
        assert!(
            message_ids.contains(v["message_id"].as_str().unwrap()),
            "{v}"
        );
    }
    eprintln!(
        "{done_before} of {n} jobs completed before SIGKILL; all {n} exactly once after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_session_crash_is_retried_not_failed() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 1_000_000).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    // nx (the MongoDB-protocol test server) is far slower than SQLite: fewer there.
    let n: usize = if on_mongodb() { 600 } else { 3000 };
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"device": a.id, "to": b.address, "body": {"n": i}}))
        .collect();
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    // Crash the sending session a few times while jobs are in flight.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (s, _) = server
            .call(
                "POST",
                &format!("/admin/test/devices/{}/panic", a.id),
                Some(&server.admin_token),
                None,
            )
            .await;
        assert_eq!(s, 202);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stats) = server
            .call(
                "GET",
                "/admin/queues/stats",
                Some(&server.admin_token),
                None,
            )
            .await;
        if stats["completed"] == n as u64 {
            break;
        }
        assert_eq!(stats["failed"], 0, "{stats}");
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = inbox(&tenant, &b).await;
    let bodies: HashSet<u64> = got
        .iter()
        .map(|m| m["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got.len(), n, "duplicates or losses");
    assert_eq!(bodies.len(), n);
    let mut retried = 0;
    for id in ids.iter().step_by(10) {
        if job(&tenant, id).await["attempts"].as_u64().unwrap() > 1 {
            retried += 1;
        }
    }
    eprintln!("sampled jobs that needed a second attempt: {retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_syncs_take_turns() {
    let server = TestServer::start_with(|c| c.queue_contact_concurrency = Some(1)).await;
    let tenant = server.tenant().await;
    let mut ids = Vec::new();
    let mut devices = Vec::new();
    for d in 0..3 {
        let device = tenant.device().await;
        let contacts: Vec<Value> = (0..2000)
            .map(|i| json!({"address": format!("+1777{d}{i:06}")}))
            .collect();
        let (s, body) = tenant
            .call(
                "PUT",
                &format!("/v1/devices/{}/contacts?async=true", device.id),
                Some(json!({ "contacts": contacts })),
            )
            .await;
        assert_eq!(s, 202, "{body}");
        ids.push(body["job_id"].as_str().unwrap().to_owned());
        devices.push(device);
    }
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(20), |v| {
        count(v, "completed") == 3
    })
    .await;
    assert_eq!(count(&views, "completed"), 3, "{views:?}");
    for d in &devices {
        let (_, list) = tenant
            .call("GET", &format!("/v1/devices/{}/contacts", d.id), None)
            .await;
        assert_eq!(list["contacts"].as_array().unwrap().len(), 2000);
    }
}
