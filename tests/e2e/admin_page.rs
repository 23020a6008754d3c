//! The `/admin` page in a real browser: headless Debian chromium driven by
//! `tests/browser/admin.mjs` (playwright-core). `./scripts/test` installs chromium and
//! playwright-core; when either is missing this test fails and says so.
//!
//! `SAVE_SCREENSHOT=1` makes the script rewrite `docs/admin.png`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::common::{Tenant, TestServer};

const BROWSER_WAIT: Duration = Duration::from_secs(90);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails with a clear message when node, chromium or playwright-core is missing
/// (the browser tests: this one and `js_client`).
pub fn check_tools() {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the browser test needs Node.js (`node`): install it, or run ./scripts/test"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Debian's chromium at {chromium}: \
         run ./scripts/test (it runs `apt-get install -y chromium`)"
    );
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "the browser test needs playwright-core in tests/browser/node_modules: \
         run ./scripts/test (it runs `npm ci` there with PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1)"
    );
}

/// A tenant with a display name (the page shows names).
async fn named_tenant(server: &TestServer, name: &str) -> Tenant {
    let (status, body) = server
        .call(
            "POST",
            "/admin/tenants",
            Some(&server.admin_token),
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    Tenant {
        id: body["tenant_id"].as_str().unwrap().to_owned(),
        key: body["api_key"].as_str().unwrap().to_owned(),
        base: server.base.clone(),
        ws_base: server.ws_base.clone(),
        http: server.http.clone(),
    }
}

#[tokio::test]
async fn admin_page_shows_the_live_tree_in_chromium() {
    check_tools();
    let server = TestServer::start().await;
    let acme = named_tenant(&server, "Acme Retail").await;
    let globex = named_tenant(&server, "Globex Logistics").await;

    // Acme: a few devices, two connected, one to connect while the page watches,
    // and some traffic so the counters move.
    let first = acme.device().await;
    let second = acme.device().await;
    let later = acme.device().await;
    for _ in 0..3 {
        acme.device().await;
    }
    let mut c1 = acme.connect(&first).await;
    let _c1b = acme.connect(&first).await;
    let _c2 = acme.connect(&second).await;
    for i in 0..5 {
        let ack = c1
            .send_to(&format!("m{i}"), &second.address, json!({"text": "hello"}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // The queue: the low lane paused with 25 jobs waiting in it (the page resumes it),
    // and a normal bulk that drains.
    let (s, body) = server
        .call(
            "POST",
            "/admin/queues/lanes/low/pause",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    for (lane, n) in [("low", 25), ("normal", 20)] {
        let messages: Vec<_> = (0..n)
            .map(|i| json!({"device": second.id, "to": first.address, "body": {"i": i}, "priority": lane}))
            .collect();
        let (s, body) = acme
            .call(
                "POST",
                "/v1/messages/bulk",
                Some(json!({ "messages": messages })),
            )
            .await;
        assert_eq!(s, 202, "{body}");
    }
    // Globex: one device online.
    let g = globex.device().await;
    let _g1 = globex.connect(&g).await;

    let mut child = Command::new("node")
        .arg(repo().join("tests/browser/admin.mjs"))
        .arg(&server.base)
        .arg(&server.admin_token)
        .arg(&acme.id)
        .arg(&later.id)
        .arg(&first.id)
        .arg(&second.id)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("could not start node");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();

    let ready = tokio::time::timeout(BROWSER_WAIT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            eprintln!("[admin.mjs] {line}");
            if line == "READY" {
                return true;
            }
        }
        false
    })
    .await
    .expect("the browser script did not get ready in time");
    if !ready {
        let status = child.wait().await.unwrap();
        panic!("the browser script failed before the live step: {status}");
    }

    // Connect the later device while the page is open; it must show up live.
    let mut c3 = acme.connect(&later).await;
    stdin.write_all(b"go\n").await.unwrap();
    stdin.flush().await.unwrap();

    let status = tokio::time::timeout(BROWSER_WAIT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            eprintln!("[admin.mjs] {line}");
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("the browser script did not finish in time");
    assert!(status.success(), "the browser script failed: {status}");
    // The page's Disconnect action (confirmed in the browser) kicked this client.
    assert_eq!(c3.expect_close().await, protocol::error::close::KICKED);
}
