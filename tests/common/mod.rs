//! Shared helpers for the end-to-end tests: a real server on port 0 in this process
//! (or the real binary as a child process), and small HTTP / WebSocket clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::server::Running;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one frame or answer.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server started for one test, with its own data directory.
pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub ws_base: String,
    pub admin_token: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with test defaults.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts the configuration. The backends come from
    /// the environment (see [`test_backends`]): the embedded store by default.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            bind: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            test_hooks: true,
            workers: 2,
            ..Config::default()
        };
        test_backends(&mut config, &unique_name());
        tweak(&mut config);
        let running = switchboard::server::start(config).await.unwrap();
        let addr = running.addr;
        TestServer {
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            admin_token: running.admin_token.clone(),
            running: Some(running),
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// Creates a tenant through the admin API.
    pub async fn tenant(&self) -> Tenant {
        let (status, body) = self
            .call(
                "POST",
                "/admin/tenants",
                Some(&self.admin_token),
                Some(json!({"name": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        Tenant {
            id: body["tenant_id"].as_str().unwrap().to_owned(),
            key: body["api_key"].as_str().unwrap().to_owned(),
            base: self.base.clone(),
            ws_base: self.ws_base.clone(),
            http: self.http.clone(),
        }
    }

    /// One HTTP call; returns status and JSON body (Null when empty or not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.http, &self.base, method, path, bearer, body).await
    }

    /// One scrape of `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the server (drain) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// One HTTP call against `base`.
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("HTTP timeout")
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A name no other test uses (a database, a key prefix).
pub fn unique_name() -> String {
    format!("t{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The MongoDB URI of the test run (`./scripts/test` starts nx-27017 and sets it).
pub fn mongodb_uri() -> String {
    std::env::var("SWITCHBOARD_TEST_MONGODB_URI").unwrap_or_else(|_| {
        panic!("SWITCHBOARD_TEST_MONGODB_URI is not set: run ./scripts/test (it starts the servers), or point it at a MongoDB")
    })
}

/// The Redis URL of the test run (`./scripts/test` starts redis-server and sets it).
pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("SWITCHBOARD_TEST_REDIS_URL is not set: run ./scripts/test (it starts the servers), or point it at a Redis")
    })
}

/// Whether this run puts the suites on MongoDB (`SWITCHBOARD_TEST_BACKEND=mongodb`).
pub fn on_mongodb() -> bool {
    std::env::var("SWITCHBOARD_TEST_BACKEND").as_deref() == Ok("mongodb")
}

/// Whether this run puts the Redis cache layer under the suites
/// (`SWITCHBOARD_TEST_CACHE=redis`).
pub fn on_redis() -> bool {
    std::env::var("SWITCHBOARD_TEST_CACHE").as_deref() == Ok("redis")
}

/// Points `config` at the backends of this run: MongoDB (database `name`) and / or
/// Redis (key prefix `name`) when the environment asks for them.
pub fn test_backends(config: &mut Config, name: &str) {
    if on_mongodb() {
        config.mongodb_uri = Some(mongodb_uri());
        config.mongodb_database = Some(name.to_owned());
    }
    if on_redis() {
        config.redis_url = Some(redis_url());
        config.redis_prefix = name.to_owned();
    }
}

/// The same as environment variables for a child process.
pub fn test_backend_env(name: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if on_mongodb() {
        env.push(("MONGODB_URI".into(), mongodb_uri()));
        env.push(("SWITCHBOARD_MONGODB_DATABASE".into(), name.to_owned()));
    }
    if on_redis() {
        env.push(("REDIS_URL".into(), redis_url()));
        env.push(("SWITCHBOARD_REDIS_PREFIX".into(), name.to_owned()));
    }
    env
}

static NEXT_ADDRESS: AtomicU32 = AtomicU32::new(1);

/// A fresh E.164 address.
pub fn address() -> String {
    format!("+1555{:07}", NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed))
}

/// A tenant and its API key.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    pub key: String,
    pub base: String,
    pub ws_base: String,
    pub http: reqwest::Client,
}

/// A device of a tenant.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: String,
    pub address: String,
}

impl Tenant {
    /// An HTTP call with this tenant's API key.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.http, &self.base, method, path, Some(&self.key), body).await
    }

    /// Registers a device with a fresh address.
    pub async fn device(&self) -> Device {
        let address = address();
        let (status, body) = self
            .call(
                "POST",
                "/v1/devices",
                Some(json!({"address": address, "name": "test device"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        Device {
            id: body["device_id"].as_str().unwrap().to_owned(),
            address,
        }
    }

    /// A device token.
    pub async fn token(&self, device: &Device) -> String {
        let (status, body) = self
            .call("POST", &format!("/v1/devices/{}/tokens", device.id), None)
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Connects a WebSocket client for `device` and reads its `ready` frame.
    pub async fn connect(&self, device: &Device) -> Ws {
        let token = self.token(device).await;
        Ws::connect(&self.ws_base, &token).await
    }
}

/// A WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub ready: Value,
}

impl Ws {
    /// Connects with a token and waits for `ready`.
    pub async fn connect(ws_base: &str, token: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("{ws_base}/v1/ws?token={token}")),
        )
        .await
        .expect("connect timeout")
        .unwrap();
        let mut ws = Ws {
            stream,
            ready: Value::Null,
        };
        let ready = ws.recv().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        ws.ready = ready;
        ws
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream.send(Message::text(text.into())).await.unwrap();
    }

    /// The next JSON frame (pings and pongs skipped); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Waits up to `d` for a frame; None if none came.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(d, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code (skips other frames).
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT * 3, self.stream.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close frame: {e}"),
                None => panic!("stream ended without close frame"),
            }
        }
    }

    /// Sends a message and returns the ack (or error) frame answering it.
    pub async fn send_to(&mut self, id: &str, to: &str, body: Value) -> Value {
        self.send(json!({"type": "send", "id": id, "to": to, "body": body}))
            .await;
        self.answer(id).await
    }

    /// The next `ack` or `error` carrying request id `id`.
    pub async fn answer(&mut self, id: &str) -> Value {
        loop {
            let v = self.recv().await;
            if (v["type"] == "ack" || v["type"] == "error") && v["id"] == id {
                return v;
            }
        }
    }
}

// ---- WebSocket test helpers (ws / ws_errors / resilience) ----

impl Tenant {
    /// `GET /v1/devices/{id}` → its `connected` flag.
    pub async fn is_connected(&self, device: &Device) -> bool {
        let (status, body) = self
            .call("GET", &format!("/v1/devices/{}", device.id), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["connected"].as_bool().unwrap()
    }

    /// Polls `GET /v1/devices/{id}` until `connected == want`, up to `within`;
    /// returns whether it got there.
    pub async fn wait_connected(&self, device: &Device, want: bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_connected(device).await == want {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A device token with a lifetime; returns the token and its `expires_at` (ms).
    pub async fn token_with_ttl(&self, device: &Device, ttl_secs: u64) -> (String, i64) {
        let (status, body) = self
            .call(
                "POST",
                &format!("/v1/devices/{}/tokens", device.id),
                Some(json!({ "ttl_secs": ttl_secs })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["expires_at"].as_i64().unwrap(),
        )
    }
}

impl Ws {
    /// Sends `ping` with `id` and waits for its `pong` (other frames skipped).
    pub async fn ping(&mut self, id: &str) {
        self.send(json!({"type": "ping", "id": id})).await;
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["id"] == id {
                return;
            }
        }
    }

    /// One `sync` page: the `messages` frame answering request `id` (others skipped).
    pub async fn sync_page(&mut self, id: &str, after_seq: u64, limit: u32) -> Value {
        self.send(json!({"type": "sync", "id": id, "after_seq": after_seq, "limit": limit}))
            .await;
        loop {
            let v = self.recv().await;
            if v["id"] == id && (v["type"] == "messages" || v["type"] == "error") {
                assert_eq!(v["type"], "messages", "{v}");
                return v;
            }
        }
    }

    /// Pages with `sync` from `after_seq` until `more` is false; checks every page
    /// (seqs strictly increasing and gap-free, `next_after_seq` = last seq) and returns
    /// all items.
    pub async fn sync_all(&mut self, after_seq: u64, limit: u32) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = after_seq;
        for page_no in 0.. {
            let page = self
                .sync_page(&format!("sync-{page_no}"), after, limit)
                .await;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit as usize, "page over limit");
            for item in items {
                let seq = item["seq"].as_u64().unwrap();
                assert_eq!(seq, after + 1, "gap or disorder in sync: {item}");
                after = seq;
                out.push(item.clone());
            }
            assert_eq!(page["next_after_seq"].as_u64(), Some(after), "{page}");
            if page["more"] == false {
                break;
            }
            assert_eq!(page["more"], true, "{page}");
            assert!(!items.is_empty(), "more=true with an empty page");
        }
        out
    }
}

/// The server binary (`switchboard serve`) as a child process on port 0.
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub base: String,
    pub ws_base: String,
}

impl ChildServer {
    /// Starts the binary on `data_dir` with `admin_token` and extra environment, and
    /// waits for it to print its address. Its stderr goes to `stderr`, or nowhere.
    pub async fn spawn(
        data_dir: &std::path::Path,
        admin_token: &str,
        env: &[(&str, &str)],
        stderr: Option<std::fs::File>,
    ) -> ChildServer {
        use std::process::Stdio;
        use tokio::io::AsyncBufReadExt;

        // One database / key prefix per data directory, so a restart finds its data.
        let name = format!(
            "c{:x}",
            data_dir
                .to_string_lossy()
                .bytes()
                .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b))
                    .wrapping_mul(0x100000001b3))
        );
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        child
            .envs(test_backend_env(&name))
            .arg("serve")
            .env("SWITCHBOARD_BIND", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", data_dir)
            .env("SWITCHBOARD_CONFIG_DIR", data_dir.join("no-config"))
            .env("ADMIN_TOKEN", admin_token)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr.map_or_else(Stdio::null, Stdio::from))
            .kill_on_drop(true);
        let mut child = child.spawn().expect("spawn server binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
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
        ChildServer {
            child,
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
        }
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_port(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dependency server of a test's own (so the test may kill it): `redis-server` or
/// `nx-27017`, a child process stopped by PID when dropped.
pub struct OwnServer {
    child: Option<std::process::Child>,
    /// Its port.
    pub port: u16,
    program: String,
    args: Vec<String>,
}

impl OwnServer {
    /// A `redis-server` on a free port (no persistence).
    pub async fn redis() -> OwnServer {
        Self::redis_with(&[]).await
    }

    /// A `redis-server` on a free port with extra arguments (`--requirepass`, …).
    pub async fn redis_with(extra: &[&str]) -> OwnServer {
        let port = free_port();
        let mut args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self::run("redis-server".into(), args, port).await
    }

    /// An `nx-27017` (MongoDB wire protocol over SQLite) on a free port, its data in
    /// `db`. The binary is `SWITCHBOARD_TEST_NX` (set by `./scripts/test`).
    pub async fn nx(db: &std::path::Path) -> OwnServer {
        let program = std::env::var("SWITCHBOARD_TEST_NX").unwrap_or_else(|_| {
            panic!("SWITCHBOARD_TEST_NX is not set: run ./scripts/test (it installs nx-27017)")
        });
        let port = free_port();
        let args = vec![
            "--db".into(),
            db.to_string_lossy().into_owned(),
            "--host".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        Self::run(program, args, port).await
    }

    async fn run(program: String, args: Vec<String>, port: u16) -> OwnServer {
        let mut s = OwnServer {
            child: None,
            port,
            program,
            args,
        };
        s.start().await;
        s
    }

    /// Starts it (again) on the same port.
    pub async fn start(&mut self) {
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program));
        self.child = Some(child);
        wait_port(self.port).await;
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The URL of a `redis-server`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URI of an `nx-27017`.
    pub fn mongodb_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}
