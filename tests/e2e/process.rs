//! The server binary as a child process: durability across SIGKILL, drain on SIGTERM.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::{call, ChildServer, Device, OwnServer, Tenant, Ws, WAIT};

const ADMIN: &str = "process-test-admin-token";

async fn spawn_server(data_dir: &Path) -> ChildServer {
    ChildServer::spawn(data_dir, ADMIN, &[("RATE_LIMIT_NORMAL", "1000000")], None).await
}

async fn setup(server: &ChildServer) -> (Tenant, Device, Device) {
    let http = reqwest::Client::new();
    let (status, body) = call(
        &http,
        &server.base,
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(json!({"name": "p"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let tenant = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http,
    };
    let a = tenant.device().await;
    let b = tenant.device().await;
    (tenant, a, b)
}

fn rebind(tenant: &Tenant, server: &ChildServer) -> Tenant {
    Tenant {
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        ..tenant.clone()
    }
}

/// Reads a device's whole inbox by `sync` pages.
async fn sync_all(ws: &mut Ws) -> Vec<Value> {
    let mut after = 0u64;
    let mut items = Vec::new();
    for page in 0..1000 {
        let id = format!("sync{page}");
        ws.send(json!({"type": "sync", "id": id, "after_seq": after, "limit": 100}))
            .await;
        let res = ws.recv_type("messages").await;
        assert_eq!(res["id"], id.as_str());
        let batch = res["items"].as_array().unwrap().clone();
        after = res["next_after_seq"].as_u64().unwrap();
        items.extend(batch);
        if !res["more"].as_bool().unwrap() {
            break;
        }
    }
    items
}

fn assert_gap_free(items: &[Value]) {
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "seq gap or disorder at {i}: {item}"
        );
    }
    let ids: HashSet<&str> = items
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), items.len(), "duplicate message ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path()).await;
    let (tenant, a, b) = setup(&server).await;
    let mut wa = tenant.connect(&a).await;

    // Pipeline 600 sends and kill the server while acks are still arriving.
    const SENDS: usize = 600;
    for i in 0..SENDS {
        wa.send(json!({"type": "send", "id": format!("k{i}"), "to": b.address, "body": {"n": i}}))
            .await;
    }
    let mut acked: Vec<(String, u64)> = Vec::new();
    while acked.len() < 300 {
        let v = wa.recv().await;
        if v["type"] == "ack" {
            acked.push((
                v["message_id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            ));
        } else {
            assert_ne!(v["type"], "error", "{v}");
        }
    }
    server.child.start_kill().unwrap();
    // Acks already on the wire before the kill count too.
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(300), wa.stream.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acked.push((
                    v["message_id"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
        }
    }
    let status = server.child.wait().await.unwrap();
    assert!(!status.success(), "the server was killed");
    drop(wa);

    let server = spawn_server(dir.path()).await;
    let tenant = rebind(&tenant, &server);
    let mut wb = tenant.connect(&b).await;
    let inbox = sync_all(&mut wb).await;
    assert_gap_free(&inbox);
    let in_inbox: HashSet<&str> = inbox
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    for (id, _) in &acked {
        assert!(in_inbox.contains(id.as_str()), "acked message {id} lost");
    }
    // The recipient sees A's messages in the order A sent them.
    let bodies: Vec<u64> = inbox
        .iter()
        .map(|m| m["body"]["n"].as_u64().unwrap())
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] < w[1]),
        "out of order: {bodies:?}"
    );

    // The sender's own inbox holds every acked copy at the seq its ack named.
    let mut wa = tenant.connect(&a).await;
    let own = sync_all(&mut wa).await;
    assert_gap_free(&own);
    for (id, seq) in &acked {
        let copy = &own[*seq as usize - 1];
        assert_eq!(copy["message_id"], id.as_str());
    }
    // Resending an acked request id after the restart creates nothing new.
    let (first_id, first_seq) = &acked[0];
    let again = wa.send_to("k0", &b.address, json!({"n": 0})).await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(again["message_id"], first_id.as_str());
    assert_eq!(again["seq"].as_u64().unwrap(), *first_seq);
    eprintln!(
        "acked {} of {SENDS} before SIGKILL; all found after restart",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path()).await;
    let (tenant, a, b) = setup(&server).await;
    let mut wa = tenant.connect(&a).await;
    let ack = wa
        .send_to("t1", &b.address, json!({"text": "before shutdown"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let pid = server.child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(wa.expect_close().await, 1012);
    let status = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");

    let server = spawn_server(dir.path()).await;
    let tenant = rebind(&tenant, &server);
    let mut wb = tenant.connect(&b).await;
    let inbox = sync_all(&mut wb).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["message_id"], ack["message_id"]);
}

/// JSON debug logs of the real binary: every request and every WebSocket connection
/// carries a request id, and no secret (admin token, API key, device token) is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let server = ChildServer::spawn(
        dir.path(),
        ADMIN,
        &[("RUST_LOG", "debug"), ("LOG_FORMAT", "json")],
        Some(std::fs::File::create(&log_path).unwrap()),
    )
    .await;
    let (tenant, a, b) = setup(&server).await;
    let token = tenant.token(&a).await;
    let mut wa = Ws::connect(&server.ws_base, &token).await;
    let ack = wa
        .send_to("l1", &b.address, json!({"text": "log me not"}))
        .await;
    assert_eq!(ack["type"], "ack");
    drop(wa);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = server.child;
    child.kill().await.unwrap();

    let logged = std::fs::read_to_string(&log_path).unwrap();
    for secret in [ADMIN, tenant.key.as_str(), token.as_str()] {
        assert!(!logged.contains(secret), "a secret was logged: {secret}");
    }
    let connected: Vec<Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "connected")
        .collect();
    assert_eq!(connected.len(), 1, "{logged}");
    let spans = connected[0]["spans"].to_string();
    assert!(spans.contains("request_id"), "{}", connected[0]);
    assert!(spans.contains(&a.id), "{}", connected[0]);
    let requests = logged
        .lines()
        .filter(|l| l.contains("\"request_id\"") && l.contains("/v1/devices"))
        .count();
    assert!(requests > 0, "HTTP requests carry a request id");
}

/// Passwords in `REDIS_URL` and `MONGODB_URI` never reach the logs: not at start-up,
/// not in the errors of a MongoDB that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_passwords_never_reach_the_logs() {
    const REDIS_PASSWORD: &str = "redis-pw-never-logged";
    const MONGO_PASSWORD: &str = "mongo-pw-never-logged";
    let redis = OwnServer::redis_with(&["--requirepass", REDIS_PASSWORD]).await;
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port);

    // A node on Redis with a password: it serves, and says where its cache is.
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let server = ChildServer::spawn(
        dir.path(),
        ADMIN,
        &[
            ("RUST_LOG", "debug"),
            ("LOG_FORMAT", "json"),
            ("REDIS_URL", &redis_url),
            ("MONGODB_URI", ""),
        ],
        Some(std::fs::File::create(&log_path).unwrap()),
    )
    .await;
    let http = reqwest::Client::new();
    let (status, health) = call(&http, &server.base, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["cache"]["ok"], true, "{health}");
    let mut child = server.child;
    child.kill().await.unwrap();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("redis://"), "the cache is named: {logged}");
    assert!(
        !logged.contains(REDIS_PASSWORD),
        "the Redis password was logged"
    );

    // A MongoDB that is not there: start-up fails, and its errors name no password.
    let nothing = crate::common::free_port();
    let uri =
        format!("mongodb://switchboard:{MONGO_PASSWORD}@127.0.0.1:{nothing}/?authSource=admin");
    let out = tokio::time::timeout(
        WAIT * 2,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env("SWITCHBOARD_BIND", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir.path())
            .env("SWITCHBOARD_CONFIG_DIR", dir.path().join("no-config"))
            .env("ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "debug")
            .env("MONGODB_URI", &uri)
            .env("REDIS_URL", &redis_url)
            .env("DB_SERVER_SELECTION_TIMEOUT", "300")
            .env("DB_CONNECT_TIMEOUT", "300")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server neither started nor gave up")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started without its store: {text}");
    assert!(
        text.contains("127.0.0.1"),
        "the error names the host: {text}"
    );
    for secret in [MONGO_PASSWORD, REDIS_PASSWORD] {
        assert!(!text.contains(secret), "a password was logged: {text}");
    }
}
