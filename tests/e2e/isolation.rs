//! Tenant isolation: one tenant's key never reaches another tenant's devices or groups,
//! and messages never cross tenants.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Device, Tenant, TestServer};

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

/// Registers a device with a given address.
async fn device_at(t: &Tenant, address: &str) -> Device {
    let (status, body) = t
        .call(
            "POST",
            "/v1/devices",
            Some(json!({"address": address, "name": "iso"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    Device {
        id: body["device_id"].as_str().unwrap().to_owned(),
        address: address.to_owned(),
    }
}

/// A device's inbox (first page), as the owning tenant sees it.
async fn inbox(t: &Tenant, d: &Device) -> Vec<Value> {
    let (status, page) = t
        .call("GET", &format!("/v1/devices/{}/messages", d.id), None)
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

/// A group of `members` in tenant `t`; returns its id.
async fn group(t: &Tenant, members: &[&str]) -> String {
    let (status, g) = t
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "iso", "members": members})),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    g["group_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_is_forbidden_on_every_device_route() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a = ta.device().await;
    let a2 = ta.device().await;
    let b = tb.device().await;

    // Give A's device some state to compare against afterwards.
    let (status, _) = ta
        .call(
            "PUT",
            &format!("/v1/devices/{}/contacts", a.id),
            Some(json!({"contacts": [{"address": "+15550600001", "name": "Mine"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, sent) = ta
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a.id),
            Some(json!({"to": a2.address, "body": {"text": "inside A"}})),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let (_, device_before) = ta.call("GET", &format!("/v1/devices/{}", a.id), None).await;
    let (_, contacts_before) = ta
        .call("GET", &format!("/v1/devices/{}/contacts", a.id), None)
        .await;
    let inbox_before = inbox(&ta, &a).await;
    let a2_inbox_before = inbox(&ta, &a2).await;

    let id = &a.id;
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/devices/{id}"), None),
        ("DELETE", format!("/v1/devices/{id}"), None),
        ("POST", format!("/v1/devices/{id}/tokens"), None),
        (
            "POST",
            format!("/v1/devices/{id}/tokens"),
            Some(json!({"ttl_secs": 60})),
        ),
        (
            "PUT",
            format!("/v1/devices/{id}/contacts"),
            Some(json!({"contacts": [{"address": "+15550600002", "name": "Intruder"}]})),
        ),
        ("GET", format!("/v1/devices/{id}/contacts"), None),
        (
            "POST",
            format!("/v1/devices/{id}/messages"),
            Some(json!({"to": a2.address, "body": {"text": "as A, by B"}})),
        ),
        (
            "POST",
            format!("/v1/devices/{id}/messages"),
            Some(json!({"to": b.address, "body": {"text": "as A, to B"}})),
        ),
        ("GET", format!("/v1/devices/{id}/messages"), None),
        (
            "GET",
            format!("/v1/devices/{id}/messages?after_seq=0&limit=10"),
            None,
        ),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = tb.call(method, &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_error(&answer, "forbidden");
        assert!(answer.get("token").is_none() && answer.get("items").is_none());
    }

    // B's listing does not show A's devices.
    let (_, list) = tb.call("GET", "/v1/devices", None).await;
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.id.as_str()]);

    // A's device is unchanged.
    let (status, device_after) = ta.call("GET", &format!("/v1/devices/{}", a.id), None).await;
    assert_eq!(status, 200, "{device_after}");
    assert_eq!(device_after, device_before);
    let (_, contacts_after) = ta
        .call("GET", &format!("/v1/devices/{}/contacts", a.id), None)
        .await;
    assert_eq!(contacts_after, contacts_before);
    assert_eq!(inbox(&ta, &a).await, inbox_before);
    assert_eq!(inbox(&ta, &a2).await, a2_inbox_before);
    assert!(inbox(&tb, &b).await.is_empty(), "nothing reached B");
    // A can still use its device.
    let ws = ta.connect(&a).await;
    assert_eq!(ws.ready["device_id"], a.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_group_is_forbidden() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let b = tb.device().await;
    let gid = group(&tb, &[&b.address]).await;

    let (status, answer) = ta.call("GET", &format!("/v1/groups/{gid}"), None).await;
    assert_eq!(status, 403, "{answer}");
    assert_error(&answer, "forbidden");
    assert!(answer.get("members").is_none());

    let (status, answer) = ta
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(json!({"members": ["+15550600009"]})),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_error(&answer, "forbidden");

    let enc = b.address.replace('+', "%2B");
    let (status, answer) = ta
        .call("DELETE", &format!("/v1/groups/{gid}/members/{enc}"), None)
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_error(&answer, "forbidden");

    let (status, g) = tb.call("GET", &format!("/v1/groups/{gid}"), None).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["members"], json!([b.address]), "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_an_address_of_another_tenant_is_not_found() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a = ta.device().await;
    let b = tb.device().await; // its address exists only in tenant B
    let mut wb = tb.connect(&b).await;

    let (status, answer) = ta
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a.id),
            Some(json!({"to": b.address, "body": {"text": "rest"}})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    let mut wa = ta.connect(&a).await;
    let answer = wa.send_to("cross", &b.address, json!({"text": "ws"})).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["id"], "cross", "{answer}");
    assert_eq!(answer["code"], "not_found", "{answer}");

    assert_eq!(
        wb.try_recv(Duration::from_millis(500)).await,
        None,
        "B received something"
    );
    assert!(inbox(&tb, &b).await.is_empty());
    assert!(inbox(&ta, &a).await.is_empty(), "no sender copy either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_address_only_reaches_the_senders_tenant() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a = ta.device().await;
    let shared = crate::common::address();
    let a_twin = device_at(&ta, &shared).await;
    let b_twin = device_at(&tb, &shared).await;
    let mut wb = tb.connect(&b_twin).await;
    let mut wt = ta.connect(&a_twin).await;

    let (status, ack) = ta
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a.id),
            Some(json!({"to": shared, "body": {"text": "for A's twin"}})),
        )
        .await;
    assert_eq!(status, 201, "{ack}");

    let got = wt.recv_type("message").await;
    assert_eq!(got["message_id"], ack["message_id"]);
    assert_eq!(got["from"], a.address.as_str());
    assert_eq!(
        wb.try_recv(Duration::from_millis(500)).await,
        None,
        "B's device with the same address received something"
    );
    assert!(inbox(&tb, &b_twin).await.is_empty());
    assert_eq!(inbox(&ta, &a_twin).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_another_tenants_group_is_not_found() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a = ta.device().await;
    let b = tb.device().await;
    let b2 = tb.device().await;
    // Even listing A's address as a member does not let A in.
    let gid = group(&tb, &[&b.address, &b2.address, &a.address]).await;
    let mut wb = tb.connect(&b).await;

    let (status, answer) = ta
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a.id),
            Some(json!({"group": gid, "body": {"text": "rest"}})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");

    let mut wa = ta.connect(&a).await;
    wa.send(json!({"type": "send", "id": "g1", "group": gid, "body": {"text": "ws"}}))
        .await;
    let answer = wa.answer("g1").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "not_found", "{answer}");

    assert_eq!(wb.try_recv(Duration::from_millis(500)).await, None);
    assert!(inbox(&tb, &b).await.is_empty());
    assert!(inbox(&tb, &b2).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_token_connects_as_its_own_tenant() {
    let server = TestServer::start().await;
    let ta = server.tenant().await;
    let tb = server.tenant().await;
    let a = ta.device().await;
    let b = tb.device().await;

    let wa = ta.connect(&a).await;
    assert_eq!(wa.ready["tenant_id"], ta.id.as_str(), "{}", wa.ready);
    assert_eq!(wa.ready["device_id"], a.id.as_str());
    assert_eq!(wa.ready["address"], a.address.as_str());

    let wb = tb.connect(&b).await;
    assert_eq!(wb.ready["tenant_id"], tb.id.as_str(), "{}", wb.ready);
    assert_eq!(wb.ready["device_id"], b.id.as_str());
    assert_ne!(ta.id, tb.id);
}
