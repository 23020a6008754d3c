//! The server binary as a child process: durability across SIGKILL, drain on SIGTERM.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{call, Device, Tenant, Ws, WAIT};

const ADMIN: &str = "process-test-admin-token";

/// A server child process and where it listens.
struct Child_ {
    child: Child,
    base: String,
    ws_base: String,
}

async fn spawn_server(data_dir: &Path) -> Child_ {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("SWITCHBOARD_CONFIG_DIR", data_dir.join("no-config"))
        .env("ADMIN_TOKEN", ADMIN)
        .env("RATE_LIMIT_NORMAL", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix("Switchboard listening on http://") {
                return rest.trim().to_owned();
            }
        }
        panic!("server exited before printing its address");
    })
    .await
    .expect("server did not start in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Child_ {
        child,
        base: format!("http://{addr}"),
        ws_base: format!("ws://{addr}"),
    }
}

async fn setup(server: &Child_) -> (Tenant, Device, Device) {
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

fn rebind(tenant: &Tenant, server: &Child_) -> Tenant {
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_BIND", "127.0.0.1:0")
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .env("SWITCHBOARD_CONFIG_DIR", dir.path().join("no-config"))
        .env("ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("Switchboard listening on http://") {
                return rest.trim().to_owned();
            }
        }
        panic!("server exited before printing its address");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let server = Child_ {
        child,
        base: format!("http://{addr}"),
        ws_base: format!("ws://{addr}"),
    };
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
