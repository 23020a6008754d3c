//! Group sync (`POST /v1/groups/sync`): bulk create-or-replace of groups by key or
//! id as one background job with progress, validated whole, in the queue's lanes
//! (paused lane, cancel), and what a synced group does to the next group send.

use std::time::Duration;

use serde_json::{json, Value};

use crate::bulk::{job, wait_jobs};
use crate::common::{Tenant, TestServer, Ws};

const WAIT: Duration = Duration::from_secs(30);

/// `POST /v1/groups/sync`.
async fn sync(tenant: &Tenant, body: Value) -> (u16, Value) {
    tenant.call("POST", "/v1/groups/sync", Some(body)).await
}

/// Waits for a job to finish and answers its view.
pub async fn finished(tenant: &Tenant, id: &str) -> Value {
    finished_within(tenant, id, WAIT).await
}

/// Waits up to `within` for a job to finish and answers its view.
pub async fn finished_within(tenant: &Tenant, id: &str, within: Duration) -> Value {
    let ids = [id.to_owned()];
    let views = wait_jobs(tenant, &ids, within, |v| {
        ["completed", "failed", "cancelled"].contains(&v[0]["state"].as_str().unwrap_or(""))
    })
    .await;
    views[0].clone()
}

trait GroupSend {
    async fn group_send(&mut self, id: &str, group: &str, body: Value) -> Value;
}

impl GroupSend for Ws {
    /// Sends to a group and answers the `ack` (or `error`).
    async fn group_send(&mut self, id: &str, group: &str, body: Value) -> Value {
        self.send(json!({"type": "send", "id": id, "group": group, "body": body}))
            .await;
        self.answer(id).await
    }
}

fn ids(answer: &Value) -> Vec<String> {
    answer["group_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no group_ids: {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn members(tenant: &Tenant, group: &str) -> Value {
    let (s, g) = tenant
        .call("GET", &format!("/v1/groups/{group}"), None)
        .await;
    assert_eq!(s, 200, "{g}");
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_creates_groups_by_key_and_replaces_them_when_repeated() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let (a, b, c) = (
        tenant.device().await,
        tenant.device().await,
        tenant.device().await,
    );
    let (s, answer) = sync(
        &tenant,
        json!({"groups": [
            {"key": "crm-1", "name": "One", "members": [c.address, b.address, b.address]},
            {"key": "crm-2", "name": "Two", "members": [b.address]},
        ]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(answer["total"], 2);
    let groups = ids(&answer);
    let view = finished(&tenant, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["kind"], "groups", "{view}");
    assert_eq!(view["progress"], json!({"done": 2, "total": 2}), "{view}");
    assert!(view.get("device").is_none(), "a tenant-wide job: {view}");
    let one = members(&tenant, &groups[0]).await;
    assert_eq!(one["name"], "One");
    let mut want = vec![b.address.clone(), c.address.clone()];
    want.sort();
    assert_eq!(one["members"], json!(want), "{one}");

    // A send to the synced group reaches its members (b stays a member throughout).
    let mut ws_b = tenant.connect(&b).await;
    let mut ws_c = tenant.connect(&c).await;
    let ack = ws_b
        .group_send("s1", &groups[0], json!({"text": "hello one"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = ws_c.recv_type("message").await;
    assert_eq!(got["group"], groups[0].as_str(), "{got}");

    // The same key again: the same group, its members replaced.
    let (s, again) = sync(
        &tenant,
        json!({"groups": [{"key": "crm-1", "name": "One, renamed", "members": [b.address]}]}),
    )
    .await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(ids(&again), vec![groups[0].clone()]);
    let view = finished(&tenant, again["job_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "completed", "{view}");
    let one = members(&tenant, &groups[0]).await;
    assert_eq!(
        (one["name"].clone(), one["members"].clone()),
        (json!("One, renamed"), json!([b.address])),
        "{one}"
    );
    // c left the group: a group send no longer reaches it.
    let ack = ws_b
        .group_send("s2", &groups[0], json!({"text": "after"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // (the ack comes once every recipient row is durable: c's inbox is complete now)
    let (s, page) = tenant
        .call("GET", &format!("/v1/devices/{}/messages", c.id), None)
        .await;
    assert_eq!(s, 200, "{page}");
    let texts: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["body"]["text"])
        .collect();
    assert_eq!(texts, vec![&json!("hello one")], "{page}");
    drop(ws_c);

    // A group made over the API is synced by its id.
    let (s, made) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "Made", "members": [a.address]})),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    let made_id = made["group_id"].as_str().unwrap().to_owned();
    let (s, by_id) = sync(
        &tenant,
        json!({"groups": [{"group_id": made_id, "name": "Made", "members": [c.address]}], "priority": "high"}),
    )
    .await;
    assert_eq!(s, 202, "{by_id}");
    let view = finished(&tenant, by_id["job_id"].as_str().unwrap()).await;
    assert_eq!(
        (view["state"].clone(), view["priority"].clone()),
        (json!("completed"), json!("high")),
        "{view}"
    );
    assert_eq!(
        members(&tenant, &made_id).await["members"],
        json!([c.address])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_groups_in_one_sync_with_progress() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let groups: Vec<Value> = (0..3000)
        .map(|i| {
            json!({"key": format!("k{i}"), "name": format!("Group {i}"),
                   "members": [format!("+1555{:07}", i), format!("+1666{:07}", i)]})
        })
        .collect();
    let (s, answer) = sync(&tenant, json!({ "groups": groups })).await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(answer["total"], 3000);
    let ids = ids(&answer);
    assert_eq!(ids.len(), 3000);
    let view = finished(&tenant, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["progress"], json!({"done": 3000, "total": 3000}));
    let last = members(&tenant, &ids[2999]).await;
    assert_eq!(last["name"], "Group 2999");
    assert_eq!(last["members"], json!(["+15550002999", "+16660002999"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_is_checked_whole_before_anything_is_queued() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let member = tenant.device().await.address;
    for (body, needle) in [
        (json!({"groups": []}), "must not be empty"),
        (
            json!({"groups": [{"key": "a", "name": "A", "members": [member]},
                              {"key": "b", "name": "B", "members": [member, "5550001"]}]}),
            "groups[1].members[1]",
        ),
        (
            json!({"groups": [{"key": "a", "group_id": "g_x", "name": "A", "members": []}]}),
            "either `key` or `group_id`",
        ),
        (
            json!({"groups": [{"key": "a", "name": " ", "members": []}]}),
            "groups[0].name",
        ),
        (
            json!({"groups": [{"key": "a", "name": "A", "members": [], "extra": 1}]}),
            "extra",
        ),
        (
            json!({"groups": [{"key": "a", "name": "A", "members": []}], "priority": "urgent"}),
            "priority",
        ),
    ] {
        let (s, e) = sync(&tenant, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let too_many: Vec<String> = (0..1025).map(|i| format!("+1777{i:07}")).collect();
    let (s, e) = sync(
        &tenant,
        json!({"groups": [{"key": "big", "name": "Big", "members": too_many}]}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (413, json!("too_large")),
        "{e}"
    );

    // Ids must be the tenant's own groups.
    let (s, e) = sync(
        &tenant,
        json!({"groups": [{"group_id": "g_nope", "name": "A", "members": []}]}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (404, json!("not_found")),
        "{e}"
    );
    let other = server.tenant().await;
    let (s, theirs) = other
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "Theirs", "members": []})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, e) = sync(
        &tenant,
        json!({"groups": [{"group_id": theirs["group_id"], "name": "Mine now", "members": [member]}]}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (403, json!("forbidden")),
        "{e}"
    );
    let (_, still) = other
        .call(
            "GET",
            &format!("/v1/groups/{}", theirs["group_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(still["name"], "Theirs");
    // The same key in two tenants names two groups.
    let (_, mine) = sync(
        &tenant,
        json!({"groups": [{"key": "k", "name": "A", "members": []}]}),
    )
    .await;
    let (_, yours) = sync(
        &other,
        json!({"groups": [{"key": "k", "name": "B", "members": []}]}),
    )
    .await;
    assert_ne!(ids(&mine), ids(&yours));
    // Without the API key.
    let (s, _) = server
        .call("POST", "/v1/groups/sync", None, Some(json!({"groups": []})))
        .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_waits_in_a_paused_lane_and_can_be_cancelled() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let admin = Some(server.admin_token.as_str());
    let (s, body) = server
        .call("POST", "/admin/queues/lanes/low/pause", admin, None)
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, answer) = sync(
        &tenant,
        json!({"groups": [{"key": "later", "name": "Later", "members": []}], "priority": "low"}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let id = answer["job_id"].as_str().unwrap();
    assert_eq!(job(&tenant, id).await["state"], "waiting");
    let (s, cancelled) = tenant.call("DELETE", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(
        (s, cancelled["state"].clone()),
        (200, json!("cancelled")),
        "{cancelled}"
    );
    let (s, body) = server
        .call("POST", "/admin/queues/lanes/low/resume", admin, None)
        .await;
    assert_eq!(s, 200, "{body}");
    // A later sync in the same lane runs; the cancelled one never did.
    let (_, next) = sync(
        &tenant,
        json!({"groups": [{"key": "now", "name": "Now", "members": []}], "priority": "low"}),
    )
    .await;
    let view = finished(&tenant, next["job_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "completed", "{view}");
    let group = &ids(&answer)[0];
    let (s, _) = tenant
        .call("GET", &format!("/v1/groups/{group}"), None)
        .await;
    assert_eq!(s, 404, "the cancelled sync created its group");
    assert_eq!(job(&tenant, id).await["state"], "cancelled");
}
