//! The REST API end to end: admin, API keys, devices, tokens, contacts, groups,
//! synchronous sends and history, rate limits, error shapes, `/openapi.json`, `/health`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::{address, Device, Tenant, TestServer};

/// Unix milliseconds now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Asserts the `{"error":{"code","message"}}` shape with `code`.
#[track_caller]
fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// A path segment for an address (`+` encoded).
fn enc(address: &str) -> String {
    address.replace('+', "%2B")
}

/// Registers a device with a given address and name; returns the raw answer.
async fn create_device(t: &Tenant, address: &str, name: &str) -> (u16, Value) {
    t.call(
        "POST",
        "/v1/devices",
        Some(json!({"address": address, "name": name})),
    )
    .await
}

/// A synchronous REST send of `body` (the request JSON) as `from`.
async fn send(t: &Tenant, from: &Device, body: Value) -> (u16, Value) {
    t.call(
        "POST",
        &format!("/v1/devices/{}/messages", from.id),
        Some(body),
    )
    .await
}

/// A 1:1 send that must succeed; returns the answer.
async fn send_ok(t: &Tenant, from: &Device, to: &str, text: &str) -> Value {
    let (status, body) = send(t, from, json!({"to": to, "body": {"text": text}})).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// One history page of a device.
async fn history(t: &Tenant, d: &Device, query: &str) -> Value {
    let (status, body) = t
        .call(
            "GET",
            &format!("/v1/devices/{}/messages{query}", d.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Items of a history page.
fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().expect("items array")
}

/// A raw request with reqwest, for headers and non-JSON bodies.
async fn raw(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let res = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("HTTP timeout")
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

// ---------------------------------------------------------------- admin, API keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_tenant_requires_the_admin_token() {
    let server = TestServer::start().await;
    let body = json!({"name": "acme"});

    let (status, answer) = server
        .call("POST", "/admin/tenants", None, Some(body.clone()))
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_error(&answer, "unauthorized");

    let (status, answer) = server
        .call(
            "POST",
            "/admin/tenants",
            Some("not-the-admin-token"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_error(&answer, "unauthorized");

    let (status, answer) = server
        .call(
            "POST",
            "/admin/tenants",
            Some(&server.admin_token),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let tenant_id = answer["tenant_id"].as_str().expect("tenant_id");
    let api_key = answer["api_key"].as_str().expect("api_key");
    assert!(!tenant_id.is_empty());
    assert!(api_key.len() >= 16, "short api key {api_key:?}");

    // The key works on /v1 and sees an empty tenant.
    let (status, list) = server.call("GET", "/v1/devices", Some(api_key), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["devices"], json!([]));

    // A second tenant gets a different id and key.
    let (status, second) = server
        .call(
            "POST",
            "/admin/tenants",
            Some(&server.admin_token),
            Some(json!({"name": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["tenant_id"], tenant_id);
    assert_ne!(second["api_key"], api_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_tenant_rejects_an_empty_name() {
    let server = TestServer::start().await;
    for name in ["", "   "] {
        let (status, answer) = server
            .call(
                "POST",
                "/admin/tenants",
                Some(&server.admin_token),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, 400, "name {name:?}: {answer}");
        assert_error(&answer, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_missing_or_wrong_is_unauthorized() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;

    let (status, answer) = server.call("GET", "/v1/devices", None, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_error(&answer, "unauthorized");

    let (status, answer) = server
        .call("GET", "/v1/devices", Some("sk_wrong"), None)
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_error(&answer, "unauthorized");

    // The admin token is not a tenant key.
    let (status, answer) = server
        .call("GET", "/v1/devices", Some(&server.admin_token), None)
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_error(&answer, "unauthorized");

    // Creating without a key creates nothing.
    let (status, answer) = server
        .call(
            "POST",
            "/v1/devices",
            None,
            Some(json!({"address": address(), "name": "x"})),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    let (status, list) = tenant.call("GET", "/v1/devices", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["devices"], json!([]));
}

// ---------------------------------------------------------------- devices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_create_get_and_conflicts() {
    let server = TestServer::start().await;
    let t1 = server.tenant().await;
    let t2 = server.tenant().await;
    let addr = address();

    let (status, created) = create_device(&t1, &addr, "Sales 1").await;
    assert_eq!(status, 201, "{created}");
    let id = created["device_id"].as_str().expect("device_id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(created["address"], addr.as_str());
    assert_eq!(created["name"], "Sales 1");
    assert_eq!(created["connected"], false);
    assert_eq!(created["last_seen"], Value::Null);

    let (status, got) = t1.call("GET", &format!("/v1/devices/{id}"), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["device_id"], id.as_str());
    assert_eq!(got["address"], addr.as_str());
    assert_eq!(got["name"], "Sales 1");
    assert_eq!(got["connected"], false);
    assert_eq!(got["last_seen"], Value::Null);

    // Same address, same tenant: conflict.
    let (status, dup) = create_device(&t1, &addr, "Sales 1 again").await;
    assert_eq!(status, 409, "{dup}");
    assert_error(&dup, "conflict");

    // Same address, another tenant: fine, and a different device.
    let (status, other) = create_device(&t2, &addr, "Elsewhere").await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["device_id"], id.as_str());

    // The first tenant still has exactly one device.
    let (status, list) = t1.call("GET", "/v1/devices", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["devices"].as_array().unwrap().len(), 1, "{list}");

    let (status, missing) = t1.call("GET", "/v1/devices/d_nosuchdevice", None).await;
    assert_eq!(status, 404, "{missing}");
    assert_error(&missing, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_create_rejects_invalid_addresses() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    for bad in ["12345", "+0123", "+1", "+1555abc", "", "+1234567890123456"] {
        let (status, answer) = create_device(&tenant, bad, "x").await;
        assert_eq!(status, 400, "address {bad:?}: {answer}");
        assert_error(&answer, "bad_request");
    }
    let (status, answer) = tenant
        .call("POST", "/v1/devices", Some(json!({"name": "no address"})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");
    let (status, answer) = tenant
        .call("POST", "/v1/devices", Some(json!({"address": 15550001})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");

    let (_, list) = tenant.call("GET", "/v1/devices", None).await;
    assert_eq!(list["devices"], json!([]), "nothing was created: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_pages_by_id() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let other = server.tenant().await;
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        created.insert(tenant.device().await.id);
    }
    other.device().await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("/v1/devices?limit=2&after={a}"),
            None => "/v1/devices?limit=2".to_owned(),
        };
        let (status, page) = tenant.call("GET", &query, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let devices = page["devices"].as_array().expect("devices");
        assert!(devices.len() <= 2, "{page}");
        for d in devices {
            seen.push(d["device_id"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str), "{page}");
                after = Some(next.to_owned());
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = created.into_iter().collect();
    assert_eq!(seen, expected, "every device once, in id order");

    for bad in ["limit=0", "limit=1001", "limit=abc"] {
        let (status, answer) = tenant
            .call("GET", &format!("/v1/devices?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_error(&answer, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_delete_removes_it_and_revokes_its_tokens() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let keep = tenant.device().await;
    let token = tenant.token(&d).await;

    let (status, answer) = tenant
        .call("DELETE", &format!("/v1/devices/{}", d.id), None)
        .await;
    assert_eq!(status, 204, "{answer}");

    let (status, answer) = tenant
        .call("GET", &format!("/v1/devices/{}", d.id), None)
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    let (status, answer) = tenant
        .call("DELETE", &format!("/v1/devices/{}", d.id), None)
        .await;
    assert_eq!(status, 404, "second delete: {answer}");

    // The old token no longer upgrades.
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("{}/v1/ws?token={token}", server.ws_base)),
    )
    .await
    .expect("connect timeout");
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 401)
        }
        Err(e) => panic!("expected HTTP 401, got {e}"),
        Ok(_) => panic!("a deleted device's token still upgrades"),
    }

    // The other device is untouched.
    let (status, list) = tenant.call("GET", "/v1/devices", None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![keep.id.as_str()]);

    // The address is free again.
    let (status, again) = create_device(&tenant, &d.address, "reborn").await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["device_id"], d.id.as_str());
    assert_eq!(again["address"], d.address.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_connected_flag_follows_the_websocket() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let path = format!("/v1/devices/{}", d.id);

    let mut ws = tenant.connect(&d).await;
    let (status, got) = tenant.call("GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["connected"], true, "{got}");
    assert!(got["last_seen"].is_i64(), "{got}");

    let before_close = now_ms();
    ws.stream.close(None).await.unwrap();
    drop(ws);

    let deadline = Instant::now() + Duration::from_secs(3);
    let got = loop {
        let (status, got) = tenant.call("GET", &path, None).await;
        assert_eq!(status, 200, "{got}");
        if got["connected"] == false {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "still connected 3 s after close: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_seen = got["last_seen"].as_i64().expect("last_seen is a number");
    assert!(
        last_seen >= before_close - 1000 && last_seen <= now_ms() + 1000,
        "last_seen {last_seen} not around the close ({before_close}): {got}"
    );
}

// ---------------------------------------------------------------- tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_as_asked() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let path = format!("/v1/devices/{}/tokens", d.id);

    let (status, answer) = tenant.call("POST", &path, None).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer["token"].as_str().is_some_and(|t| t.len() > 20),
        "{answer}"
    );
    let expires = answer["expires_at"].as_i64().expect("expires_at ms");
    let want = now_ms() + 24 * 3600 * 1000;
    assert!(
        (expires - want).abs() < 5_000,
        "default ttl: {expires} vs {want}"
    );

    let (status, answer) = tenant
        .call("POST", &path, Some(json!({"ttl_secs": 60})))
        .await;
    assert_eq!(status, 201, "{answer}");
    let expires = answer["expires_at"].as_i64().expect("expires_at ms");
    let want = now_ms() + 60_000;
    assert!(
        (expires - want).abs() < 5_000,
        "ttl 60: {expires} vs {want}"
    );

    let (status, answer) = tenant
        .call("POST", &path, Some(json!({"ttl_secs": 0})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");

    let (status, answer) = tenant
        .call("POST", "/v1/devices/d_nosuchdevice/tokens", None)
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");
}

// ---------------------------------------------------------------- contacts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_upsert_and_list_sorted() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let path = format!("/v1/devices/{}/contacts", d.id);

    let contacts = json!({"contacts": [
        {"address": "+15550300003", "name": "Carol"},
        {"address": "+15550300001", "name": "Alice"},
        {"address": "+15550300002", "name": "Bob"},
    ]});
    let (status, answer) = tenant.call("PUT", &path, Some(contacts)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"upserted": 3}));

    // The same address again with a new name updates it (no GET in between here; see
    // `contacts_update_after_a_read_is_visible` for the read-then-write case).
    let (status, answer) = tenant
        .call(
            "PUT",
            &path,
            Some(json!({"contacts": [{"address": "+15550300002", "name": "Robert"}]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"upserted": 1}));

    let (status, got) = tenant.call("GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got,
        json!({"contacts": [
            {"address": "+15550300001", "name": "Alice"},
            {"address": "+15550300002", "name": "Robert"},
            {"address": "+15550300003", "name": "Carol"},
        ]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_update_after_a_read_is_visible() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let path = format!("/v1/devices/{}/contacts", d.id);

    let (status, empty) = tenant.call("GET", &path, None).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty, json!({"contacts": []}));

    let contacts = json!({"contacts": [
        {"address": "+15550310002", "name": "Bob"},
        {"address": "+15550310001", "name": "Alice"},
    ]});
    let (status, answer) = tenant.call("PUT", &path, Some(contacts)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"upserted": 2}));
    let (_, got) = tenant.call("GET", &path, None).await;
    assert_eq!(
        got["contacts"],
        json!([
            {"address": "+15550310001", "name": "Alice"},
            {"address": "+15550310002", "name": "Bob"},
        ]),
        "GET after PUT shows the new contacts"
    );

    let (status, _) = tenant
        .call(
            "PUT",
            &path,
            Some(json!({"contacts": [{"address": "+15550310002", "name": "Robert"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, got) = tenant.call("GET", &path, None).await;
    assert_eq!(
        got["contacts"],
        json!([
            {"address": "+15550310001", "name": "Alice"},
            {"address": "+15550310002", "name": "Robert"},
        ]),
        "GET after a second PUT shows the changed name"
    );
}

fn many_contacts(n: usize) -> Value {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"address": format!("+1666{i:07}"), "name": format!("c{i}")}))
        .collect();
    json!({ "contacts": list })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_limit_is_ten_thousand_per_call() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let other = tenant.device().await;
    let path = format!("/v1/devices/{}/contacts", d.id);

    let (status, answer) = tenant.call("PUT", &path, Some(many_contacts(10_000))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"upserted": 10_000}));

    // One over the limit becomes a background job (202 + job id) instead of a
    // synchronous upsert; the job's progress is tested in jobs.rs.
    let other_path = format!("/v1/devices/{}/contacts", other.id);
    let (status, answer) = tenant
        .call("PUT", &other_path, Some(many_contacts(10_001)))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["job_id"].as_str().is_some(), "{answer}");

    let (status, got) = tenant.call("GET", &path, None).await;
    assert_eq!(status, 200);
    let list = got["contacts"].as_array().expect("contacts");
    assert_eq!(list.len(), 10_000);
    assert_eq!(list[0]["address"], "+16660000000");
    assert_eq!(list[9_999]["address"], "+16660009999");
    assert_eq!(list[9_999]["name"], "c9999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_invalid_address_names_the_item() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let d = tenant.device().await;
    let path = format!("/v1/devices/{}/contacts", d.id);
    let mut list: Vec<Value> = (0..8)
        .map(|i| json!({"address": format!("+1777000000{i}"), "name": "ok"}))
        .collect();
    list[5] = json!({"address": "5550005", "name": "bad"});

    let (status, answer) = tenant
        .call("PUT", &path, Some(json!({ "contacts": list })))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("contacts[5]"), "{message}");

    let (_, got) = tenant.call("GET", &path, None).await;
    assert_eq!(got["contacts"], json!([]), "a refused call stores nothing");
}

// ---------------------------------------------------------------- groups

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_get_add_and_remove_members() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let (a, b, c, d) = (
        "+15550400001",
        "+15550400002",
        "+15550400003",
        "+15550400004",
    );

    let (status, group) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "team", "members": [c, a, b, a]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["group_id"].as_str().expect("group_id").to_owned();
    assert_eq!(group["name"], "team");
    assert_eq!(group["members"], json!([a, b, c]), "sorted, deduplicated");

    let path = format!("/v1/groups/{gid}");
    let (status, got) = tenant.call("GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["group_id"], gid.as_str());
    assert_eq!(got["name"], "team");
    assert_eq!(got["members"], json!([a, b, c]));

    let (status, added) = tenant
        .call(
            "POST",
            &format!("{path}/members"),
            Some(json!({"members": [d, a]})),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["members"], json!([a, b, c, d]));

    let (status, removed) = tenant
        .call("DELETE", &format!("{path}/members/{}", enc(b)), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["members"], json!([a, c, d]));

    let (_, got) = tenant.call("GET", &path, None).await;
    assert_eq!(got["members"], json!([a, c, d]), "changes are stored");

    let (status, answer) = tenant
        .call("DELETE", &format!("{path}/members/{}", enc(b)), None)
        .await;
    assert_eq!(status, 404, "removing a non-member: {answer}");
    assert_error(&answer, "not_found");

    let (status, answer) = tenant.call("GET", "/v1/groups/g_nosuchgroup", None).await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_reject_invalid_members_and_names() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let (status, answer) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "team", "members": ["+15550500001", "not-a-number"]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("members[1]"),
        "{answer}"
    );

    let (status, answer) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "  ", "members": ["+15550500001"]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");

    let (status, group) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "team", "members": ["+15550500001"]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["group_id"].as_str().unwrap();
    let (status, answer) = tenant
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(json!({"members": ["+0555"]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");
    let (_, got) = tenant.call("GET", &format!("/v1/groups/{gid}"), None).await;
    assert_eq!(got["members"], json!(["+15550500001"]), "unchanged");
}

// ---------------------------------------------------------------- sync send, history

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_lands_in_both_inboxes() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;

    let before = now_ms();
    let (status, ack) = send(&tenant, &a, json!({"to": b.address, "body": {"text": "x"}})).await;
    assert_eq!(status, 201, "{ack}");
    let message_id = ack["message_id"].as_str().expect("message_id").to_owned();
    assert_eq!(ack["seq"], 1, "{ack}");
    let ts = ack["ts"].as_i64().expect("ts");
    assert!(ts >= before - 1000 && ts <= now_ms() + 1000, "{ack}");

    let page = history(&tenant, &b, "").await;
    assert_eq!(page["more"], false, "{page}");
    assert_eq!(page["next_after_seq"], 1, "{page}");
    let got = items(&page);
    assert_eq!(got.len(), 1, "{page}");
    let m = &got[0];
    assert_eq!(m["type"], "message");
    assert_eq!(m["message_id"], message_id.as_str());
    assert_eq!(m["seq"], 1);
    assert_eq!(m["ts"], ts);
    assert_eq!(m["from"], a.address.as_str());
    assert_eq!(m["to"], b.address.as_str());
    assert_eq!(m["body"], json!({"text": "x"}));

    let page = history(&tenant, &a, "").await;
    let own = items(&page);
    assert_eq!(own.len(), 1, "sender keeps its own copy: {page}");
    assert_eq!(own[0]["message_id"], message_id.as_str());
    assert_eq!(own[0]["seq"], 1);
    assert_eq!(own[0]["from"], a.address.as_str());
    assert_eq!(own[0]["to"], b.address.as_str());
    assert_eq!(own[0]["body"], json!({"text": "x"}));

    // A reply continues both inboxes' seqs.
    let reply = send_ok(&tenant, &b, &a.address, "y").await;
    assert_eq!(reply["seq"], 2, "{reply}");
    let page = history(&tenant, &a, "?after_seq=1").await;
    assert_eq!(items(&page).len(), 1, "{page}");
    assert_eq!(items(&page)[0]["seq"], 2);
    assert_eq!(items(&page)[0]["from"], b.address.as_str());
    assert_eq!(items(&page)[0]["message_id"], reply["message_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_with_after_seq_and_limit() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;

    let mut sent = Vec::new();
    for i in 0..25 {
        let ack = send_ok(&tenant, &a, &b.address, &format!("m{i}")).await;
        assert_eq!(ack["seq"], i + 1, "sender seqs 1, 2, …: {ack}");
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }

    let mut after = 0u64;
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    let mut shape = Vec::new();
    loop {
        let page = history(&tenant, &b, &format!("?after_seq={after}&limit=10")).await;
        let list = items(&page);
        assert!(list.len() <= 10);
        for m in list {
            seqs.push(m["seq"].as_u64().unwrap());
            ids.push(m["message_id"].as_str().unwrap().to_owned());
        }
        let next = page["next_after_seq"].as_u64().expect("next_after_seq");
        let more = page["more"].as_bool().expect("more");
        shape.push((list.len(), next, more));
        if !more {
            break;
        }
        after = next;
        assert!(shape.len() < 10, "paging does not end");
    }
    assert_eq!(shape, vec![(10, 10, true), (10, 20, true), (5, 25, false)]);
    assert_eq!(seqs, (1..=25).collect::<Vec<u64>>());
    assert_eq!(ids, sent, "same messages, in send order");

    // Past the end: empty, next stays put.
    let page = history(&tenant, &b, "?after_seq=25&limit=10").await;
    assert_eq!(
        page,
        json!({"items": [], "next_after_seq": 25, "more": false})
    );

    let page = history(&tenant, &b, "?after_seq=20&limit=5").await;
    assert_eq!(page["more"], false);
    assert_eq!(items(&page).len(), 5);

    for bad in ["limit=0", "limit=1001", "after_seq=-1"] {
        let (status, answer) = tenant
            .call("GET", &format!("/v1/devices/{}/messages?{bad}", b.id), None)
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_error(&answer, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rejects_bad_targets_and_bodies() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let (_, group) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap();

    let (status, answer) = send(
        &tenant,
        &a,
        json!({"to": "+19999999999", "body": {"text": "x"}}),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    let (status, answer) = send(
        &tenant,
        &a,
        json!({"group": "g_nosuchgroup", "body": {"text": "x"}}),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    let cases = [
        json!({"to": b.address, "body": 5}),
        json!({"to": b.address, "body": "text"}),
        json!({"to": b.address, "body": [1]}),
        json!({"to": b.address}),
        json!({"to": b.address, "group": gid, "body": {"text": "x"}}),
        json!({"body": {"text": "x"}}),
        json!({"to": "12345", "body": {"text": "x"}}),
        json!({"to": b.address, "body": {}, "priority": "urgent"}),
        json!({"to": b.address, "body": {}, "id": "x".repeat(65)}),
    ];
    for case in cases {
        let (status, answer) = send(&tenant, &a, case.clone()).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_error(&answer, "bad_request");
    }

    let (status, answer) = tenant
        .call(
            "POST",
            "/v1/devices/d_nosuchdevice/messages",
            Some(json!({"to": b.address, "body": {}})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    // Nothing was stored anywhere.
    assert_eq!(items(&history(&tenant, &a, "").await).len(), 0);
    assert_eq!(items(&history(&tenant, &b, "").await).len(), 0);
    // And the next good send is seq 1.
    assert_eq!(send_ok(&tenant, &a, &b.address, "ok").await["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_a_repeated_id_is_idempotent() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let req = json!({"id": "same", "to": b.address, "body": {"text": "once"}});

    let (status, first) = send(&tenant, &a, req.clone()).await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = send(&tenant, &a, req.clone()).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second, first, "the first answer again");

    // Even with a different body, the id wins.
    let (status, third) = send(
        &tenant,
        &a,
        json!({"id": "same", "to": b.address, "body": {"text": "other"}}),
    )
    .await;
    assert_eq!(status, 201, "{third}");
    assert_eq!(third["message_id"], first["message_id"]);

    assert_eq!(items(&history(&tenant, &b, "").await).len(), 1);
    assert_eq!(items(&history(&tenant, &a, "").await).len(), 1);

    // A new id is a new message.
    let (status, fresh) = send(
        &tenant,
        &a,
        json!({"id": "other", "to": b.address, "body": {"text": "twice"}}),
    )
    .await;
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["message_id"], first["message_id"]);
    assert_eq!(fresh["seq"], 2);
    let page = history(&tenant, &b, "").await;
    assert_eq!(items(&page).len(), 2, "{page}");
    assert_eq!(items(&page)[0]["body"], json!({"text": "once"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_reaches_every_member_once() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let c = tenant.device().await;
    let outsider = tenant.device().await;
    let (status, group) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address, c.address]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["group_id"].as_str().unwrap();

    let (status, ack) = send(&tenant, &a, json!({"group": gid, "body": {"text": "all"}})).await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["seq"], 1);

    for member in [&b, &c] {
        let page = history(&tenant, member, "").await;
        let list = items(&page);
        assert_eq!(list.len(), 1, "{page}");
        assert_eq!(list[0]["type"], "message");
        assert_eq!(list[0]["message_id"], ack["message_id"]);
        assert_eq!(list[0]["seq"], 1);
        assert_eq!(list[0]["group"], gid);
        assert_eq!(list[0]["to"], Value::Null, "{page}");
        assert_eq!(list[0]["from"], a.address.as_str());
        assert_eq!(list[0]["body"], json!({"text": "all"}));
    }
    let page = history(&tenant, &a, "").await;
    let own = items(&page);
    assert_eq!(own.len(), 1, "the sender holds one copy only: {page}");
    assert_eq!(own[0]["message_id"], ack["message_id"]);
    assert_eq!(own[0]["group"], gid);

    assert_eq!(
        items(&history(&tenant, &outsider, "").await).len(),
        0,
        "a non-member gets nothing"
    );
    // A non-member may not send to the group.
    let (status, answer) = send(
        &tenant,
        &outsider,
        json!({"group": gid, "body": {"text": "let me in"}}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_error(&answer, "forbidden");
    assert_eq!(items(&history(&tenant, &b, "").await).len(), 1);
}

// ---------------------------------------------------------------- rate limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with(|cfg| {
        cfg.rate_limit_normal = 3;
        cfg.rate_limit_critical = 5;
    })
    .await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let path = format!("/v1/devices/{}/messages", a.id);
    let normal = json!({"to": b.address, "body": {"text": "n"}}).to_string();

    for i in 0..3 {
        let (status, _, answer) = raw(
            &server,
            reqwest::Method::POST,
            &path,
            Some(&tenant.key),
            Some("application/json"),
            Some(&normal),
        )
        .await;
        assert_eq!(status, 201, "send {i}: {answer}");
    }
    let (status, headers, answer) = raw(
        &server,
        reqwest::Method::POST,
        &path,
        Some(&tenant.key),
        Some("application/json"),
        Some(&normal),
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_error(&answer, "rate_limited");
    let retry_after: u64 = headers
        .get(reqwest::header::RETRY_AFTER)
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    // The critical tier has its own budget.
    let critical = json!({"to": b.address, "body": {"text": "c"}, "priority": "critical"});
    let (status, answer) = send(&tenant, &a, critical).await;
    assert_eq!(status, 201, "{answer}");

    // Refused sends are not stored: 3 normal + 1 critical.
    assert_eq!(items(&history(&tenant, &b, "").await).len(), 4);

    // Budgets are per device: another device still sends.
    let (status, answer) = send(&tenant, &b, json!({"to": a.address, "body": {"text": "n"}})).await;
    assert_eq!(status, 201, "{answer}");
}

// ---------------------------------------------------------------- errors, docs, health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_unknown_routes_answer_json_errors() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let key = Some(tenant.key.as_str());
    let post = reqwest::Method::POST;

    let (status, _, answer) = raw(
        &server,
        post.clone(),
        "/v1/devices",
        key,
        Some("application/json"),
        Some("{\"address\": "),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");

    let valid = json!({"address": address(), "name": "x"}).to_string();
    let (status, _, answer) = raw(
        &server,
        post.clone(),
        "/v1/devices",
        key,
        Some("text/plain"),
        Some(&valid),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert_error(&answer, "unsupported_media_type");

    let (status, _, answer) = raw(&server, post.clone(), "/v1/devices", key, None, None).await;
    assert_eq!(status, 400, "no body: {answer}");
    assert_error(&answer, "bad_request");

    let (status, _, answer) = raw(
        &server,
        post,
        "/admin/tenants",
        Some(&server.admin_token),
        Some("application/json"),
        Some("not json"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "bad_request");

    let (_, list) = tenant.call("GET", "/v1/devices", None).await;
    assert_eq!(list["devices"], json!([]), "nothing was created");

    for path in ["/v1/nope", "/nope", "/v1/devices/x/y/z"] {
        let (status, _, answer) = raw(&server, reqwest::Method::GET, path, key, None, None).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert_error(&answer, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_the_routes() {
    let server = TestServer::start().await;
    let (status, doc) = server.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "openapi version: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/devices/{id}/tokens",
        "/v1/devices/{id}/contacts",
        "/v1/devices/{id}/messages",
        "/admin/tenants",
        "/v1/groups",
        "/v1/groups/{id}",
    ] {
        assert!(paths.contains_key(p), "missing {p}: {:?}", paths.keys());
    }
    assert!(paths["/v1/devices"]["post"].is_object());
    assert!(paths["/v1/devices"]["get"].is_object());
    assert!(paths["/v1/devices/{id}/messages"]["post"].is_object());
    assert!(paths["/v1/devices/{id}/messages"]["get"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_ready() {
    let server = TestServer::start().await;
    let (status, health) = server.call("GET", "/health", None, None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(health["checks"]["store"]["ok"], true, "{health}");
}

/// `/health` turns 503 (not ready) as soon as the server starts draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_draining() {
    let mut server = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/health", server.base);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let running = server.running.take().unwrap();
    let drain = tokio::spawn(running.shutdown());
    // The pooled keep-alive connection is still served while the drain runs.
    let mut saw_503 = None;
    for _ in 0..200 {
        match http.get(&url).send().await {
            Ok(res) if res.status() == 503 => {
                saw_503 = Some(res.json::<serde_json::Value>().await.unwrap());
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            Err(_) => break,
        }
    }
    drain.await.unwrap();
    let body = saw_503.expect("no 503 while draining");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["shutting_down"], true, "{body}");
    assert_eq!(body["live"], true, "{body}");
}
