//! WebSocket errors, limits and close codes: upgrade auth, token expiry, invalid frames,
//! binary frames, frame size, rate limits.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::auth::{DeviceClaims, TokenKeys};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::common::{TestServer, Ws, WAIT};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Tries to upgrade at `url`; returns the HTTP status and JSON body of the refusal.
/// Panics if the upgrade succeeds.
async fn refused_upgrade(url: &str) -> (u16, Value) {
    let res = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timeout");
    match res {
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade at {url} was accepted"),
    }
}

/// Asserts the next frame is `error` with `code` and, when given, request id `id`
/// (when `id` is None the frame must carry no id).
async fn expect_error(ws: &mut Ws, code: &str, id: Option<&str>, what: &str) -> Value {
    let v = ws.recv().await;
    assert_eq!(v["type"], "error", "{what}: {v}");
    assert_eq!(v["code"], code, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    match id {
        Some(id) => assert_eq!(v["id"], id, "{what}: {v}"),
        None => assert!(v.get("id").is_none() || v["id"].is_null(), "{what}: {v}"),
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_a_valid_token_is_401() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let url = |q: &str| format!("{}/v1/ws{q}", server.ws_base);

    let now_s = (now_ms() / 1000) as u64;
    let forged = TokenKeys::new("not-the-server-secret")
        .issue(&DeviceClaims {
            sub: d.id.clone(),
            tid: t.id.clone(),
            exp: now_s + 3600,
            iat: now_s,
        })
        .unwrap();
    let real = t.token(&d).await;
    // The real token with its signature altered.
    let tampered = {
        let (head, sig) = real.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    for (what, q) in [
        ("no token", String::new()),
        ("empty token", "?token=".to_owned()),
        ("garbage token", "?token=garbage".to_owned()),
        (
            "token signed with another secret",
            format!("?token={forged}"),
        ),
        ("tampered signature", format!("?token={tampered}")),
        (
            "API key instead of a device token",
            format!("?token={}", t.key),
        ),
    ] {
        let (status, body) = refused_upgrade(&url(&q)).await;
        assert_eq!(status, 401, "{what}: {body}");
        if !body.is_null() {
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        }
    }
    // Control: the real token upgrades.
    let ws = Ws::connect(&server.ws_base, &real).await;
    assert_eq!(ws.ready["device_id"], d.id.as_str());

    // A token of a deleted device no longer upgrades.
    let (status, _) = t
        .call("DELETE", &format!("/v1/devices/{}", d.id), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = refused_upgrade(&url(&format!("?token={real}"))).await;
    assert_eq!(status, 401, "deleted device: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_with_4401_and_is_refused_afterwards() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let (token, expires_at) = t.token_with_ttl(&d, 1).await;
    assert!(
        expires_at > now_ms() && expires_at <= now_ms() + 1_500,
        "expires_at {expires_at} is not ~1 s ahead"
    );

    let mut ws = Ws::connect(&server.ws_base, &token).await;
    ws.ping("alive").await;
    let code = ws.expect_close().await;
    let closed_at = now_ms();
    assert_eq!(code, 4401);
    assert!(
        closed_at >= expires_at - 100,
        "closed {} ms before the token expired",
        expires_at - closed_at
    );
    assert!(
        closed_at <= expires_at + 2_000,
        "closed {} ms after the token expired",
        closed_at - expires_at
    );
    assert!(
        t.wait_connected(&d, false, Duration::from_secs(2)).await,
        "device still connected after 4401"
    );

    // Once the expiry second has fully passed, the token is refused at upgrade.
    let wait = expires_at + 1_100 - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let (status, body) = refused_upgrade(&format!("{}/v1/ws?token={token}", server.ws_base)).await;
    assert_eq!(status, 401, "{body}");
}

/// An expired token gets HTTP 401 at upgrade from the moment the live socket is closed
/// with 4401. (Regression: the upgrade check used to accept `now == exp`, so for up to
/// a second after the 4401 a reconnect was upgraded, got `ready`, then 4401 again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_right_after_4401_is_refused() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let (token, _) = t.token_with_ttl(&d, 1).await;
    let mut ws = Ws::connect(&server.ws_base, &token).await;
    assert_eq!(ws.expect_close().await, 4401);
    let (status, body) = refused_upgrade(&format!("{}/v1/ws?token={token}", server.ws_base)).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_an_error_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;

    for (what, text) in [
        ("not JSON", "{not json"),
        ("empty frame", ""),
        ("JSON array", "[1,2,3]"),
        ("JSON string", "\"send\""),
        ("truncated object", r#"{"type":"ping","id":"#),
    ] {
        ws.send_text(text).await;
        expect_error(&mut ws, "bad_request", None, what).await;
    }
    // Invalid JSON types with a readable id: the id is salvaged.
    ws.send_text(r#"{"type":"send","id":"j1","to":5,"body":{}}"#)
        .await;
    expect_error(&mut ws, "bad_request", Some("j1"), "`to` a number").await;
    ws.send_text(r#"{"type":"sync","id":"j2","after_seq":-1}"#)
        .await;
    expect_error(&mut ws, "bad_request", Some("j2"), "negative after_seq").await;

    ws.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "p1"}));
    assert!(t.is_connected(&d).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_answer_bad_request_with_the_id() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut ws = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let to = b.address.as_str();

    let cases: Vec<(&str, Value)> = vec![
        (
            "send without body",
            json!({"type": "send", "id": "x1", "to": to}),
        ),
        ("unknown type", json!({"type": "nope", "id": "x1"})),
        ("missing type", json!({"id": "x1"})),
        (
            "unknown priority",
            json!({"type": "send", "id": "x1", "to": to, "body": {}, "priority": "urgent"}),
        ),
        (
            "to not E.164",
            json!({"type": "send", "id": "x1", "to": "not-a-number", "body": {}}),
        ),
        (
            "to without plus",
            json!({"type": "send", "id": "x1", "to": "15550001", "body": {}}),
        ),
        (
            "both to and group",
            json!({"type": "send", "id": "x1", "to": to, "group": "g_x", "body": {}}),
        ),
        (
            "neither to nor group",
            json!({"type": "send", "id": "x1", "body": {}}),
        ),
        (
            "body not an object",
            json!({"type": "send", "id": "x1", "to": to, "body": "hi"}),
        ),
        (
            "body an array",
            json!({"type": "send", "id": "x1", "to": to, "body": [1]}),
        ),
        (
            "sync limit 0",
            json!({"type": "sync", "id": "x1", "after_seq": 0, "limit": 0}),
        ),
        (
            "sync limit over the cap",
            json!({"type": "sync", "id": "x1", "after_seq": 0, "limit": 100_000}),
        ),
        (
            "receipt without ids",
            json!({"type": "receipt", "id": "x1", "message_ids": [], "status": "read"}),
        ),
        (
            "receipt bad status",
            json!({"type": "receipt", "id": "x1", "message_ids": ["m"], "status": "seen"}),
        ),
        (
            "typing bad state",
            json!({"type": "typing", "id": "x1", "to": to, "state": "dancing"}),
        ),
    ];
    for (i, (what, mut frame)) in cases.into_iter().enumerate() {
        let id = format!("x{i}");
        frame["id"] = json!(id);
        ws.send(frame).await;
        expect_error(&mut ws, "bad_request", Some(&id), what).await;
    }

    // An id over 64 characters is itself invalid.
    let long = "i".repeat(65);
    ws.send(json!({"type": "ping", "id": long})).await;
    expect_error(&mut ws, "bad_request", None, "65-char id").await;
    // 64 characters is fine.
    let max = "i".repeat(64);
    ws.send(json!({"type": "ping", "id": max})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": max}));

    // Unknown address: not_found with the id; nothing is stored.
    ws.send(json!({"type": "send", "id": "u1", "to": "+19998887777", "body": {}}))
        .await;
    expect_error(&mut ws, "not_found", Some("u1"), "unknown address").await;
    let page = ws.sync_page("s", 0, 10).await;
    assert_eq!(
        page["items"],
        json!([]),
        "a refused send was stored: {page}"
    );

    // An address that exists only in another tenant is not found either.
    let other = server.tenant().await;
    let foreign = other.device().await;
    let mut wf = other.connect(&foreign).await;
    ws.send(json!({"type": "send", "id": "u2", "to": foreign.address, "body": {}}))
        .await;
    expect_error(&mut ws, "not_found", Some("u2"), "other tenant's address").await;
    assert!(wf.try_recv(Duration::from_millis(300)).await.is_none());

    // Nothing of this reached B, and the connection still works.
    assert!(wb.try_recv(Duration::from_millis(300)).await.is_none());
    ws.ping("still-open").await;
}

/// An over-long id is invalid, so it is never echoed, whether or not the rest of the
/// frame decodes. (Regression: `ClientFrame::decode` used to copy the raw id into the
/// error before checking its length.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_id_is_not_echoed() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    let long = "i".repeat(65);
    // Not JSON-decodable: the id is dropped (consistent with the rule).
    ws.send_text(format!(r#"{{"type":"send","id":"{long}","to":5}}"#))
        .await;
    expect_error(&mut ws, "bad_request", None, "undecodable frame, long id").await;
    // Decodable frame with the same invalid id: should be dropped too.
    ws.send(json!({"type": "ping", "id": long})).await;
    expect_error(&mut ws, "bad_request", None, "ping with a long id").await;
}

/// An error answering a `typing` frame echoes its request id. (Regression: the id of a
/// typing frame used to be dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_error_echoes_the_id() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    ws.send(json!({"type": "typing", "id": "t1", "to": "+19998887777", "state": "composing"}))
        .await;
    expect_error(
        &mut ws,
        "not_found",
        Some("t1"),
        "typing to an unknown address",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_to_an_unknown_address_is_not_found() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    ws.send(json!({"type": "typing", "to": "+19998887777", "state": "composing"}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "not_found", "{v}");
    ws.ping("open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_is_a_bad_request_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    ws.stream
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_request", None, "binary frame").await;
    // Even a binary frame holding valid JSON is refused.
    ws.stream
        .send(Message::Binary(
            br#"{"type":"ping","id":"b"}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_request", None, "binary JSON").await;
    ws.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "p"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_limit_closes_with_1009() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 1024).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut ws = t.connect(&a).await;

    // Just under the limit is accepted.
    let mut frame = json!({"type": "send", "id": "ok", "to": b.address, "body": {"pad": ""}});
    let pad = 1000 - frame.to_string().len();
    frame["body"]["pad"] = json!("p".repeat(pad));
    assert_eq!(frame.to_string().len(), 1000);
    ws.send(frame).await;
    let ack = ws.answer("ok").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // 2,000 bytes: closed with 1009.
    let mut frame = json!({"type": "send", "id": "big", "to": b.address, "body": {"pad": ""}});
    let pad = 2000 - frame.to_string().len();
    frame["body"]["pad"] = json!("p".repeat(pad));
    assert_eq!(frame.to_string().len(), 2000);
    ws.send(frame).await;
    assert_eq!(ws.expect_close().await, 1009);
    assert!(t.wait_connected(&a, false, Duration::from_secs(2)).await);

    // Nothing of the big frame was stored.
    let ws2 = t.connect(&a).await;
    assert_eq!(ws2.ready["last_seq"], 1, "{}", ws2.ready);
}

/// A fragmented message over `max_frame_bytes` (each fragment under it) closes with 1009
/// too. (Regression: actix-ws reports it as an I/O error, which used to close with 1002.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_over_the_limit_closes_with_1009() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 1024).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    // Three 600-byte fragments: each under the limit, 1,800 bytes together.
    let empty = r#"{"type":"ping","id":"f","pad":""}"#.len();
    let text = format!(
        r#"{{"type":"ping","id":"f","pad":"{}"}}"#,
        "p".repeat(1800 - empty)
    );
    assert_eq!(text.len(), 1800);
    let bytes = text.into_bytes();
    let parts: Vec<Vec<u8>> = bytes.chunks(600).map(<[u8]>::to_vec).collect();
    ws.stream
        .send(Message::Frame(Frame::message(
            parts[0].clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
    ws.stream
        .send(Message::Frame(Frame::message(
            parts[1].clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .unwrap();
    ws.stream
        .send(Message::Frame(Frame::message(
            parts[2].clone(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
    assert_eq!(ws.expect_close().await, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_under_the_limit_is_accepted() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 1024).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    let text = r#"{"type":"ping","id":"frag"}"#.as_bytes();
    let (head, tail) = text.split_at(10);
    ws.stream
        .send(Message::Frame(Frame::message(
            head.to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
    ws.stream
        .send(Message::Frame(Frame::message(
            tail.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "frag"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_over_websocket() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 3).await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;

    let mut first = Value::Null;
    for i in 0..3 {
        let id = format!("r{i}");
        let ack = wa.send_to(&id, &b.address, json!({ "i": i })).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        if i == 0 {
            first = ack;
        }
    }
    let started = Instant::now();
    let err = wa.send_to("r3", &b.address, json!({"i": 3})).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "rate_limited", "{err}");
    let retry = err["retry_after_ms"].as_u64().expect("retry_after_ms");
    // 3 per minute, spent at once: the next send may go when the first is a minute old.
    assert!(retry > 0 && retry <= 60_000, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The refused id is not remembered: a resend is refused again, not acked.
    let err = wa.send_to("r3", &b.address, json!({"i": 3})).await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    // A resend of an acked id still answers its ack (dedup precedes the budget).
    let again = wa.send_to("r0", &b.address, json!({"i": 0})).await;
    assert_eq!(again, first);

    // Another tier has its own budget.
    wa.send(json!({"type": "send", "id": "c1", "to": b.address, "body": {"c": 1}, "priority": "critical"}))
        .await;
    let ack = wa.answer("c1").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // B got exactly the 3 normal messages and the critical one.
    let mut got = 0;
    while let Some(v) = wb.try_recv(Duration::from_millis(500)).await {
        assert_eq!(v["type"], "message", "{v}");
        got += 1;
    }
    assert_eq!(got, 4);
    // The connection is still usable.
    wa.ping("after").await;
}

/// A text frame that is not UTF-8 closes with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    let not_utf8 = vec![b'{', 0xFF, 0xFE, b'}'];
    ws.stream
        .send(Message::Frame(Frame::message(
            not_utf8,
            OpCode::Data(Data::Text),
            true,
        )))
        .await
        .unwrap();
    assert_eq!(ws.expect_close().await, 1007);
}

/// A frame whose header declares more than `max_frame_bytes` is refused with 1009 at
/// once: the server does not wait for (or buffer) the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_declared_length_closes_before_the_payload() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|c| c.max_frame_bytes = 1024).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    // A masked text frame header declaring 1 GiB, and no payload.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.stream.get_mut() else {
        panic!("expected a plain TCP stream");
    };
    tcp.write_all(&header).await.unwrap();
    tcp.flush().await.unwrap();
    let started = Instant::now();
    assert_eq!(ws.expect_close().await, 1009);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
}
