//! Security: every route of `/openapi.json` refuses credentials that are not its own
//! (another tenant's key, a device token, none; for `/admin` anything but the admin
//! token), WebSocket frames never reach another tenant, and the handshake guards
//! (`Origin` allow-list, per-IP connection and handshake limits) and CORS hold.
//! `docs/security.md` names these tests as the proof of its claims.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::auth::DeviceClaims;
use tokio_tungstenite::tungstenite;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};

use crate::common::{address, Device, Tenant, TestServer, Ws, WAIT};

/// Routes that are public by design, and why. They are skipped by the enumeration
/// (and checked to answer without credentials, so the list cannot hide a mistake).
const PUBLIC: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/health",
        "probed by load balancers and the container HEALTHCHECK without credentials; \
         reports readiness only",
    ),
    (
        "GET",
        "/metrics",
        "scraped by Prometheus without credentials; counters and histograms only \
         (restrict it at the proxy: it names tenant ids)",
    ),
    (
        "GET",
        "/openapi.json",
        "the API description itself (not listed in the document)",
    ),
];

/// `/v1` routes that take a device token of the tenant as well as its key, by design,
/// and why. A's device token is a valid credential there (checked below); another
/// tenant's device token is refused like its key.
const DEVICE_TOKEN_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/media", "a device uploads the files it sends"),
    (
        "GET",
        "/v1/media/{id}",
        "a tenant's devices fetch the files its messages reference",
    ),
    ("GET", "/v1/media/{id}/meta", "the same file's metadata"),
    (
        "GET",
        "/v1/media/{id}/thumbnail",
        "the same file's thumbnail",
    ),
];

/// Whether `route` is one of [`DEVICE_TOKEN_ROUTES`].
fn takes_device_tokens(route: &Route) -> bool {
    DEVICE_TOKEN_ROUTES
        .iter()
        .any(|(m, t, _)| *m == route.method && *t == route.template)
}

/// Admin routes registered outside the document (the `test_hooks` fault injection,
/// on in the test server): they must refuse everything but the admin token too.
const UNDOCUMENTED_ADMIN: &[(&str, &str)] = &[
    ("POST", "/admin/test/devices/{id}/panic"),
    ("POST", "/admin/test/devices/{id}/start-panics?times=1"),
    ("POST", "/admin/test/store"),
];

/// One HTTP answer: status, headers, JSON body (Null when empty, not JSON, or a stream).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// One HTTP call with an optional bearer, extra headers and JSON body. A
/// `text/event-stream` answer is not read (it never ends).
async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("HTTP timeout")
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let streaming = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = if streaming {
        Value::Null
    } else {
        let text = tokio::time::timeout(WAIT, res.text())
            .await
            .expect("HTTP body timeout")
            .unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A documented route.
#[derive(Debug, Clone)]
struct Route {
    method: String,
    template: String,
    has_body: bool,
}

impl Route {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    fn has_placeholder(&self) -> bool {
        self.template.contains('{')
    }
}

/// Every path + method of the OpenAPI document.
fn documented_routes(doc: &Value) -> Vec<Route> {
    let paths = doc["paths"].as_object().expect("document has paths");
    let mut out = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("path item is an object") {
            if !matches!(
                method.as_str(),
                "get" | "post" | "put" | "delete" | "patch" | "head" | "options"
            ) {
                continue;
            }
            out.push(Route {
                method: method.to_ascii_uppercase(),
                template: path.clone(),
                has_body: op.get("requestBody").is_some(),
            });
        }
    }
    out
}

/// Tenant A's real resources that path parameters and bodies aim at.
struct Fixture {
    a1: Device,
    a2: Device,
    group: String,
    job: String,
    message: String,
    client_id: String,
    a1_token: String,
    /// A file a1 uploaded.
    media: String,
    webhook: String,
}

/// Creates A's resources: two devices, a group of both, a delayed bulk job, a message
/// sent with a client id (a1 → a2), and a device token of a1.
async fn fixture(ta: &Tenant) -> Fixture {
    let a1 = ta.device().await;
    let a2 = ta.device().await;
    let (status, g) = ta
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "A's group", "members": [a1.address, a2.address]})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let group = g["group_id"].as_str().unwrap().to_owned();
    // Delayed an hour, so it stays cancellable for the control calls.
    let send_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let (status, bulk) = ta
        .call(
            "POST",
            "/v1/messages/bulk",
            Some(json!({"messages": [{
                "device": a1.id, "to": a2.address, "body": {"text": "queued"},
                "send_at": send_at,
            }]})),
        )
        .await;
    assert_eq!(status, 202, "{bulk}");
    let job = bulk["job_ids"][0].as_str().unwrap().to_owned();
    let client_id = "sec-c1".to_owned();
    let (status, sent) = ta
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a1.id),
            Some(json!({"to": a2.address, "body": {"text": "inside A"}, "id": client_id})),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let message = sent["message_id"].as_str().unwrap().to_owned();
    let a1_token = ta.token(&a1).await;
    // An image, so it has a thumbnail too.
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(2, 2)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let uploaded = ta
        .http
        .post(format!("{}/v1/media?device_id={}", ta.base, a1.id))
        .bearer_auth(&ta.key)
        .body(png.into_inner())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 202);
    let uploaded: Value = uploaded.json().await.unwrap();
    let media = uploaded["media_id"].as_str().unwrap().to_owned();
    // Nothing listens on the discard port: test deliveries fail fast, as designed.
    let (status, hook) = ta
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/a", "events": ["job.failed"]})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let webhook = hook["webhook_id"].as_str().unwrap().to_owned();
    Fixture {
        media,
        webhook,
        a1,
        a2,
        group,
        job,
        message,
        client_id,
        a1_token,
    }
}

/// The path with every `{param}` replaced by one of A's resources; panics on a
/// parameter it does not know, so a new route cannot pass unchecked.
fn fill(template: &str, fx: &Fixture) -> String {
    let segments: Vec<&str> = template.split('/').collect();
    let mut out = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            out.push((*seg).to_owned());
            continue;
        };
        let collection = if i > 0 { segments[i - 1] } else { "" };
        let value = match (name, collection) {
            ("id", "devices") => fx.a1.id.clone(),
            ("id", "groups") => fx.group.clone(),
            ("id", "jobs") => fx.job.clone(),
            ("id", "media") => fx.media.clone(),
            ("id", "webhooks") => fx.webhook.clone(),
            ("message_id", "messages") => fx.message.clone(),
            ("client_id", "by-client-id") => fx.client_id.clone(),
            ("address", "members") => fx.a2.address.replace('+', "%2B"),
            ("lane", "lanes") => "normal".to_owned(),
            ("kind", "cache") => "devices".to_owned(),
            ("key", _) if segments.get(i.wrapping_sub(2)) == Some(&"cache") => fx.a1.id.clone(),
            _ => panic!(
                "{template}: no tenant-A value for path parameter {{{name}}} after \
                 `{collection}`; teach security.rs `fill` about it"
            ),
        };
        out.push(value);
    }
    out.join("/")
}

/// A valid body for the route (so a refusal is about credentials, not validation);
/// panics when the document declares a body this table does not know.
fn body_for(route: &Route, fx: &Fixture) -> Option<Value> {
    let body = match (route.method.as_str(), route.template.as_str()) {
        ("POST", "/admin/tenants") => json!({"name": "intruder"}),
        ("POST", "/v1/devices") => json!({"address": fx.a1.address, "name": "twin"}),
        ("POST", "/v1/devices/{id}/tokens") => json!({"ttl_secs": 60}),
        ("PUT", "/v1/devices/{id}/contacts") => {
            json!({"contacts": [{"address": address(), "name": "planted"}]})
        }
        ("POST", "/v1/devices/{id}/messages") => {
            json!({"to": fx.a2.address, "body": {"text": "as A"}})
        }
        ("POST", "/v1/groups") => {
            json!({"name": "B's", "members": [fx.a1.address, fx.a2.address]})
        }
        ("POST", "/v1/groups/{id}/members") => json!({"members": [address()]}),
        // The file is the raw body: any body does for the credential checks, and
        // `check_own_scope` uploads a real file.
        ("POST", "/v1/media") => json!({"not": "a file"}),
        ("POST", "/v1/messages/bulk") => json!({"messages": [{
            "device": fx.a1.id, "to": fx.a2.address, "body": {"text": "bulk as A"},
        }]}),
        ("POST", "/v1/groups/sync") => json!({"groups": [{
            // Both members kept: later controls remove a2 from this group.
            "group_id": fx.group, "name": "taken over", "members": [fx.a1.address, fx.a2.address],
        }]}),
        ("POST", "/v1/notifications") => {
            json!({"body": {"text": "as B"}, "to": [fx.a1.address, fx.a2.address]})
        }
        ("POST", "/v1/webhooks") => {
            json!({"url": "http://127.0.0.1:9/b", "events": ["job.failed"]})
        }
        ("PATCH", "/v1/webhooks/{id}") => json!({"description": "changed"}),
        ("POST", "/v1/webhooks/{id}/dead-letters/replay") => json!({}),
        _ if route.has_body => panic!(
            "{}: the document declares a request body; add a valid one to security.rs \
             `body_for`",
            route.name()
        ),
        _ => return None,
    };
    Some(body)
}

/// Asserts a refusal: 401, 403 or 404, with the matching error code and nothing of
/// the resource in the body.
#[track_caller]
fn assert_refused(what: &str, a: &Answer, allowed: &[u16]) {
    assert!(
        allowed.contains(&a.status),
        "{what}: expected one of {allowed:?}, got {}: {}",
        a.status,
        a.body
    );
    let code = match a.status {
        401 => "unauthorized",
        403 => "forbidden",
        _ => "not_found",
    };
    assert_eq!(a.body["error"]["code"], code, "{what}: {}", a.body);
    for leak in [
        "device_id",
        "token",
        "items",
        "job_id",
        "job_ids",
        "group_id",
        "members",
        "contacts",
        "message",
        "api_key",
        "tenants",
    ] {
        assert!(
            a.body.get(leak).is_none(),
            "{what}: body carries `{leak}`: {}",
            a.body
        );
    }
}

/// A `/v1` route without a tenant-A path parameter, called with B's key: it acts in
/// B's own scope. Checks that it shows or touches nothing of A's; panics for a route
/// it has no expectation for.
async fn check_own_scope(
    server: &TestServer,
    ta: &Tenant,
    tb: &Tenant,
    route: &Route,
    fx: &Fixture,
    body: Option<&Value>,
) {
    let name = route.name();
    let a = request(
        server,
        &route.method,
        &route.template,
        Some(&tb.key),
        &[],
        body,
    )
    .await;
    match (route.method.as_str(), route.template.as_str()) {
        ("GET", "/v1/devices") => {
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            let ids: Vec<&str> = a.body["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["device_id"].as_str().unwrap())
                .collect();
            assert!(
                !ids.contains(&fx.a1.id.as_str()) && !ids.contains(&fx.a2.id.as_str()),
                "{name}: B's listing shows A's devices: {ids:?}"
            );
        }
        ("POST", "/v1/devices") => {
            // A's address registered again, in B's namespace: a different device.
            assert_eq!(a.status, 201, "{name}: {}", a.body);
            let twin = a.body["device_id"].as_str().unwrap();
            assert_ne!(twin, fx.a1.id);
            let (status, mine) = ta
                .call("GET", &format!("/v1/devices/{}", fx.a1.id), None)
                .await;
            assert_eq!(status, 200, "{mine}");
            assert_eq!(mine["address"], fx.a1.address.as_str());
            let (status, theirs) = ta.call("GET", &format!("/v1/devices/{twin}"), None).await;
            assert_eq!(status, 403, "A reads B's twin device: {theirs}");
        }
        ("POST", "/v1/groups") => {
            // A group naming A's addresses is B's group; A cannot read it.
            assert_eq!(a.status, 201, "{name}: {}", a.body);
            let gid = a.body["group_id"].as_str().unwrap();
            let (status, g) = ta.call("GET", &format!("/v1/groups/{gid}"), None).await;
            assert_eq!(status, 403, "A reads B's group: {g}");
        }
        ("POST", "/v1/notifications") => {
            // B's notification naming A's addresses reaches none of A's devices.
            assert_eq!(a.status, 202, "{name}: {}", a.body);
            let job = a.body["job_id"].as_str().unwrap();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let (status, v) = tb.call("GET", &format!("/v1/jobs/{job}"), None).await;
                assert_eq!(status, 200, "{v}");
                if v["state"] == "completed" {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{v}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            for d in [&fx.a1, &fx.a2] {
                let (status, page) = ta
                    .call("GET", &format!("/v1/devices/{}/messages", d.id), None)
                    .await;
                assert_eq!(status, 200, "{page}");
                let reached = page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["from"] == "system");
                assert!(
                    !reached,
                    "{name}: B's notification reached A's device: {page}"
                );
            }
        }
        ("GET", "/v1/stats/messages") => {
            // B's statistics name none of A's devices, and A's device is not B's to ask.
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            let shown: Vec<&str> = a.body["days"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["device_id"].as_str().unwrap())
                .collect();
            assert!(
                !shown.contains(&fx.a1.id.as_str()),
                "{name}: B's statistics show A's device: {shown:?}"
            );
            let aimed = format!("/v1/stats/messages?device={}", fx.a1.id);
            let a = request(server, "GET", &aimed, Some(&tb.key), &[], None).await;
            assert_refused(&format!("{name} ?device=A's"), &a, &[403]);
            let (status, own) = ta.call("GET", &aimed, None).await;
            assert_eq!(status, 200, "{own}");
            assert!(own["totals"]["sent"].as_u64().unwrap() >= 1, "{own}");
        }
        ("POST", "/v1/media") => {
            // B's key acts in B's scope (no device named: 400), and cannot plant a
            // file on A's device: it is not B's device.
            assert_eq!(a.status, 400, "{name}: {}", a.body);
            let aimed = format!("{}/v1/media?device_id={}", server.base, fx.a1.id);
            let planted = server
                .http
                .post(&aimed)
                .bearer_auth(&tb.key)
                .body(b"%PDF-1.4\nplanted\n".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(planted.status(), 404, "{name}: B uploaded for A's device");
            let own = server
                .http
                .post(&aimed)
                .bearer_auth(&ta.key)
                .body(b"%PDF-1.4\nmine\n".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(own.status(), 202, "{name}: A's own upload");
        }
        ("GET", "/v1/webhooks") => {
            assert_eq!(a.status, 200, "{name}: {}", a.body);
            assert!(
                !a.body.to_string().contains(&fx.webhook),
                "{name}: B's listing shows A's webhook: {}",
                a.body
            );
        }
        ("POST", "/v1/webhooks") => {
            // B's own endpoint; A cannot read it.
            assert_eq!(a.status, 201, "{name}: {}", a.body);
            let id = a.body["webhook_id"].as_str().unwrap();
            let (status, theirs) = ta.call("GET", &format!("/v1/webhooks/{id}"), None).await;
            assert_eq!(status, 403, "A reads B's webhook: {theirs}");
        }
        _ => panic!(
            "{name}: a /v1 route with no tenant-A path parameter and no expectation; add \
             one to security.rs (`check_own_scope`, or aim its body at A's resources)"
        ),
    }
}

/// Every route of `/openapi.json` with every wrong credential; `/v1` routes with
/// another tenant's key aimed at A's real resources; `/admin` routes with A's and
/// B's keys. Control calls prove the same requests pass with the right credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_refuses_credentials_that_are_not_its_own() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let fx = fixture(&ta).await;
    let tb_device = tb.device().await;
    let tb_token = tb.token(&tb_device).await;
    // A well-shaped key that belongs to nobody.
    let unknown_key = format!("sk_{}", "0".repeat(64));

    let doc = request(&server, "GET", "/openapi.json", None, &[], None).await;
    assert_eq!(doc.status, 200);
    let routes = documented_routes(&doc.body);
    assert!(
        routes.len() >= 20,
        "suspiciously few routes: {}",
        routes.len()
    );

    // Public routes answer without credentials; they are not enumerated further.
    for (method, path, why) in PUBLIC {
        let a = request(&server, method, path, None, &[], None).await;
        assert_eq!(a.status, 200, "{method} {path} is public by design ({why})");
    }
    let public: HashSet<(&str, &str)> = PUBLIC.iter().map(|(m, p, _)| (*m, *p)).collect();

    let mut v1_refused: Vec<(Route, String, Option<Value>)> = Vec::new();
    let mut admin: Vec<(Route, String, Option<Value>)> = Vec::new();
    let mut checked = 0usize;
    for route in &routes {
        if public.contains(&(route.method.as_str(), route.template.as_str())) {
            continue;
        }
        let name = route.name();
        let path = fill(&route.template, &fx);
        let body = body_for(route, &fx);
        checked += 1;
        if route.template.starts_with("/admin/") {
            admin.push((route.clone(), path, body));
        } else if route.template.starts_with("/v1/") {
            // No credential, a device token, a key of nobody, the admin token: 401.
            for (who, bearer) in [
                ("no credential", None),
                ("A's device token", Some(fx.a1_token.as_str())),
                ("an unknown key", Some(unknown_key.as_str())),
                ("the admin token", Some(server.admin_token.as_str())),
            ] {
                if who == "A's device token" && takes_device_tokens(route) {
                    // A valid credential here (DEVICE_TOKEN_ROUTES); B's is not.
                    if route.has_placeholder() {
                        let a = request(&server, &route.method, &path, Some(&tb_token), &[], None)
                            .await;
                        assert_refused(&format!("{name} with B's device token"), &a, &[404]);
                        let a =
                            request(&server, &route.method, &path, Some(&fx.a1_token), &[], None)
                                .await;
                        assert!(
                            (200..300).contains(&a.status) || a.status == 409,
                            "control: {name} with A's device token answered {}: {}",
                            a.status,
                            a.body
                        );
                    }
                    continue;
                }
                let a = request(&server, &route.method, &path, bearer, &[], body.as_ref()).await;
                assert_refused(&format!("{name} with {who}"), &a, &[401]);
            }
            // Tenant B's key, aimed at A's resources.
            let aims_at_a = route.has_placeholder()
                || (route.method == "POST"
                    && ["/v1/messages/bulk", "/v1/groups/sync"].contains(&route.template.as_str()));
            if aims_at_a {
                let a = request(
                    &server,
                    &route.method,
                    &path,
                    Some(&tb.key),
                    &[],
                    body.as_ref(),
                )
                .await;
                assert_refused(&format!("{name} with B's key"), &a, &[401, 403, 404]);
                v1_refused.push((route.clone(), path, body));
            } else {
                check_own_scope(&server, &ta, &tb, route, &fx, body.as_ref()).await;
            }
        } else {
            panic!("{name}: neither /v1, /admin nor public; decide who may call it");
        }
    }
    let documented = checked;
    for (method, template) in UNDOCUMENTED_ADMIN {
        let route = Route {
            method: (*method).to_owned(),
            template: (*template).to_owned(),
            has_body: false,
        };
        let body = (template.ends_with("/store")).then(|| json!({"down": false}));
        let path = fill(template, &fx);
        admin.push((route, path, body));
        checked += 1;
    }

    // /admin: nothing but the admin token (A's own key included) gets in.
    for (route, path, body) in &admin {
        let name = route.name();
        for (who, bearer) in [
            ("no credential", None),
            ("A's key", Some(ta.key.as_str())),
            ("B's key", Some(tb.key.as_str())),
            ("A's device token", Some(fx.a1_token.as_str())),
        ] {
            let a = request(&server, &route.method, path, bearer, &[], body.as_ref()).await;
            assert_refused(&format!("{name} with {who}"), &a, &[401]);
        }
    }
    // The query token of /admin/events is checked like the header.
    for key in [&ta.key, &tb.key] {
        let a = request(
            &server,
            "GET",
            &format!("/admin/events?token={key}"),
            None,
            &[],
            None,
        )
        .await;
        assert_refused("GET /admin/events?token=<tenant key>", &a, &[401]);
    }

    // Controls: the same requests pass with the right credential, so the refusals
    // above were about credentials, not about the request. 409 is a pass too (the
    // request was understood: e.g. restarting a session that is not running).
    // Destructive calls go last, deleting A's device last of all.
    for (route, path, body) in admin
        .iter()
        .filter(|(r, _, _)| !r.template.starts_with("/admin/test/"))
    {
        let a = request(
            &server,
            &route.method,
            path,
            Some(&server.admin_token),
            &[],
            body.as_ref(),
        )
        .await;
        assert!(
            (200..300).contains(&a.status) || a.status == 409,
            "control: {} with the admin token answered {}: {}",
            route.name(),
            a.status,
            a.body
        );
    }

    let rank = |r: &Route| match (r.method.as_str(), r.template.as_str()) {
        ("DELETE", "/v1/devices/{id}") => 3,
        ("DELETE", _) => 2,
        ("GET", _) => 0,
        _ => 1,
    };
    v1_refused.sort_by_key(|(r, _, _)| rank(r));
    for (route, path, body) in &v1_refused {
        let a = request(
            &server,
            &route.method,
            path,
            Some(&ta.key),
            &[],
            body.as_ref(),
        )
        .await;
        assert!(
            (200..300).contains(&a.status) || a.status == 409,
            "control: {} with A's own key answered {}: {}",
            route.name(),
            a.status,
            a.body
        );
    }
    println!(
        "security: {checked} routes checked ({documented} of {} documented, {} public \
         skipped, {} undocumented admin hooks); {} /v1 routes refused B's key on A's \
         resources",
        routes.len(),
        routes.len() - documented,
        UNDOCUMENTED_ADMIN.len(),
        v1_refused.len(),
    );
}

/// Every frame of `ws` up to the `pong` answering a fresh ping.
async fn frames_until_pong(ws: &mut Ws, id: &str) -> Vec<Value> {
    ws.send(json!({"type": "ping", "id": id})).await;
    let mut seen = Vec::new();
    loop {
        let v = ws.recv().await;
        if v["type"] == "pong" && v["id"] == id {
            return seen;
        }
        seen.push(v);
    }
}

/// The `error` frame answering request `id` (other frames skipped).
async fn error_for(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = ws.recv().await;
        if v["id"] == id {
            assert_eq!(v["type"], "error", "{v}");
            return v;
        }
    }
}

/// Tenant B's device aims every client frame at tenant A: `send` and `typing` to A's
/// address and group are `not_found`, a `receipt` for A's message reaches no one,
/// `sync` returns B's own inbox only, and a token claiming B's tenant for A's device
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_never_cross_tenants() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a1 = ta.device().await;
    let a2 = ta.device().await;
    let b1 = tb.device().await;
    let b2 = tb.device().await;
    let (status, g) = ta
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "A", "members": [a1.address, a2.address]})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let a_group = g["group_id"].as_str().unwrap().to_owned();

    let mut wa1 = ta.connect(&a1).await;
    let mut wa2 = ta.connect(&a2).await;
    let mut wb1 = tb.connect(&b1).await;

    // A message inside A: a1 → a2.
    let ack = wa1
        .send_to("a-1", &a2.address, json!({"text": "inside A"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let a_message = ack["message_id"].as_str().unwrap().to_owned();
    let got = wa2.recv_type("message").await;
    assert_eq!(got["message_id"], a_message.as_str());

    // send to A's address and to A's group.
    let e = wb1
        .send_to("x-to", &a2.address, json!({"text": "from B"}))
        .await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("not_found")),
        "{e}"
    );
    wb1.send(
        json!({"type": "send", "id": "x-group", "group": a_group, "body": {"text": "from B"}}),
    )
    .await;
    let e = wb1.answer("x-group").await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("not_found")),
        "{e}"
    );

    // typing to A's address and to A's group.
    wb1.send(json!({"type": "typing", "id": "t-to", "to": a2.address, "state": "composing"}))
        .await;
    let e = error_for(&mut wb1, "t-to").await;
    assert_eq!(e["code"], "not_found", "{e}");
    wb1.send(json!({"type": "typing", "id": "t-group", "group": a_group, "state": "composing"}))
        .await;
    let e = error_for(&mut wb1, "t-group").await;
    assert_eq!(e["code"], "not_found", "{e}");

    // receipt for A's message: ignored. B's ping answers after the receipt was handled.
    wb1.send(json!({"type": "receipt", "message_ids": [a_message], "status": "read"}))
        .await;
    let after_receipt = frames_until_pong(&mut wb1, "b-ping").await;
    assert!(
        after_receipt.iter().all(|f| f["type"] != "error"),
        "a receipt for foreign ids is ignored silently: {after_receipt:?}"
    );

    // Positive events that must come after anything B caused: a2's own typing and
    // receipt reach a1; a1's typing reaches a2.
    wa1.send(json!({"type": "typing", "to": a2.address, "state": "composing"}))
        .await;
    let mut before_typing = Vec::new();
    loop {
        let v = wa2.recv().await;
        if v["type"] == "typing" && v["from"] == a1.address.as_str() {
            break;
        }
        before_typing.push(v);
    }
    before_typing.extend(frames_until_pong(&mut wa2, "a2-ping").await);
    assert!(
        before_typing
            .iter()
            .all(|f| f["from"] != b1.address.as_str()),
        "A's device got something from B: {before_typing:?}"
    );

    wa2.send(json!({"type": "receipt", "message_ids": [a_message], "status": "delivered"}))
        .await;
    let mut a1_frames = Vec::new();
    loop {
        let v = wa1.recv().await;
        let done = v["type"] == "status" && v["by"] == a2.address.as_str();
        a1_frames.push(v);
        if done {
            break;
        }
    }
    a1_frames.extend(frames_until_pong(&mut wa1, "a1-ping").await);
    let statuses: Vec<&Value> = a1_frames.iter().filter(|f| f["type"] == "status").collect();
    assert_eq!(
        statuses.len(),
        1,
        "exactly a2's status reached a1: {a1_frames:?}"
    );
    assert_eq!(statuses[0]["message_id"], a_message.as_str());
    assert_eq!(
        statuses[0]["status"], "delivered",
        "B's `read` did not count"
    );
    assert!(
        a1_frames
            .iter()
            .all(|f| f["by"] != b1.address.as_str() && f["from"] != b1.address.as_str()),
        "a1 got something from B: {a1_frames:?}"
    );

    // sync returns B's own inbox only: one message b2 → b1.
    let (status, sent) = tb
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", b2.id),
            Some(json!({"to": b1.address, "body": {"text": "inside B"}})),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let b_message = sent["message_id"].as_str().unwrap();
    let items = wb1.sync_all(0, 1000).await;
    assert!(!items.is_empty(), "B's inbox has its message");
    let b_addresses = [b1.address.as_str(), b2.address.as_str()];
    for item in &items {
        assert_ne!(
            item["message_id"],
            a_message.as_str(),
            "A's message in B's sync: {item}"
        );
        assert_eq!(item["type"], "message", "{item}");
        assert_eq!(item["message_id"], b_message, "only B's message: {item}");
        assert!(
            b_addresses.contains(&item["from"].as_str().unwrap()),
            "{item}"
        );
        assert!(
            b_addresses.contains(&item["to"].as_str().unwrap()),
            "{item}"
        );
    }
    let (status, a_inbox) = ta
        .call("GET", &format!("/v1/devices/{}/messages", a2.id), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        a_inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["from"] != b1.address.as_str()),
        "{a_inbox}"
    );

    // A correctly signed token that names A's device under B's tenant is refused.
    let state = &server.running.as_ref().unwrap().state;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = state
        .tokens
        .issue(&DeviceClaims {
            sub: a1.id.clone(),
            tid: tb.id.clone(),
            exp: now_s + 600,
            iat: now_s,
        })
        .unwrap();
    let refused = handshake(&server.ws_base, &forged, &[]).await.unwrap_err();
    assert_eq!(refused.status, 401, "{}", refused.body);
}

/// A refused WebSocket handshake.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws?token=` with extra request headers: the upgraded stream, or the
/// HTTP answer that refused it.
async fn handshake(
    ws_base: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<WsStream, Refused> {
    let mut req = format!("{ws_base}/v1/ws?token={token}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timeout")
    {
        Ok((stream, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(stream)
        }
        Err(tungstenite::Error::Http(res)) => Err(Refused {
            status: res.status().as_u16(),
            retry_after: res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        }),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// Reads the `ready` frame of a fresh stream.
async fn expect_ready(stream: WsStream) -> Ws {
    let mut ws = Ws {
        stream,
        ready: Value::Null,
    };
    let ready = ws.recv().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ws.ready = ready;
    ws
}

/// With `ws_allowed_origins`, a browser from another origin gets 403 and no upgrade;
/// the listed origin and clients without `Origin` connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origin_allow_list() {
    let server = TestServer::start_with(|c| {
        c.ws_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let t = server.tenant().await;
    let d = t.device().await;
    let token = t.token(&d).await;

    let refused = handshake(
        &server.ws_base,
        &token,
        &[("Origin", "https://evil.example")],
    )
    .await
    .expect_err("another origin must not upgrade");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "forbidden", "{refused:?}");

    let listed = handshake(
        &server.ws_base,
        &token,
        &[("Origin", "https://app.example")],
    )
    .await
    .expect("the listed origin upgrades");
    let ws = expect_ready(listed).await;
    assert_eq!(ws.ready["device_id"], d.id.as_str());

    let native = handshake(&server.ws_base, &token, &[])
        .await
        .expect("a client without Origin upgrades");
    expect_ready(native).await;
}

/// `access-control-allow-origin` of an answer, if any.
fn allow_origin(a: &Answer) -> Option<&str> {
    a.headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

/// CORS is off by default (no CORS headers for anyone); with
/// `cors_allowed_origins` the listed origin (and the server's own) gets preflights
/// and actual requests answered with its origin, any other origin gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_follows_the_allow_list() {
    let preflight = |origin: &'static str| {
        [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ]
    };

    // Default: no CORS layer at all.
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = request(
        &server,
        "GET",
        "/v1/devices",
        Some(&t.key),
        &[("Origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(allow_origin(&a), None, "default config sends CORS headers");
    let a = request(
        &server,
        "OPTIONS",
        "/v1/devices",
        None,
        &preflight("https://app.example"),
        None,
    )
    .await;
    assert_eq!(allow_origin(&a), None, "default config answers a preflight");

    // With an allow-list.
    let server = TestServer::start_with(|c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let t = server.tenant().await;
    let a = request(
        &server,
        "OPTIONS",
        "/v1/devices",
        None,
        &preflight("https://app.example"),
        None,
    )
    .await;
    assert!(
        (200..300).contains(&a.status),
        "preflight: {} {}",
        a.status,
        a.body
    );
    assert_eq!(allow_origin(&a), Some("https://app.example"));
    let methods = a
        .headers
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "allowed methods: {methods:?}");

    let a = request(
        &server,
        "GET",
        "/v1/devices",
        Some(&t.key),
        &[("Origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(allow_origin(&a), Some("https://app.example"));

    let own = server.base.clone();
    let a = request(
        &server,
        "GET",
        "/v1/devices",
        Some(&t.key),
        &[("Origin", own.as_str())],
        None,
    )
    .await;
    assert_eq!(
        allow_origin(&a),
        Some(own.as_str()),
        "the server's own origin"
    );

    let a = request(
        &server,
        "OPTIONS",
        "/v1/devices",
        None,
        &preflight("https://evil.example"),
        None,
    )
    .await;
    assert_eq!(
        allow_origin(&a),
        None,
        "preflight from another origin: {}",
        a.status
    );
    assert!(
        !(200..300).contains(&a.status),
        "preflight from another origin: {}",
        a.status
    );
    let a = request(
        &server,
        "GET",
        "/v1/devices",
        Some(&t.key),
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(allow_origin(&a), None, "actual request from another origin");
}

/// Per client IP: the connection after `ip_max_connections` gets 429 until one
/// closes; the handshake after `ip_handshakes_per_minute` gets 429 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_and_handshake_limits() {
    let server = TestServer::start_with(|c| c.ip_max_connections = 3).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let token = t.token(&d).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let stream = handshake(&server.ws_base, &token, &[])
            .await
            .expect("under the limit");
        open.push(expect_ready(stream).await);
    }
    let refused = handshake(&server.ws_base, &token, &[])
        .await
        .expect_err("the 4th connection from one IP");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "rate_limited", "{refused:?}");

    // Close one; the server releases its slot when the connection ends.
    let mut closing = open.pop().unwrap();
    closing.stream.close(None).await.unwrap();
    while let Ok(Some(_)) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut closing.stream)).await
    {}
    let deadline = tokio::time::Instant::now() + WAIT;
    let reopened = loop {
        match handshake(&server.ws_base, &token, &[]).await {
            Ok(stream) => break stream,
            Err(r) if r.status == 429 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(r) => panic!("no slot freed after a close: {r:?}"),
        }
    };
    expect_ready(reopened).await;

    let server = TestServer::start_with(|c| c.ip_handshakes_per_minute = 5).await;
    let t = server.tenant().await;
    let d = t.device().await;
    let token = t.token(&d).await;
    for i in 0..5 {
        let stream = handshake(&server.ws_base, &token, &[])
            .await
            .unwrap_or_else(|r| panic!("handshake {} of 5 refused: {r:?}", i + 1));
        expect_ready(stream).await;
    }
    let refused = handshake(&server.ws_base, &token, &[])
        .await
        .expect_err("the 6th handshake in a row");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "rate_limited", "{refused:?}");
    let retry_after: u64 = refused
        .retry_after
        .as_deref()
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
}
