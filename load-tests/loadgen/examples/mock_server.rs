//! A minimal stand-in for the Switchboard server, for checking loadgen itself.
//!
//! Implements just what loadgen uses (`POST /admin/tenants`, `POST /v1/devices`,
//! `POST /v1/devices/{id}/tokens`, `GET /v1/ws`) with no storage, no auth checks and no
//! rate limits: every `send` is acked at once and pushed to the recipient's connection.
//! It shows the generator's own ceiling, not the server's.
//!
//! `cargo run --release -p loadgen --example mock_server -- 127.0.0.1:3999`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Shared state: device addresses and the outbound queue of each connected address.
#[derive(Default)]
struct State {
    next_id: AtomicU64,
    devices: Mutex<HashMap<String, String>>,
    online: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
}

#[derive(Deserialize)]
struct SendFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<&'a str>,
    to: Option<&'a str>,
    body: Option<&'a RawValue>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3999".into());
    let listener = TcpListener::bind(&bind).await?;
    eprintln!("mock server on {}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(sock, state).await {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes or upgrades.
async fn serve(mut sock: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut headers = HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));

        if method == "GET" && path.starts_with("/v1/ws?token=") {
            let device_id = &path["/v1/ws?token=".len()..];
            let address = state.devices.lock().expect("lock").get(device_id).cloned();
            let (Some(address), Some(key)) = (address, headers.get("sec-websocket-key")) else {
                sock.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                continue;
            };
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            sock.write_all(resp.as_bytes()).await?;
            let ws = WebSocketStream::from_raw_socket(sock, Role::Server, None).await;
            return websocket(ws, device_id.to_owned(), address, state).await;
        }

        let (status, answer) = if method == "POST" && path == "/admin/tenants" {
            (
                "201 Created",
                r#"{"tenant_id":"t1","api_key":"k1"}"#.to_owned(),
            )
        } else if method == "POST" && path == "/v1/devices" {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let address = v["address"].as_str().unwrap_or_default().to_owned();
            let id = format!("d{}", state.next_id.fetch_add(1, Ordering::Relaxed));
            state
                .devices
                .lock()
                .expect("lock")
                .insert(id.clone(), address.clone());
            (
                "201 Created",
                serde_json::json!({"device_id": id, "address": address, "name": v["name"]})
                    .to_string(),
            )
        } else if method == "POST" && path.starts_with("/v1/devices/") && path.ends_with("/tokens")
        {
            let id = &path["/v1/devices/".len()..path.len() - "/tokens".len()];
            (
                "201 Created",
                serde_json::json!({"token": id, "expires_at": 0}).to_string(),
            )
        } else {
            (
                "404 Not Found",
                r#"{"error":{"code":"not_found","message":"no"}}"#.to_owned(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        sock.write_all(resp.as_bytes()).await?;
    }
}

/// Serves one device connection: acks sends and forwards them to the recipient.
async fn websocket(
    ws: WebSocketStream<TcpStream>,
    device_id: String,
    address: String,
    state: Arc<State>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let ready = serde_json::json!({"type":"ready","device_id":device_id,"tenant_id":"t1",
        "address":address,"last_seq":0,"heartbeat_ms":30000});
    tx.send(Message::text(ready.to_string()))?;
    state
        .online
        .lock()
        .expect("lock")
        .insert(address.clone(), tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut seq = 0u64;
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        let Ok(f) = serde_json::from_str::<SendFrame<'_>>(text.as_str()) else {
            continue;
        };
        if f.kind != "send" {
            continue;
        }
        seq += 1;
        let id = f.id.unwrap_or("");
        let ack = format!(
            r#"{{"type":"ack","id":"{id}","message_id":"{device_id}-{seq}","seq":{seq},"ts":0}}"#
        );
        let _ = tx.send(Message::text(ack));
        let to = f.to.unwrap_or("");
        let body = f.body.map_or("{}", |b| b.get());
        let push = format!(
            r#"{{"type":"message","message_id":"{device_id}-{seq}","seq":1,"ts":0,"from":"{address}","to":"{to}","body":{body}}}"#
        );
        let target = state.online.lock().expect("lock").get(to).cloned();
        if let Some(target) = target {
            let _ = target.send(Message::text(push));
        }
    }
    state.online.lock().expect("lock").remove(&address);
    drop(tx);
    writer.abort();
    Ok(())
}
