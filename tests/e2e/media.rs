//! Media over the public API: upload (type from the bytes, size limit while
//! streaming), the processing job (progress, stats, cancel, retry), metadata, the file
//! and its thumbnail served to the tenant's devices only, and messages referencing
//! media by id. Runs on the embedded store, and on MongoDB + Redis when the run asks.

use std::io::Cursor;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bulk::{job, wait_jobs};
use crate::common::{Device, Tenant, TestServer, WAIT};

/// How long a media job may take here (a slow shared machine, MongoDB on nx-27017).
const JOB_WAIT: Duration = Duration::from_secs(30);

/// A `w` × `h` PNG with a gradient (so it is a real image, not a flat one).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A raw HTTP answer: status, headers, body bytes.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn send(req: reqwest::RequestBuilder) -> Raw {
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("HTTP timeout")
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.unwrap().to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

fn json_of(raw: &Raw) -> Value {
    serde_json::from_slice(&raw.body).unwrap_or(Value::Null)
}

/// `POST /v1/media` with `bearer`, the query, and a content type.
async fn upload(
    tenant: &Tenant,
    bearer: &str,
    query: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut req = tenant
        .http
        .post(format!("{}/v1/media?{query}", tenant.base))
        .bearer_auth(bearer)
        .body(bytes);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let raw = send(req).await;
    (raw.status, json_of(&raw))
}

async fn get(tenant: &Tenant, bearer: &str, path: &str) -> Raw {
    send(
        tenant
            .http
            .get(format!("{}{path}", tenant.base))
            .bearer_auth(bearer),
    )
    .await
}

/// Uploads with the API key for `device`; asserts the 202.
async fn upload_ok(tenant: &Tenant, device: &Device, name: &str, bytes: Vec<u8>) -> Value {
    let query = format!("device_id={}&name={name}", device.id);
    let (s, answer) = upload(tenant, &tenant.key, &query, None, bytes).await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(answer["state"], "processing", "{answer}");
    answer
}

/// Waits until the job is in one of `states`; returns its view.
async fn wait_job(tenant: &Tenant, id: &str, states: &[&str]) -> Value {
    let ids = [id.to_owned()];
    let views = wait_jobs(tenant, &ids, JOB_WAIT, |v| {
        states.contains(&v[0]["state"].as_str().unwrap_or(""))
    })
    .await;
    let view = views[0].clone();
    assert!(
        states.contains(&view["state"].as_str().unwrap_or("")),
        "job {id} never reached {states:?}: {view}"
    );
    view
}

async fn meta(tenant: &Tenant, id: &str) -> Value {
    let raw = get(tenant, &tenant.key, &format!("/v1/media/{id}/meta")).await;
    assert_eq!(raw.status, 200, "{}", json_of(&raw));
    json_of(&raw)
}

/// Files left in the upload spool (a refused upload must leave none).
fn spooled(server: &TestServer) -> usize {
    std::fs::read_dir(server.dir.path().join("media").join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_processed_and_served_to_the_tenants_devices_only() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let device = tenant.device().await;
    let bytes = png(600, 300);
    let answer = upload_ok(&tenant, &device, "photo.png", bytes.clone()).await;
    let (id, job_id) = (
        answer["media_id"].as_str().unwrap(),
        answer["job_id"].as_str().unwrap(),
    );
    assert!(id.starts_with("md_"), "{answer}");
    assert_eq!(answer["mime"], "image/png");
    assert_eq!(answer["size"], bytes.len());

    // The processing job runs through the queue, with progress.
    let view = wait_job(&tenant, job_id, &["completed"]).await;
    assert_eq!(view["kind"], "media", "{view}");
    assert_eq!(view["device"], device.id.as_str(), "{view}");
    assert_eq!(view["progress"], json!({"done": 3, "total": 3}), "{view}");

    let m = meta(&tenant, id).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["size"], bytes.len(), "{m}");
    assert_eq!(m["sha256"], sha256(&bytes), "{m}");
    assert_eq!(m["mime"], "image/png", "{m}");
    assert_eq!(
        (m["width"].as_u64(), m["height"].as_u64()),
        (Some(600), Some(300))
    );
    assert_eq!(m["name"], "photo.png");
    assert_eq!(m["device_id"], device.id.as_str());
    assert_eq!(m["thumbnail"]["width"], 256, "{m}");
    assert_eq!(m["thumbnail"]["height"], 128, "{m}");

    // The file, as uploaded, with its type, length and checksum as entity tag.
    let file = get(&tenant, &tenant.key, &format!("/v1/media/{id}")).await;
    assert_eq!(file.status, 200);
    assert!(file.body == bytes, "the file is served as uploaded");
    assert_eq!(file.headers["content-type"], "image/png");
    assert_eq!(
        file.headers["content-length"],
        bytes.len().to_string().as_str()
    );
    let etag = file.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256(&bytes)));
    let again = send(
        tenant
            .http
            .get(format!("{}/v1/media/{id}", tenant.base))
            .bearer_auth(&tenant.key)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // The thumbnail is a JPEG of 256 × 128 (aspect kept).
    let thumb = get(&tenant, &tenant.key, &format!("/v1/media/{id}/thumbnail")).await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.headers["content-type"], "image/jpeg");
    let decoded =
        image::load_from_memory_with_format(&thumb.body, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (256, 128));
    assert_eq!(m["thumbnail"]["size"], thumb.body.len());

    // A device token of the tenant (another device than the uploader) reads it too.
    let other_device = tenant.device().await;
    let token = tenant.token(&other_device).await;
    for path in [
        format!("/v1/media/{id}"),
        format!("/v1/media/{id}/meta"),
        format!("/v1/media/{id}/thumbnail"),
    ] {
        let raw = get(&tenant, &token, &path).await;
        assert_eq!(raw.status, 200, "{path}: {}", json_of(&raw));
    }
    let raw = get(&tenant, &token, &format!("/v1/media/{id}")).await;
    assert!(raw.body == bytes);

    // Another tenant, by key or by device token, finds nothing: 404, as for no file.
    let stranger = server.tenant().await;
    let stranger_device = stranger.device().await;
    let stranger_token = stranger.token(&stranger_device).await;
    for bearer in [&stranger.key, &stranger_token] {
        for path in [
            format!("/v1/media/{id}"),
            format!("/v1/media/{id}/meta"),
            format!("/v1/media/{id}/thumbnail"),
            "/v1/media/md_nope/meta".to_owned(),
        ] {
            let raw = get(&stranger, bearer, &path).await;
            assert_eq!(raw.status, 404, "{path}");
            assert_eq!(json_of(&raw)["error"]["code"], "not_found", "{path}");
        }
    }
    // No credential, or a bad one: 401.
    let raw = send(tenant.http.get(format!("{}/v1/media/{id}", tenant.base))).await;
    assert_eq!(raw.status, 401);
    let raw = get(&tenant, "not-a-token", &format!("/v1/media/{id}")).await;
    assert_eq!(raw.status, 401);

    // The job counts in the queue statistics like every job.
    let (s, stats) = server
        .call(
            "GET",
            "/admin/queues/stats",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(stats["tenants"][&tenant.id]["completed"], 1, "{stats}");
    assert_eq!(stats["lanes"]["normal"]["completed"], 1, "{stats}");

    // Every media route is in the API document, with its statuses.
    let (_, doc) = server.call("GET", "/openapi.json", None, None).await;
    let upload_doc = &doc["paths"]["/v1/media"]["post"]["responses"];
    for status in ["202", "400", "401", "403", "404", "413", "415", "503"] {
        assert!(
            upload_doc.get(status).is_some(),
            "POST /v1/media documents {status}"
        );
    }
    for path in [
        "/v1/media/{id}",
        "/v1/media/{id}/meta",
        "/v1/media/{id}/thumbnail",
    ] {
        let responses = &doc["paths"][path]["get"]["responses"];
        for status in ["200", "401", "404"] {
            assert!(
                responses.get(status).is_some(),
                "GET {path} documents {status}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_comes_from_the_bytes_not_the_name() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let device = tenant.device().await;
    let q = |name: &str| format!("device_id={}&name={name}", device.id);

    // Text named like a picture.
    let text = b"hello, I am plain text pretending to be a picture".to_vec();
    let (s, body) = upload(&tenant, &tenant.key, &q("photo.png"), None, text.clone()).await;
    assert_eq!(s, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    let (s, body) = upload(&tenant, &tenant.key, &q("photo"), Some("image/png"), text).await;
    assert_eq!(s, 415, "{body}");
    // A real PNG named or declared as another type.
    let (s, body) = upload(&tenant, &tenant.key, &q("photo.jpg"), None, png(8, 8)).await;
    assert_eq!(s, 415, "{body}");
    let (s, body) = upload(&tenant, &tenant.key, &q("x"), Some("image/gif"), png(8, 8)).await;
    assert_eq!(s, 415, "{body}");
    // Nothing at all.
    let (s, body) = upload(&tenant, &tenant.key, &q("x.png"), None, Vec::new()).await;
    assert_eq!(s, 400, "{body}");
    // The API key needs a device of its tenant.
    let (s, body) = upload(&tenant, &tenant.key, "name=x.png", None, png(8, 8)).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = upload(&tenant, &tenant.key, "device_id=d_nope", None, png(8, 8)).await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(
        spooled(&server),
        0,
        "a refused upload leaves no file behind"
    );

    // Another accepted type that is no image: processed, no dimensions or thumbnail.
    let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n".to_vec();
    let answer = upload_ok(&tenant, &device, "doc.pdf", pdf.clone()).await;
    assert_eq!(answer["mime"], "application/pdf");
    let id = answer["media_id"].as_str().unwrap();
    wait_job(&tenant, answer["job_id"].as_str().unwrap(), &["completed"]).await;
    let m = meta(&tenant, id).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["sha256"], sha256(&pdf));
    assert!(
        m.get("width").is_none() && m.get("thumbnail").is_none(),
        "{m}"
    );
    let file = get(&tenant, &tenant.key, &format!("/v1/media/{id}")).await;
    assert_eq!(file.headers["content-type"], "application/pdf");
    assert!(file.body == pdf);
    let thumb = get(&tenant, &tenant.key, &format!("/v1/media/{id}/thumbnail")).await;
    assert_eq!(thumb.status, 404);

    // A larger file (many chunks on MongoDB) streams in and out whole.
    let mut big = b"%PDF-1.7\n".to_vec();
    big.extend((0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8));
    let answer = upload_ok(&tenant, &device, "big.pdf", big.clone()).await;
    let id = answer["media_id"].as_str().unwrap();
    wait_job(&tenant, answer["job_id"].as_str().unwrap(), &["completed"]).await;
    assert_eq!(meta(&tenant, id).await["sha256"], sha256(&big));
    let file = get(&tenant, &tenant.key, &format!("/v1/media/{id}")).await;
    assert_eq!(
        file.headers["content-length"],
        big.len().to_string().as_str()
    );
    assert!(file.body == big, "a 3 MiB file is served whole");

    // A PNG signature over garbage: accepted by type, then refused by processing.
    let mut broken = png(8, 8)[..16].to_vec();
    broken.extend_from_slice(&[0x5a; 400]);
    let answer = upload_ok(&tenant, &device, "broken.png", broken).await;
    let id = answer["media_id"].as_str().unwrap();
    let view = wait_job(&tenant, answer["job_id"].as_str().unwrap(), &["failed"]).await;
    assert_eq!(view["attempts"], 1, "a bad file is not retried: {view}");
    let m = meta(&tenant, id).await;
    assert_eq!(m["state"], "failed", "{m}");
    assert!(m["error"].as_str().unwrap().contains("decoded"), "{m}");
    let file = get(&tenant, &tenant.key, &format!("/v1/media/{id}")).await;
    assert_eq!(file.status, 409, "a failed file is not served");
}

/// Sends a chunked upload that never ends, from a raw socket; answers the status line
/// the server sent while the client was still sending.
async fn endless_upload(server: &TestServer, tenant: &Tenant, device: &Device) -> String {
    let addr = server.running.as_ref().unwrap().addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/media?device_id={} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        device.id, tenant.key
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let mut chunk = png(4, 4);
        chunk.resize(64 * 1024, 0);
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        let mut sent = 0u64;
        loop {
            wr.write_all(&framed).await?;
            sent += framed.len() as u64;
            // Bounded: far past anything a server that buffered the whole body first
            // would answer within, so the answer below came while streaming.
            if sent > 512 * 1024 * 1024 {
                return Ok::<u64, std::io::Error>(sent);
            }
        }
    });
    // Reads up to the end of the status line.
    let mut buf = Vec::new();
    let status_line = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, status_line)
        .await
        .expect("an answer while the body is still being sent");
    // The writer is still sending, or stopped because the server closed the
    // connection; it never got to the end of its body.
    writer.abort();
    if let Ok(Ok(sent)) = writer.await {
        panic!("the whole body ({sent} bytes) was sent before the server answered");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_are_refused_while_streaming() {
    let server = TestServer::start_with(|c| c.max_media_bytes = 256 * 1024).await;
    let tenant = server.tenant().await;
    let device = tenant.device().await;
    // Declared too long: refused before the body is read.
    let query = format!("device_id={}", device.id);
    let (s, body) = upload(&tenant, &tenant.key, &query, None, vec![0; 300 * 1024]).await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    // Not declared (chunked) and endless: refused as soon as it passes the limit.
    let answer = endless_upload(&server, &tenant, &device).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        spooled(&server),
        0,
        "a refused upload leaves no file behind"
    );
    // Just under the limit is fine.
    let mut under = png(64, 64);
    under.resize(256 * 1024, 0);
    let answer = upload_ok(&tenant, &device, "big.png", under).await;
    assert_eq!(answer["size"], 256 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reference_media_of_their_tenant() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let alice = tenant.device().await;
    let bob = tenant.device().await;
    // Alice uploads with her own device token (no device_id needed).
    let alice_token = tenant.token(&alice).await;
    let (s, answer) = upload(&tenant, &alice_token, "name=cat.png", None, png(32, 32)).await;
    assert_eq!(s, 202, "{answer}");
    let id = answer["media_id"].as_str().unwrap().to_owned();
    let m = meta(&tenant, &id).await;
    assert_eq!(m["device_id"], alice.id.as_str());
    // A device token uploads for its own device only.
    let q = format!("device_id={}", bob.id);
    let (s, body) = upload(&tenant, &alice_token, &q, None, png(4, 4)).await;
    assert_eq!(s, 403, "{body}");

    let mut bob_ws = tenant.connect(&bob).await;
    let (s, sent) = tenant
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", alice.id),
            Some(json!({"to": bob.address, "body": {"media": id, "text": "look"}})),
        )
        .await;
    assert_eq!(s, 201, "{sent}");
    let pushed = bob_ws.recv_type("message").await;
    assert_eq!(pushed["body"]["media"], id.as_str(), "{pushed}");
    assert_eq!(pushed["body"]["text"], "look");
    // Bob fetches it with his own token.
    let bob_token = tenant.token(&bob).await;
    wait_job(&tenant, answer["job_id"].as_str().unwrap(), &["completed"]).await;
    let raw = get(&tenant, &bob_token, &format!("/v1/media/{id}")).await;
    assert_eq!(raw.status, 200);

    // A bad reference is refused, over REST and the WebSocket, and nothing is sent.
    let path = format!("/v1/devices/{}/messages", alice.id);
    let (s, body) = tenant
        .call(
            "POST",
            &path,
            Some(json!({"to": bob.address, "body": {"media": "md_nope"}})),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (s, body) = tenant
        .call(
            "POST",
            &path,
            Some(json!({"to": bob.address, "body": {"media": 7}})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let stranger = server.tenant().await;
    let stranger_device = stranger.device().await;
    let (s, theirs) = upload(
        &stranger,
        &stranger.key,
        &format!("device_id={}", stranger_device.id),
        None,
        png(4, 4),
    )
    .await;
    assert_eq!(s, 202, "{theirs}");
    let (s, body) = tenant
        .call(
            "POST",
            &path,
            Some(json!({"to": bob.address, "body": {"media": theirs["media_id"]}})),
        )
        .await;
    assert_eq!(s, 404, "another tenant's media: {body}");
    let mut alice_ws = tenant.connect(&alice).await;
    alice_ws
        .send(json!({"type": "send", "id": "c1", "to": bob.address, "body": {"media": "md_nope"}}))
        .await;
    let err = alice_ws.answer("c1").await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "not_found", "{err}");
    alice_ws
        .send(json!({"type": "send", "id": "c2", "to": bob.address, "body": {"media": id}}))
        .await;
    let ack = alice_ws.answer("c2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let pushed = bob_ws.recv_type("message").await;
    assert_eq!(pushed["body"]["media"], id.as_str(), "{pushed}");
    // Queued sends are checked when they run: a bad reference fails the job for good.
    let (s, queued) = tenant
        .call(
            "POST",
            "/v1/messages/bulk",
            Some(json!({"messages": [
                {"device": alice.id, "to": bob.address, "body": {"media": "md_nope"}},
                {"device": alice.id, "to": bob.address, "body": {"media": id, "n": 2}},
            ]})),
        )
        .await;
    assert_eq!(s, 202, "{queued}");
    let ids: Vec<String> = queued["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    let views = wait_jobs(&tenant, &ids, JOB_WAIT, |v| {
        v[0]["state"] == "failed" && v[1]["state"] == "completed"
    })
    .await;
    assert_eq!(views[0]["state"], "failed", "{views:?}");
    assert!(
        views[0]["error"].as_str().unwrap().starts_with("not_found"),
        "{views:?}"
    );
    assert_eq!(views[1]["state"], "completed", "{views:?}");
    let pushed = bob_ws.recv_type("message").await;
    assert_eq!(pushed["body"]["n"], 2, "{pushed}");
    assert!(
        bob_ws.try_recv(Duration::from_millis(200)).await.is_none(),
        "the refused sends delivered nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_jobs_can_be_cancelled_and_retried() {
    let server = TestServer::start_with(|c| c.queue_default_attempts = Some(1)).await;
    let admin = Some(server.admin_token.as_str());
    let tenant = server.tenant().await;
    let device = tenant.device().await;

    // Cancelled before it runs (its lane paused): the file says so.
    let (s, body) = server
        .call("POST", "/admin/queues/lanes/low/pause", admin, None)
        .await;
    assert_eq!(s, 200, "{body}");
    let q = format!("device_id={}&priority=low", device.id);
    let (s, answer) = upload(&tenant, &tenant.key, &q, None, png(16, 16)).await;
    assert_eq!(s, 202, "{answer}");
    let (id, job_id) = (
        answer["media_id"].as_str().unwrap().to_owned(),
        answer["job_id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(job(&tenant, &job_id).await["state"], "waiting");
    assert_eq!(meta(&tenant, &id).await["state"], "processing");
    let (s, view) = tenant
        .call("DELETE", &format!("/v1/jobs/{job_id}"), None)
        .await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["state"], "cancelled");
    assert_eq!(meta(&tenant, &id).await["state"], "cancelled");
    let (s, _) = server
        .call("POST", "/admin/queues/lanes/low/resume", admin, None)
        .await;
    assert_eq!(s, 200);
    let raw = get(&tenant, &tenant.key, &format!("/v1/media/{id}")).await;
    assert_eq!(raw.status, 409, "a file never processed is not served");

    // Fails (the store away, as injected, with one attempt), then retried: ready.
    let media = server.running.as_ref().unwrap().state.media.clone();
    media.fail_next_jobs(1);
    let bytes = png(40, 20);
    let answer = upload_ok(&tenant, &device, "a.png", bytes.clone()).await;
    let (id, job_id) = (
        answer["media_id"].as_str().unwrap().to_owned(),
        answer["job_id"].as_str().unwrap().to_owned(),
    );
    let view = wait_job(&tenant, &job_id, &["failed"]).await;
    assert!(
        view["error"].as_str().unwrap().starts_with("unavailable"),
        "{view}"
    );
    let m = meta(&tenant, &id).await;
    assert_eq!(m["state"], "failed", "{m}");
    let (s, view) = tenant
        .call("POST", &format!("/v1/jobs/{job_id}/retry"), None)
        .await;
    assert_eq!(s, 200, "{view}");
    let view = wait_job(&tenant, &job_id, &["completed"]).await;
    assert_eq!(view["progress"], json!({"done": 3, "total": 3}), "{view}");
    let m = meta(&tenant, &id).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["sha256"], sha256(&bytes));
    // A small image is its own thumbnail's size.
    assert_eq!(
        (
            m["thumbnail"]["width"].as_u64(),
            m["thumbnail"]["height"].as_u64()
        ),
        (Some(40), Some(20))
    );
}
