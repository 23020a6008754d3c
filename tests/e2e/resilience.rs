//! Resilience: a slow consumer is cut off (4408) without slowing anyone else, a device
//! session panic restarts only that session (1012) and loses nothing, heartbeats drop
//! silent clients, and a drain closes clients with 1012.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{on_mongodb, Device, Tenant, TestServer, Ws, WAIT};

/// Reads `ws` until a close frame (skipping everything else); returns its code, or
/// None if the stream ended or failed without one, or nothing came within `within`.
async fn close_code_within(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.stream.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Close(Some(frame)) => return Some(u16::from(frame.code)),
            Message::Close(None) => return Some(u16::from(CloseCode::Status)),
            _ => continue,
        }
    }
}

/// Keeps `dev`'s session busy for a few hundred ms, so that what is sent to it next
/// queues in its mailbox: concurrent REST group sends from `dev` to a group of `dev` and
/// 1,023 unknown addresses (the session resolves every member while handling each).
/// Returns the group id and the task running the sends (their answers do not matter).
async fn keep_session_busy(t: &Tenant, dev: &Device) -> (String, tokio::task::JoinHandle<()>) {
    let mut members = vec![dev.address.clone()];
    members.extend((0..1023).map(|i| format!("+1999{i:07}")));
    let (status, g) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "busy", "members": members})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/devices/{}/messages", dev.id);
    let mut sends = Vec::new();
    for _ in 0..10 {
        let (t, path, gid) = (t.clone(), path.clone(), gid.clone());
        sends.push(tokio::spawn(async move {
            t.call(
                "POST",
                &path,
                Some(json!({"group": gid, "body": {"busy": true}})),
            )
            .await;
        }));
    }
    // Let the first of them reach the session.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let task = tokio::spawn(async move {
        for s in sends {
            let _ = s.await;
        }
    });
    (gid, task)
}

/// Collects the `ack`/`error` answering each of `ids` (any order, other frames
/// skipped); resends every send refused as `unavailable` (same id, frame from
/// `frame(i)`) until all are acked. Returns the acks by id and the number of refusals.
async fn answers_resending_refused(
    ws: &mut Ws,
    ids: &[String],
    frame: impl Fn(usize) -> Value,
) -> (HashMap<String, Value>, usize) {
    let mut acked = HashMap::new();
    let mut refused = 0;
    let mut waiting: HashSet<usize> = (0..ids.len()).collect();
    for _round in 0..50 {
        let mut retry = Vec::new();
        while !waiting.is_empty() {
            let v = ws.recv().await;
            if v["type"] != "ack" && v["type"] != "error" {
                continue;
            }
            let Some(i) = ids.iter().position(|id| v["id"] == id.as_str()) else {
                continue;
            };
            assert!(waiting.remove(&i), "second answer for {}: {v}", ids[i]);
            if v["type"] == "ack" {
                acked.insert(ids[i].clone(), v);
            } else {
                assert_eq!(v["code"], "unavailable", "{v}");
                refused += 1;
                retry.push(i);
            }
        }
        if retry.is_empty() {
            return (acked, refused);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in retry {
            ws.send(frame(i)).await;
            waiting.insert(i);
        }
    }
    panic!("sends still refused after 50 rounds");
}

/// A's sends to S: `n` ~2 KiB messages, at most `window` unacknowledged at a time (all
/// at once when `window >= n`). A reads its acks in a separate task. Returns the
/// message ids by send index, or why A did not get all its acks.
async fn flood(wa: Ws, to: String, n: usize, window: usize) -> Result<Vec<String>, String> {
    let (mut tx, mut rx) = wa.stream.split();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let reader = tokio::spawn(async move {
        let mut acks: Vec<Option<String>> = vec![None; n];
        let mut got = 0;
        while got < n {
            let msg = match tokio::time::timeout(WAIT, rx.next()).await {
                Err(_) => return Err(format!("no ack for {WAIT:?} after {got} acks")),
                Ok(None) => return Err(format!("stream ended after {got} acks")),
                Ok(Some(Err(e))) => return Err(format!("socket error after {got} acks: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] != "ack" {
                        return Err(format!("unexpected frame after {got} acks: {v}"));
                    }
                    let i: usize = v["id"].as_str().unwrap()[1..].parse().unwrap();
                    assert!(acks[i].is_none(), "duplicate ack {v}");
                    acks[i] = Some(v["message_id"].as_str().unwrap().to_owned());
                    got += 1;
                    let _ = acked_tx.send(());
                }
                Message::Close(frame) => {
                    return Err(format!("closed after {got} acks: {frame:?}"));
                }
                _ => {}
            }
        }
        Ok(acks.into_iter().map(Option::unwrap).collect::<Vec<_>>())
    });
    let pad = "x".repeat(2048);
    let mut in_flight = 0;
    for i in 0..n {
        while in_flight >= window {
            if acked_rx.recv().await.is_none() {
                break;
            }
            in_flight -= 1;
        }
        let frame = json!({"type": "send", "id": format!("a{i}"), "to": to,
                           "body": {"i": i, "pad": pad}});
        if tx.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
        in_flight += 1;
    }
    let result = reader.await.unwrap();
    drop(tx);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_without_slowing_anyone_else() {
    // nx (the MongoDB-protocol test server) is far slower than SQLite: fewer there.
    let n: usize = if on_mongodb() { 600 } else { 3000 };
    let server = TestServer::start_with(|c| {
        c.outbound_buffer = 64;
        c.rate_limit_normal = 1_000_000;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let s = t.device().await;
    let c = t.device().await;
    let d = t.device().await;
    // S connects and then does not read.
    let ws_s = t.connect(&s).await;
    let wa = t.connect(&a).await;
    let mut wc = t.connect(&c).await;
    let mut wd = t.connect(&d).await;

    // A sends n ~2 KiB messages to S, pipelined 32 deep (within its own buffer).
    let flood_started = Instant::now();
    let acks = tokio::spawn(flood(wa, s.address.clone(), n, 32));

    // Meanwhile C talks to D one message at a time, and S's presence is watched; once
    // S is cut off, it starts reading (it must find a 4408 close after its backlog).
    let mut ws_s = Some(ws_s);
    let mut s_close = None;
    let mut round_trips = Vec::new();
    let mut during_flood = 0;
    let mut s_cut_after = None;
    let mut k = 0;
    while !acks.is_finished() || round_trips.len() < 20 {
        let id = format!("c{k}");
        let t0 = Instant::now();
        let ack = wc.send_to(&id, &d.address, json!({ "k": k })).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let m = wd.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["message_id"], ack["message_id"], "D got {m}");
        round_trips.push(t0.elapsed());
        if !acks.is_finished() {
            during_flood += 1;
        }
        if s_cut_after.is_none() && !t.is_connected(&s).await {
            s_cut_after = Some(flood_started.elapsed());
            let mut ws = ws_s.take().unwrap();
            s_close = Some(tokio::spawn(async move { ws.expect_close().await }));
        }
        k += 1;
        assert!(k < 100_000, "runaway loop");
    }
    let sent = tokio::time::timeout(Duration::from_secs(120), acks)
        .await
        .expect("A's acks did not all arrive")
        .unwrap()
        .unwrap_or_else(|e| panic!("A: {e}"));
    let flood_took = flood_started.elapsed();
    let slowest = round_trips.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slow consumer: {n} sends acked in {flood_took:?}; C→D {} round trips ({during_flood} during the flood), slowest {slowest:?}; S cut after {s_cut_after:?}",
        round_trips.len()
    );
    assert!(during_flood >= 3, "C→D did not overlap the flood");
    assert!(
        slowest < Duration::from_secs(2),
        "a C→D round trip took {slowest:?} while S was stalled"
    );

    // S was cut off while the flood ran, and found a 4408 close after its backlog.
    assert!(s_cut_after.is_some(), "the stalled reader was not cut off");
    assert!(!t.is_connected(&s).await);
    assert_eq!(s_close.unwrap().await.unwrap(), 4408);

    // Nothing was lost: S's inbox holds all n, in A's send order.
    let mut ws_s = t.connect(&s).await;
    assert_eq!(ws_s.ready["last_seq"], n as u64, "{}", ws_s.ready);
    let items = ws_s.sync_all(0, 1000).await;
    assert_eq!(items.len(), n);
    for (i, m) in items.iter().enumerate() {
        assert_eq!(m["message_id"], sent[i].as_str(), "seq {}", i + 1);
        assert_eq!(m["body"]["i"], i, "seq {}", i + 1);
    }
    // The others are still connected (A's socket was closed by `flood`).
    for dev in [&c, &d] {
        assert!(t.is_connected(dev).await);
    }
}

/// 4408 is for a client "too slow to read (its buffer filled)". A client that reads
/// continuously is cut off anyway when more than `outbound_buffer` frames for it become
/// ready at once: one group commit completes many rows, the session then casts one
/// `Committed` (or `SendDone`) per row and `push_all`/`respond` (actors/src/device/mod.rs)
/// `try_send` them back to back into the connection's bounded channel, faster than the
/// writer task (src/ws/connection.rs `write_frames`, one awaited `session.text` per
/// frame) can drain it; the first full `try_send` closes with 4408 and `writer.abort()`
/// drops what was queued. With `outbound_buffer = 64`, 200 pipelined sends cut off both
/// the sender (acks) and the reading recipient (messages) after ~64 frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_does_not_cut_off_a_reading_client() {
    const N: usize = 200;
    let server = TestServer::start_with(|c| {
        c.outbound_buffer = 64;
        c.rate_limit_normal = 1_000_000;
    })
    .await;
    let t = server.tenant().await;
    let a = t.device().await;
    let d = t.device().await;
    let wa = t.connect(&a).await;
    let wd = t.connect(&d).await;
    // D reads everything, continuously.
    let (_d_tx, mut d_rx) = wd.stream.split();
    let d_reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match tokio::time::timeout(WAIT, d_rx.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => got += 1,
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(format!("D closed after {got} messages: {f:?}"))
                }
                Ok(Some(Ok(_))) => {}
                other => return Err(format!("D after {got} messages: {other:?}")),
            }
        }
        Ok(got)
    });
    // A pipelines N sends (no window) and reads its acks continuously.
    let a_result = flood(wa, d.address.clone(), N, N).await;
    let d_result = d_reader.await.unwrap();
    assert!(a_result.is_ok(), "A: {}", a_result.unwrap_err());
    assert_eq!(d_result, Ok(N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_panic_restarts_only_that_session_and_loses_nothing() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let c = t.device().await;
    let mut a1 = t.connect(&a).await;
    let mut a2 = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let mut wc = t.connect(&c).await;

    // Some history first: B→A twice, A→B once. A's inbox: seq 1..3.
    for i in 0..2 {
        let ack = wb
            .send_to(&format!("pre{i}"), &a.address, json!({ "pre": i }))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let pre_ack = a1.send_to("a-pre", &b.address, json!({"x": 1})).await;
    assert_eq!(pre_ack["type"], "ack", "{pre_ack}");
    let last_seq = pre_ack["seq"].as_u64().unwrap();
    assert_eq!(last_seq, 3);

    // Panic A's session while B keeps sending to A. A's session is kept busy first, so
    // the panic and some of B's messages queue behind that work (a real restart window).
    const W: usize = 10;
    let panic_path = format!("/admin/test/devices/{}/panic", a.id);
    let (busy_group, busy) = keep_session_busy(&t, &a).await;
    let (status, body) = server
        .call("POST", &panic_path, Some(&server.admin_token), None)
        .await;
    assert_eq!(status, 202, "{body}");
    // The panic is queued in A's session: these land in the restart window.
    for i in 0..W {
        wb.send(
            json!({"type": "send", "id": format!("w{i}"), "to": a.address,
                       "body": {"w": i}}),
        )
        .await;
    }
    // B collects its answers, resending (same id) what was refused as unavailable.
    let ids: Vec<String> = (0..W).map(|i| format!("w{i}")).collect();
    let (acked, unavailable) = answers_resending_refused(
        &mut wb,
        &ids,
        |i| json!({"type": "send", "id": ids[i], "to": a.address, "body": {"w": i}}),
    )
    .await;
    let window_ids: HashSet<String> = acked
        .values()
        .map(|v| v["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(window_ids.len(), W);
    eprintln!("panic window: {unavailable} sends answered unavailable and resent");
    busy.await.unwrap();

    // Both of A's connections are closed with 1012.
    assert_eq!(a1.expect_close().await, 1012);
    assert_eq!(a2.expect_close().await, 1012);

    // B is unaffected: its connection answers and it can still send to C.
    wb.ping("b-alive").await;
    let ack = wb.send_to("to-c", &c.address, json!({"c": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = wc.recv_type("message").await;
    assert_eq!(m["message_id"], ack["message_id"]);
    assert!(t.is_connected(&b).await);

    // A reconnects: its inbox continued where it was (no seq reused or skipped) and
    // holds every acked message B sent in the window, once. (A's own group sends from
    // the busy phase are in it too; they are set aside here.)
    let mut a1 = t.connect(&a).await;
    let all = a1.sync_all(0, 1000).await;
    assert_eq!(a1.ready["last_seq"], all.len() as u64, "{}", a1.ready);
    assert_eq!(
        all[2]["message_id"], pre_ack["message_id"],
        "history before the panic"
    );
    assert_eq!(all[0]["body"], json!({"pre": 0}));
    assert_eq!(all[1]["body"], json!({"pre": 1}));
    let after: Vec<&Value> = all[last_seq as usize..]
        .iter()
        .filter(|m| m["group"] != busy_group.as_str())
        .collect();
    let got: HashSet<String> = after
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after.len(), W, "{after:?}");
    assert_eq!(got, window_ids);
    let a_last = a1.ready["last_seq"].as_u64().unwrap();

    // The restarted session still knows A's earlier request ids.
    let again = a1.send_to("a-pre", &b.address, json!({"x": 1})).await;
    assert_eq!(again, pre_ack, "idempotency lost across the restart");

    // A sends and receives again.
    let ack = a1.send_to("a-post", &b.address, json!({"post": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], a_last + 1);
    let m = wb.recv_type("message").await;
    assert_eq!(m["message_id"], ack["message_id"]);
    let ack = wb.send_to("b-post", &a.address, json!({"post": 2})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = a1.recv_type("message").await;
    assert_eq!(m["message_id"], ack["message_id"]);
    assert_eq!(m["seq"], a_last + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_drops_a_silent_client() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let token = t.token(&d).await;

    // Completes the handshake, then is never polled: no reads, no pongs.
    let (raw, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/ws?token={token}", server.ws_base))
            .await
            .unwrap();
    let connected_at = Instant::now();
    assert!(
        t.wait_connected(&d, true, Duration::from_secs(2)).await,
        "the raw client never showed as connected"
    );
    assert!(
        t.wait_connected(&d, false, Duration::from_secs(2)).await,
        "a client that answers no ping is still connected after 2 s"
    );
    let dropped_after = connected_at.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(300),
        "dropped after {dropped_after:?}: before two heartbeat periods"
    );
    // The client finds the heartbeat close after its unread frames.
    let mut raw = Ws {
        stream: raw,
        ready: Value::Null,
    };
    let code = close_code_within(&mut raw, Duration::from_secs(5)).await;
    assert_eq!(code, Some(4000), "heartbeat close code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_reading_client() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let ws = t.connect(&d).await;

    // A client that keeps polling (tungstenite answers pings while polled) but sends
    // nothing of its own.
    let (mut tx, mut rx) = ws.stream.split();
    let (texts_tx, mut texts) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        let mut pings = 0u32;
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Text(t)) => {
                    let _ = texts_tx.send(serde_json::from_str(&t).unwrap());
                }
                Ok(Message::Close(frame)) => {
                    return format!("closed after {pings} pings: {frame:?}")
                }
                Ok(_) => {}
                Err(e) => return format!("socket error: {e}"),
            }
        }
        "stream ended".to_owned()
    });
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!reader.is_finished(), "{}", reader.await.unwrap());
        assert!(t.is_connected(&d).await, "dropped while reading");
    }
    // Still usable after 1.5 s.
    tx.send(Message::text(r#"{"type":"ping","id":"late"}"#))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, texts.recv())
        .await
        .expect("no pong")
        .unwrap();
    assert_eq!(pong, json!({"type": "pong", "id": "late"}));
    assert!(!reader.is_finished(), "{}", reader.await.unwrap());
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_are_sent_at_the_configured_period() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let mut ws = t.connect(&d).await;
    assert_eq!(ws.ready["heartbeat_ms"], 200);
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1_100) {
        match tokio::time::timeout(Duration::from_millis(100), ws.stream.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Err(e))) => panic!("socket error: {e}"),
            Ok(None) => panic!("stream ended"),
            _ => {}
        }
    }
    // ~5 in 1.1 s at 200 ms.
    assert!((3..=8).contains(&pings), "{pings} pings in 1.1 s");
    assert!(t.is_connected(&d).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_clients_with_1012() {
    let mut server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let ack = wa.send_to("pre", &b.address, json!({"x": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let ca = tokio::spawn(async move { close_code_within(&mut wa, Duration::from_secs(15)).await });
    let cb = tokio::spawn(async move { close_code_within(&mut wb, Duration::from_secs(15)).await });
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    assert_eq!(ca.await.unwrap(), Some(1012));
    assert_eq!(cb.await.unwrap(), Some(1012));

    // Nothing listens any more.
    let token_url = format!("{}/v1/ws?token=x", server.ws_base);
    let res = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(token_url))
        .await
        .expect("connect timeout");
    assert!(res.is_err(), "upgrade after drain");
}
