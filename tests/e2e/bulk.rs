//! Rate budgets (device tier, tenant, global, device→recipient pair) over REST and
//! WebSocket, and bulk sends through the durable queue.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Device, Tenant, TestServer};

/// A sync REST send; returns status, Retry-After (seconds) and body.
pub async fn send_rest(tenant: &Tenant, from: &Device, body: Value) -> (u16, Option<u64>, Value) {
    let res = tenant
        .http
        .post(format!("{}/v1/devices/{}/messages", tenant.base, from.id))
        .bearer_auth(&tenant.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let text = res.text().await.unwrap();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// `GET /v1/jobs/{id}`.
pub async fn job(tenant: &Tenant, id: &str) -> Value {
    let (status, body) = tenant.call("GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls jobs until `done(states)` holds, up to `within`; returns the last views.
pub async fn wait_jobs(
    tenant: &Tenant,
    ids: &[String],
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.push(job(tenant, id).await);
        }
        if done(&views) || tokio::time::Instant::now() >= deadline {
            return views;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many of `views` are in `state`.
pub fn count(views: &[Value], state: &str) -> usize {
    views.iter().filter(|v| v["state"] == state).count()
}

/// `POST /v1/messages/bulk`; returns status and body.
pub async fn bulk(tenant: &Tenant, body: Value) -> (u16, Value) {
    tenant.call("POST", "/v1/messages/bulk", Some(body)).await
}

/// The job ids of a 202 bulk answer.
pub fn job_ids(answer: &Value) -> Vec<String> {
    answer["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no job_ids: {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every message in a device's inbox (REST history pages).
pub async fn inbox(tenant: &Tenant, device: &Device) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let (status, page) = tenant
            .call(
                "GET",
                &format!(
                    "/v1/devices/{}/messages?after_seq={after}&limit=1000",
                    device.id
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        after = page["next_after_seq"].as_u64().unwrap();
        out.extend(items);
        if page["more"] != true {
            return out;
        }
    }
}

fn text(n: usize) -> Value {
    json!({"text": format!("m{n}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_budget_is_enforced_over_rest_and_websocket() {
    let server = TestServer::start_with(|c| c.rate_limit_normal = 4).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    for i in 0..2 {
        let (status, _, body) =
            send_rest(&tenant, &a, json!({"to": b.address, "body": text(i)})).await;
        assert_eq!(status, 201, "{body}");
    }
    // The same budget is spent over the WebSocket.
    let mut ws = tenant.connect(&a).await;
    for i in 0..2 {
        let ack = ws.send_to(&format!("w{i}"), &b.address, text(i)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let over = ws.send_to("w-over", &b.address, text(9)).await;
    assert_eq!(over["type"], "error", "{over}");
    assert_eq!(over["code"], "rate_limited");
    let wait = over["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=60_000).contains(&wait), "{over}");
    let (status, retry, body) =
        send_rest(&tenant, &a, json!({"to": b.address, "body": text(10)})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    assert_eq!(inbox(&tenant, &b).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_has_its_own_budget() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_normal = 2;
        c.rate_limit_critical = 3;
    })
    .await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    for i in 0..2 {
        let (s, _, body) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(i)})).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, _, _) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(2)})).await;
    assert_eq!(s, 429);
    for i in 0..3 {
        let (s, _, body) = send_rest(
            &tenant,
            &a,
            json!({"to": b.address, "body": text(i), "priority": "critical"}),
        )
        .await;
        assert_eq!(s, 201, "critical {i}: {body}");
    }
    let (s, _, body) = send_rest(
        &tenant,
        &a,
        json!({"to": b.address, "body": text(9), "priority": "critical"}),
    )
    .await;
    assert_eq!(s, 429, "{body}");
    // Another device of the tenant has its own budgets.
    let c = tenant.device().await;
    let (s, _, body) = send_rest(&tenant, &c, json!({"to": b.address, "body": text(0)})).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_budget_spans_its_devices_only() {
    let server = TestServer::start_with(|c| c.tenant_rate_per_minute = 3).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let (s, _, _) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(0)})).await;
    assert_eq!(s, 201);
    let (s, _, _) = send_rest(&tenant, &b, json!({"to": a.address, "body": text(1)})).await;
    assert_eq!(s, 201);
    let (s, _, _) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(2)})).await;
    assert_eq!(s, 201);
    let (s, retry, body) = send_rest(&tenant, &b, json!({"to": a.address, "body": text(3)})).await;
    assert_eq!(s, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant"),
        "{body}"
    );
    assert!(retry.is_some());
    // Over WebSocket too.
    let mut ws = tenant.connect(&a).await;
    let over = ws.send_to("t-over", &b.address, text(4)).await;
    assert_eq!(over["code"], "rate_limited", "{over}");
    assert!(over["retry_after_ms"].as_u64().is_some());
    // Another tenant is not affected.
    let other = server.tenant().await;
    let x = other.device().await;
    let y = other.device().await;
    let (s, _, body) = send_rest(&other, &x, json!({"to": y.address, "body": text(0)})).await;
    assert_eq!(s, 201, "{body}");
    // A refused send did not spend the device's own budget: 2 normal sends of `a`
    // went through, its bucket of 60 is far from empty, and only the tenant refused.
    assert_eq!(inbox(&tenant, &b).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_budget_spans_tenants() {
    let server = TestServer::start_with(|c| c.global_rate_per_minute = 3).await;
    let t1 = server.tenant().await;
    let t2 = server.tenant().await;
    let a = t1.device().await;
    let b = t1.device().await;
    let x = t2.device().await;
    let y = t2.device().await;
    for i in 0..2 {
        let (s, _, body) = send_rest(&t1, &a, json!({"to": b.address, "body": text(i)})).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, _, body) = send_rest(&t2, &x, json!({"to": y.address, "body": text(0)})).await;
    assert_eq!(s, 201, "{body}");
    let (s, retry, body) = send_rest(&t2, &x, json!({"to": y.address, "body": text(1)})).await;
    assert_eq!(s, 429, "{body}");
    assert!(retry.is_some());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server-wide"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_budget_limits_one_recipient() {
    // WhatsApp's pace: about one message per 6 s to the same user.
    let server = TestServer::start_with(|c| c.pair_rate_per_minute = 10).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let c = tenant.device().await;
    let (s, _, body) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(0)})).await;
    assert_eq!(s, 201, "{body}");
    let (s, retry, body) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(1)})).await;
    assert_eq!(s, 429, "{body}");
    assert!(retry.is_some_and(|r| (1..=6).contains(&r)), "{retry:?}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recipient"),
        "{body}"
    );
    // Another recipient, and another sender to the same recipient, are fine.
    let (s, _, body) = send_rest(&tenant, &a, json!({"to": c.address, "body": text(3)})).await;
    assert_eq!(s, 201, "{body}");
    let (s, _, body) = send_rest(&tenant, &c, json!({"to": b.address, "body": text(4)})).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_to_one_recipient_are_spaced() {
    // 60 a minute to one recipient: one per second, never bursting.
    let server = TestServer::start_with(|c| c.pair_rate_per_minute = 60).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let messages: Vec<Value> = (0..3)
        .map(|i| json!({"device": a.id, "to": b.address, "body": text(i)}))
        .collect();
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 3
    })
    .await;
    assert_eq!(count(&views, "completed"), 3, "{views:?}");
    let ts: Vec<i64> = inbox(&tenant, &b)
        .await
        .iter()
        .map(|m| m["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(ts.len(), 3);
    for w in ts.windows(2) {
        assert!(w[1] - w[0] >= 950, "sent {} ms apart", w[1] - w[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_lane_bulk_is_paced_not_failed() {
    let server = TestServer::start_with(|c| c.rate_limit_low = 30).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let messages: Vec<Value> = (0..40)
        .map(|i| json!({"device": a.id, "to": b.address, "body": text(i), "priority": "low"}))
        .collect();
    let (status, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(status, 202, "{answer}");
    let ids = job_ids(&answer);
    assert_eq!(ids.len(), 40);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 40);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") >= 30
    })
    .await;
    let completed = count(&views, "completed");
    // The device may send no more than 30 low messages in any minute.
    assert_eq!(completed, 30, "no more than 30 low sends in a minute");
    assert_eq!(count(&views, "failed"), 0);
    let queued = count(&views, "waiting") + count(&views, "delayed") + count(&views, "active");
    assert_eq!(completed + queued, 40, "{views:?}");
    for v in views.iter().filter(|v| v["state"] == "completed") {
        assert!(
            v["message_id"]
                .as_str()
                .is_some_and(|m| m.starts_with("m_")),
            "{v}"
        );
        assert_eq!(v["attempts"], 1, "{v}");
    }
    // The recipient got exactly the completed ones, no duplicates.
    let got = inbox(&tenant, &b).await;
    let unique: HashSet<&str> = got
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), got.len());
    assert_eq!(got.len(), 30);
    // Two seconds later the 10 still wait (delayed for the budget), none failed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let views = wait_jobs(&tenant, &ids, Duration::ZERO, |_| true).await;
    assert_eq!(count(&views, "completed"), 30);
    assert_eq!(count(&views, "failed"), 0);
    assert_eq!(
        count(&views, "waiting") + count(&views, "delayed"),
        10,
        "{views:?}"
    );
    for v in views.iter().filter(|v| v["state"] == "delayed") {
        assert_eq!(
            v["attempts"], 0,
            "waiting for a budget is not an attempt: {v}"
        );
        assert!(v["not_before"].as_i64().unwrap() > now_ms() - 1000, "{v}");
    }
    // The low budget is spent; a sync low send now is refused, a normal one is not.
    let (s, _, _) = send_rest(
        &tenant,
        &a,
        json!({"to": b.address, "body": text(99), "priority": "low"}),
    )
    .await;
    assert_eq!(s, 429);
    let (s, _, body) = send_rest(&tenant, &a, json!({"to": b.address, "body": text(98)})).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_validation_names_the_index() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let ok = |i: usize| json!({"device": a.id, "to": b.address, "body": text(i)});

    let (s, body) = bulk(
        &tenant,
        json!({"messages": [ok(0), ok(1), ok(2), {"device": a.id, "to": "nope", "body": {}}]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[3].to"),
        "{body}"
    );

    let (s, body) = bulk(
        &tenant,
        json!({"messages": [ok(0), {"device": a.id, "to": b.address, "body": "text"}]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1].body"),
        "{body}"
    );

    let (s, body) = bulk(&tenant, json!({"messages": [ok(0), {"device": a.id, "to": b.address, "body": {}, "priority": "urgent"}]})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1].priority"),
        "{body}"
    );

    let (s, body) = bulk(
        &tenant,
        json!({"messages": [ok(0), {"device": a.id, "body": {}}]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1]"),
        "{body}"
    );

    let (s, body) = bulk(&tenant, json!({"messages": []})).await;
    assert_eq!(s, 400, "{body}");

    let (s, body) = bulk(
        &tenant,
        json!({"device": a.id, "to": [b.address, "+1"], "body": {}}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("to[1]"),
        "{body}"
    );

    let too_many: Vec<Value> = (0..10_001).map(ok).collect();
    let (s, body) = bulk(&tenant, json!({ "messages": too_many })).await;
    assert_eq!(s, 413, "{body}");

    // A device of another tenant: 403, naming the index; nothing is queued.
    let other = server.tenant().await;
    let foreign = other.device().await;
    let (s, body) = bulk(
        &tenant,
        json!({"messages": [ok(0), {"device": foreign.id, "to": b.address, "body": {}}]}),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1]"),
        "{body}"
    );
    let (s, body) = bulk(
        &tenant,
        json!({"messages": [{"device": "d_missing", "to": b.address, "body": {}}]}),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    // No API key: 401.
    let (s, _) = server
        .call(
            "POST",
            "/v1/messages/bulk",
            None,
            Some(json!({"messages": [ok(0)]})),
        )
        .await;
    assert_eq!(s, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(inbox(&tenant, &b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_groups_and_schedule() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let c = tenant.device().await;
    // Campaign form: one body to many addresses.
    let (s, answer) = bulk(
        &tenant,
        json!({"device": a.id, "to": [b.address, c.address], "body": {"text": "sale"}, "priority": "high"}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    assert_eq!(ids.len(), 2);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 2
    })
    .await;
    assert_eq!(count(&views, "completed"), 2, "{views:?}");
    assert_eq!(views[0]["priority"], "high");
    assert_eq!(inbox(&tenant, &b).await[0]["body"]["text"], "sale");
    assert_eq!(inbox(&tenant, &c).await.len(), 1);

    // A group message through the queue.
    let (s, group) = tenant
        .call(
            "POST",
            "/v1/groups",
            Some(json!({"name": "g", "members": [a.address, b.address, c.address]})),
        )
        .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["group_id"].as_str().unwrap();
    let (s, answer) = bulk(
        &tenant,
        json!({"messages": [{"device": a.id, "group": gid, "body": {"text": "hi all"}}]}),
    )
    .await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 1
    })
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    assert_eq!(inbox(&tenant, &c).await.len(), 2);

    // send_at in the future: delayed until then.
    let at = now_ms() + 1500;
    let (s, answer) = bulk(&tenant, json!({"send_at": at, "messages": [{"device": a.id, "to": b.address, "body": {"text": "later"}}]})).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    let first = job(&tenant, &ids[0]).await;
    assert_eq!(first["state"], "delayed", "{first}");
    assert_eq!(first["send_at"], at);
    let views = wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 1
    })
    .await;
    assert_eq!(views[0]["state"], "completed", "{views:?}");
    assert!(views[0]["updated_at"].as_i64().unwrap() >= at);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_are_served_highest_first() {
    // One send at a time, so the recipient's inbox order is the claim order.
    let server = TestServer::start_with(|c| c.queue_message_concurrency = Some(1)).await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let lanes = ["low", "normal", "high", "critical"];
    let messages: Vec<Value> = (0..12)
        .map(|i| {
            let lane = lanes[i % 4];
            json!({"device": a.id, "to": b.address, "body": {"lane": lane, "i": i}, "priority": lane})
        })
        .collect();
    let (s, answer) = bulk(&tenant, json!({ "messages": messages })).await;
    assert_eq!(s, 202, "{answer}");
    let ids = job_ids(&answer);
    wait_jobs(&tenant, &ids, Duration::from_secs(10), |v| {
        count(v, "completed") == 12
    })
    .await;
    let order: Vec<String> = inbox(&tenant, &b)
        .await
        .iter()
        .map(|m| m["body"]["lane"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<&str> = ["critical", "high", "normal", "low"]
        .iter()
        .flat_map(|l| [*l; 3])
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_lets_an_old_low_job_pass_newer_critical_ones() {
    // One send at a time, a backlog of critical jobs, and aging of 50 ms per lane: a low
    // job counts as critical once it has been due 150 ms.
    let server = TestServer::start_with(|c| {
        c.queue_message_concurrency = Some(1);
        c.queue_aging_ms = 50;
        c.rate_limit_critical = 1_000_000;
        // Aging alone: fair spacing would count the backlog's later jobs as due later.
        c.queue_fair_spacing_ms = 0;
    })
    .await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let batch = |tag: &str, n: usize| -> Value {
        let messages: Vec<Value> = (0..n)
            .map(|i| json!({"device": a.id, "to": b.address, "body": {"tag": tag, "i": i}, "priority": "critical"}))
            .collect();
        json!({ "messages": messages })
    };
    let (s, _) = bulk(&tenant, batch("first", 400)).await;
    assert_eq!(s, 202);
    let (s, low) = bulk(
        &tenant,
        json!({"messages": [{"device": a.id, "to": b.address, "body": {"tag": "low"}, "priority": "low"}]}),
    )
    .await;
    assert_eq!(s, 202);
    let low_id = job_ids(&low).remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, second) = bulk(&tenant, batch("second", 50)).await;
    assert_eq!(s, 202);
    let low_state = job(&tenant, &low_id).await["state"].clone();
    assert_eq!(
        low_state, "waiting",
        "the backlog drained too early to test aging"
    );
    let second_ids = job_ids(&second);
    wait_jobs(&tenant, &second_ids[49..], Duration::from_secs(60), |v| {
        v[0]["state"] == "completed"
    })
    .await;
    let order: Vec<String> = inbox(&tenant, &b)
        .await
        .iter()
        .map(|m| m["body"]["tag"].as_str().unwrap().to_owned())
        .collect();
    let low_at = order.iter().position(|t| t == "low").expect("low sent");
    let first_second = order
        .iter()
        .position(|t| t == "second")
        .expect("second sent");
    let last_first = order.iter().rposition(|t| t == "first").unwrap();
    assert!(last_first < low_at, "older critical jobs still go first");
    assert!(
        low_at < first_second,
        "the aged low job went after newer critical ones (at {low_at}, second batch from {first_second})"
    );
}
