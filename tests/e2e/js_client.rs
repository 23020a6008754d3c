//! The JavaScript client (`clients/js`) in a real browser against the real server
//! binary: `tests/browser/client.mjs` opens two pages in headless Debian chromium that
//! import the package and exchange messages across an operator disconnect, sockets
//! closed from the page, a SIGTERM restart and a SIGKILL restart (same data dir, same
//! port), with sends issued while disconnected. This test owns the server: the script
//! asks for each stop and start on stdout (`STOP TERM|KILL`, `START`) and waits for
//! the answer on stdin. Afterwards the inboxes are read over REST: every message the
//! pages sent is there exactly once, in order.
//!
//! `./scripts/test` installs chromium and playwright-core; when either is missing this
//! test fails and says so.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::admin_page::{check_tools, repo};
use crate::common::{call, free_port, ChildServer, Device, Tenant};

const ADMIN: &str = "js-client-test-admin-token";
/// The whole browser scenario, restarts included.
const SCENARIO_WAIT: Duration = Duration::from_secs(100);

/// The binary on `dir`, always on `port` (the pages reconnect to the same address).
async fn spawn_server(dir: &Path, port: u16) -> ChildServer {
    let bind = format!("127.0.0.1:{port}");
    ChildServer::spawn(
        dir,
        ADMIN,
        &[
            ("SWITCHBOARD_BIND", bind.as_str()),
            ("RATE_LIMIT_NORMAL", "1000000"),
        ],
        None,
    )
    .await
}

/// Every message of `device`'s inbox sent by `from`, read over REST, in seq order.
async fn messages_from(tenant: &Tenant, device: &Device, from: &str) -> Vec<Value> {
    let mut after = 0u64;
    let mut out = Vec::new();
    loop {
        let (status, page) = tenant
            .call(
                "GET",
                &format!(
                    "/v1/devices/{}/messages?after_seq={after}&limit=500",
                    device.id
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            if item["type"] == "message" && item["from"] == from {
                out.push(item.clone());
            }
        }
        after = page["next_after_seq"].as_u64().unwrap();
        if page["more"] != true {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_delivers_exactly_once_across_disconnects_and_restarts() {
    check_tools();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Some(spawn_server(dir.path(), port).await);
    let base = server.as_ref().unwrap().base.clone();

    let http = reqwest::Client::new();
    let (status, body) = call(
        &http,
        &base,
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(json!({"name": "js client"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let tenant = Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: base.clone(),
        ws_base: server.as_ref().unwrap().ws_base.clone(),
        http,
    };
    let a = tenant.device().await;
    let b = tenant.device().await;
    let config = json!({
        "base": base,
        "admin": ADMIN,
        "a": {"id": a.id, "address": a.address, "token": tenant.token(&a).await},
        "b": {"id": b.id, "address": b.address, "token": tenant.token(&b).await},
    });

    let mut child = Command::new("node")
        .arg(repo().join("tests/browser/client.mjs"))
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("could not start node");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // The tokens go over stdin, not argv.
    stdin
        .write_all(format!("{config}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();

    let mut summary = Value::Null;
    let mut ok = false;
    tokio::time::timeout(SCENARIO_WAIT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            eprintln!("[client.mjs] {line}");
            let answer = match line.as_str() {
                "STOP TERM" | "STOP KILL" => {
                    let mut s = server.take().expect("a server is running");
                    let pid = s.child.id().expect("the server runs").to_string();
                    let signal = if line == "STOP TERM" {
                        "-TERM"
                    } else {
                        "-KILL"
                    };
                    let sent = std::process::Command::new("kill")
                        .args([signal, &pid])
                        .status()
                        .unwrap();
                    assert!(sent.success(), "kill {signal} {pid}");
                    let exit = s.child.wait().await.unwrap();
                    if signal == "-TERM" {
                        assert_eq!(exit.code(), Some(0), "drained exit: {exit:?}");
                    }
                    "STOPPED"
                }
                "START" => {
                    assert!(server.is_none(), "START while a server runs");
                    server = Some(spawn_server(dir.path(), port).await);
                    "STARTED"
                }
                "OK" => {
                    ok = true;
                    continue;
                }
                other => {
                    if let Some(s) = other.strip_prefix("SUMMARY ") {
                        summary = serde_json::from_str(s).unwrap();
                    }
                    continue;
                }
            };
            stdin
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
        }
    })
    .await
    .expect("the browser scenario did not finish in time");
    let status = child.wait().await.unwrap();
    assert!(
        status.success() && ok,
        "the browser scenario failed: {status}"
    );
    assert!(
        server.is_some(),
        "the scenario ended with the server stopped"
    );

    // The server's side: each page's messages are in the peer's inbox exactly once, in
    // the order they were sent.
    for (sender, recipient, name) in [(&a, &b, "A"), (&b, &a, "B")] {
        let sent = summary["sent"][name]
            .as_u64()
            .expect("the summary counts sends");
        let got = messages_from(&tenant, recipient, &sender.address).await;
        let ns: Vec<u64> = got
            .iter()
            .map(|m| m["body"]["n"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (0..sent).collect();
        assert_eq!(ns, want, "{name}'s messages in the peer's inbox");
    }
    eprintln!(
        "js client scenario passed in {:.1} s: {summary}",
        started.elapsed().as_secs_f64()
    );
}
