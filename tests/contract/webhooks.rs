//! Webhook endpoints and the outbox: CRUD, claims under a lease (order per endpoint and
//! device, status regression dropped, lapsed claims retaken, skipped endpoints),
//! outcomes guarded by the claim, the log, dead letters and replay, depths, pruning.

use std::sync::Arc;

use actors::store::{JobClaim, Store};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};

fn endpoint(id: &str, tenant: &str) -> EndpointRecord {
    EndpointRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events: vec!["message.received".into(), "message.status".into()],
        secret: format!("whsec_{id}"),
        description: Some("d".into()),
        enabled: true,
        created_at: 1,
        updated_at: 1,
    }
}

/// A pending delivery `n` of `endpoint` about `device`, due at `at`.
fn delivery(n: u32, endpoint: &str, device: &str, at: i64) -> DeliveryRecord {
    DeliveryRecord {
        id: format!("wd_{n:04}"),
        endpoint_id: endpoint.into(),
        tenant_id: "t1".into(),
        device_id: device.into(),
        event: "message.received".into(),
        order_key: format!("ev_{n:04}"),
        payload: format!("{{\"n\":{n}}}"),
        status_key: None,
        status_rank: 0,
        state: DeliveryState::Pending,
        attempts: 0,
        next_at: at,
        owner: None,
        lease_until: None,
        last_error: None,
        last_code: None,
        last_latency_ms: None,
        created_at: at,
        updated_at: at,
    }
}

fn status(n: u32, endpoint: &str, message: &str, rank: i64) -> DeliveryRecord {
    DeliveryRecord {
        event: "message.status".into(),
        status_key: Some(format!("{message}|+15550002")),
        status_rank: rank,
        ..delivery(n, endpoint, "dev_s", 100)
    }
}

fn claim(owner: &str, lease_until: i64) -> JobClaim {
    JobClaim {
        owner: owner.into(),
        lease_until,
    }
}

fn ids(d: &[DeliveryRecord]) -> Vec<&str> {
    let mut v: Vec<&str> = d.iter().map(|d| d.id.as_str()).collect();
    v.sort();
    v
}

fn delivered(id: &str, attempts: u32) -> DeliveryOutcome {
    DeliveryOutcome::Delivered {
        id: id.into(),
        attempts,
        code: 200,
        latency_ms: 3,
    }
}

async fn state_of(store: &Arc<dyn Store>, endpoint: &str, id: &str) -> DeliveryRecord {
    store
        .list_webhook_deliveries(endpoint, None, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("{id} not in the log"))
}

pub async fn check_webhook_endpoints(store: Arc<dyn Store>) {
    let a = endpoint("wh_a", "t1");
    store.create_webhook(a.clone()).await.unwrap();
    store.create_webhook(endpoint("wh_b", "t1")).await.unwrap();
    store.create_webhook(endpoint("wh_c", "t2")).await.unwrap();
    assert!(
        store.create_webhook(a.clone()).await.is_err(),
        "same id twice"
    );
    assert_eq!(store.get_webhook("wh_a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_webhook("wh_none").await.unwrap(), None);
    let listed = store.list_webhooks("t1").await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["wh_a", "wh_b"]
    );
    assert_eq!(store.list_webhooks("t3").await.unwrap(), vec![]);

    let changed = EndpointRecord {
        url: "https://example.invalid/hook".into(),
        events: vec!["job.failed".into()],
        secret: "whsec_rotated".into(),
        description: None,
        enabled: false,
        updated_at: 5,
        ..a.clone()
    };
    assert!(store.update_webhook(changed.clone()).await.unwrap());
    assert_eq!(store.get_webhook("wh_a").await.unwrap(), Some(changed));
    assert!(!store
        .update_webhook(endpoint("wh_none", "t1"))
        .await
        .unwrap());

    // Deleting an endpoint takes its deliveries with it.
    store
        .enqueue_webhook_deliveries(vec![
            delivery(1, "wh_a", "d1", 10),
            delivery(2, "wh_b", "d1", 10),
        ])
        .await
        .unwrap();
    assert!(store.delete_webhook("wh_a").await.unwrap());
    assert!(!store.delete_webhook("wh_a").await.unwrap());
    assert_eq!(store.get_webhook("wh_a").await.unwrap(), None);
    assert!(store
        .list_webhook_deliveries("wh_a", None, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_webhook_deliveries("wh_b", None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn check_webhook_claims_in_order(store: Arc<dyn Store>) {
    // Two devices on one endpoint, one device on another; d1's events 1, 2, 3.
    store
        .enqueue_webhook_deliveries(vec![
            delivery(1, "wh_a", "d1", 100),
            delivery(2, "wh_a", "d1", 100),
            delivery(3, "wh_a", "d1", 100),
            delivery(4, "wh_a", "d2", 100),
            delivery(5, "wh_b", "d1", 100),
            delivery(6, "wh_a", "d3", 500),
        ])
        .await
        .unwrap();
    // Enqueuing the same deliveries again (a retried call) changes nothing.
    let _ = store
        .enqueue_webhook_deliveries(vec![delivery(1, "wh_a", "d1", 100)])
        .await;
    // Only the head of each endpoint+device queue, and only what is due.
    let first = store
        .claim_webhook_deliveries(200, 10, &[], &claim("n_a", 1_000))
        .await
        .unwrap();
    assert_eq!(ids(&first), ["wd_0001", "wd_0004", "wd_0005"]);
    assert!(first.iter().all(|d| d.state == DeliveryState::Sending
        && d.owner.as_deref() == Some("n_a")
        && d.lease_until == Some(1_000)));
    // While they are out, nothing behind them goes (another node sees nothing either).
    assert!(store
        .claim_webhook_deliveries(300, 10, &[], &claim("n_b", 2_000))
        .await
        .unwrap()
        .is_empty());

    // A failed attempt keeps its place: 2 waits behind 1 until 1 is delivered.
    let retried = store
        .finish_webhook_deliveries(
            vec![DeliveryOutcome::Retry {
                id: "wd_0001".into(),
                attempts: 1,
                next_at: 400,
                error: "HTTP 500: no".into(),
                code: Some(500),
                latency_ms: 7,
            }],
            300,
            "n_a",
        )
        .await
        .unwrap();
    assert_eq!(retried, 1);
    let r = state_of(&store, "wh_a", "wd_0001").await;
    assert_eq!(
        (
            r.state,
            r.attempts,
            r.next_at,
            r.last_code,
            r.last_error.as_deref(),
            r.owner
        ),
        (
            DeliveryState::Pending,
            1,
            400,
            Some(500),
            Some("HTTP 500: no"),
            None
        )
    );
    assert!(store
        .claim_webhook_deliveries(350, 10, &[], &claim("n_a", 2_000))
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_webhook_deliveries(400, 10, &[], &claim("n_a", 2_000))
        .await
        .unwrap();
    assert_eq!(ids(&again), ["wd_0001"]);
    assert_eq!(again[0].attempts, 1);
    // Only the claim's owner writes an outcome.
    assert_eq!(
        store
            .finish_webhook_deliveries(vec![delivered("wd_0001", 2)], 410, "n_b")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .finish_webhook_deliveries(
                vec![delivered("wd_0001", 2), delivered("wd_0004", 1)],
                410,
                "n_a"
            )
            .await
            .unwrap(),
        2
    );
    let d = state_of(&store, "wh_a", "wd_0001").await;
    assert_eq!(
        (d.state, d.attempts, d.last_code, d.last_latency_ms),
        (DeliveryState::Delivered, 2, Some(200), Some(3))
    );
    // Now 2 is the head of d1's queue, and d3's delivery has come due; wh_b skipped
    // (its breaker is open) even though nothing of it is due.
    let next = store
        .claim_webhook_deliveries(600, 10, &["wh_b".to_owned()], &claim("n_b", 2_000))
        .await
        .unwrap();
    assert_eq!(ids(&next), ["wd_0002", "wd_0006"]);
    // A limit is a limit.
    store
        .finish_webhook_deliveries(vec![delivered("wd_0002", 1)], 610, "n_b")
        .await
        .unwrap();
    let one = store
        .claim_webhook_deliveries(620, 1, &["wh_b".to_owned()], &claim("n_b", 2_000))
        .await
        .unwrap();
    assert_eq!(ids(&one), ["wd_0003"]);
    // A release puts a delivery back without counting an attempt.
    store
        .finish_webhook_deliveries(
            vec![DeliveryOutcome::Release {
                id: "wd_0003".into(),
                next_at: 700,
            }],
            630,
            "n_b",
        )
        .await
        .unwrap();
    let r = state_of(&store, "wh_a", "wd_0003").await;
    assert_eq!(
        (r.state, r.attempts, r.next_at),
        (DeliveryState::Pending, 0, 700)
    );
}

pub async fn check_webhook_leases(store: Arc<dyn Store>) {
    store
        .enqueue_webhook_deliveries(vec![
            delivery(1, "wh_a", "d1", 100),
            delivery(2, "wh_a", "d1", 100),
        ])
        .await
        .unwrap();
    let a = store
        .claim_webhook_deliveries(100, 10, &[], &claim("n_dead", 1_000))
        .await
        .unwrap();
    assert_eq!(ids(&a), ["wd_0001"]);
    // Its node dies: nothing before the lease runs out, then another node takes it
    // (still first in line: 2 waits).
    assert!(store
        .claim_webhook_deliveries(1_000, 10, &[], &claim("n_b", 5_000))
        .await
        .unwrap()
        .is_empty());
    let b = store
        .claim_webhook_deliveries(1_001, 10, &[], &claim("n_b", 5_000))
        .await
        .unwrap();
    assert_eq!(ids(&b), ["wd_0001"]);
    assert_eq!(b[0].owner.as_deref(), Some("n_b"));
    // The dead node's late outcome does not apply; the new owner's does.
    assert_eq!(
        store
            .finish_webhook_deliveries(vec![delivered("wd_0001", 1)], 1_100, "n_dead")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        state_of(&store, "wh_a", "wd_0001").await.state,
        DeliveryState::Sending
    );
    store
        .finish_webhook_deliveries(vec![delivered("wd_0001", 1)], 1_100, "n_b")
        .await
        .unwrap();
    let c = store
        .claim_webhook_deliveries(1_200, 10, &[], &claim("n_b", 5_000))
        .await
        .unwrap();
    assert_eq!(ids(&c), ["wd_0002"]);
}

pub async fn check_webhook_status_never_regresses(store: Arc<dyn Store>) {
    // m1: delivered queued, then read queued behind it (the receiver was down).
    store
        .enqueue_webhook_deliveries(vec![status(1, "wh_a", "m1", 1), status(2, "wh_a", "m1", 2)])
        .await
        .unwrap();
    let c = store
        .claim_webhook_deliveries(200, 10, &[], &claim("n_a", 1_000))
        .await
        .unwrap();
    // `delivered` is dropped (a newer status is queued), `read` goes next.
    assert!(c.is_empty() || ids(&c) == ["wd_0002"], "{:?}", ids(&c));
    assert_eq!(
        state_of(&store, "wh_a", "wd_0001").await.state,
        DeliveryState::Dropped
    );
    let c = if c.is_empty() {
        store
            .claim_webhook_deliveries(200, 10, &[], &claim("n_a", 1_000))
            .await
            .unwrap()
    } else {
        c
    };
    assert_eq!(ids(&c), ["wd_0002"]);
    store
        .finish_webhook_deliveries(vec![delivered("wd_0002", 1)], 210, "n_a")
        .await
        .unwrap();
    // A `delivered` recorded after `read` was sent is dropped too; another message's
    // status and another endpoint's are not.
    store
        .enqueue_webhook_deliveries(vec![
            status(3, "wh_a", "m1", 1),
            status(4, "wh_a", "m2", 1),
            status(5, "wh_b", "m1", 1),
        ])
        .await
        .unwrap();
    let mut sent = Vec::new();
    for _ in 0..3 {
        let c = store
            .claim_webhook_deliveries(300, 10, &[], &claim("n_a", 1_000))
            .await
            .unwrap();
        for d in &c {
            sent.push(d.id.clone());
        }
        store
            .finish_webhook_deliveries(c.iter().map(|d| delivered(&d.id, 1)).collect(), 310, "n_a")
            .await
            .unwrap();
    }
    sent.sort();
    assert_eq!(sent, ["wd_0004", "wd_0005"]);
    assert_eq!(
        state_of(&store, "wh_a", "wd_0003").await.state,
        DeliveryState::Dropped
    );
}

pub async fn check_webhook_dead_letters_log_and_prune(store: Arc<dyn Store>) {
    let batch: Vec<DeliveryRecord> = (1..=5)
        .map(|n| delivery(n, "wh_a", &format!("d{n}"), 100))
        .collect();
    store.enqueue_webhook_deliveries(batch).await.unwrap();
    store
        .enqueue_webhook_deliveries(vec![delivery(9, "wh_b", "d1", 100)])
        .await
        .unwrap();
    let c = store
        .claim_webhook_deliveries(100, 10, &["wh_b".to_owned()], &claim("n_a", 1_000))
        .await
        .unwrap();
    assert_eq!(c.len(), 5);
    let mut depths = store.webhook_outbox_depths().await.unwrap();
    depths.sort();
    assert_eq!(depths, [("wh_a".to_owned(), 5), ("wh_b".to_owned(), 1)]);
    let dead = |id: &str| DeliveryOutcome::Dead {
        id: id.into(),
        attempts: 3,
        error: "timed out".into(),
        code: None,
        latency_ms: 1000,
    };
    store
        .finish_webhook_deliveries(
            vec![
                dead("wd_0001"),
                dead("wd_0002"),
                dead("wd_0003"),
                delivered("wd_0004", 1),
                delivered("wd_0005", 1),
            ],
            200,
            "n_a",
        )
        .await
        .unwrap();
    assert_eq!(
        store.webhook_outbox_depths().await.unwrap(),
        [("wh_b".to_owned(), 1)]
    );

    // The log: newest first, paged by id, filtered by state.
    let page1 = store
        .list_webhook_deliveries("wh_a", None, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["wd_0005", "wd_0004"]
    );
    let page2 = store
        .list_webhook_deliveries("wh_a", None, Some("wd_0004"), 10)
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["wd_0003", "wd_0002", "wd_0001"]
    );
    let dead_letters = store
        .list_webhook_deliveries("wh_a", Some(DeliveryState::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead_letters.len(), 3);
    let d = &dead_letters[0];
    assert_eq!(
        (
            d.attempts,
            d.last_error.as_deref(),
            d.last_code,
            d.payload.as_str()
        ),
        (3, Some("timed out"), None, "{\"n\":3}")
    );

    // Replay by id, then all; only dead letters of that endpoint.
    assert_eq!(
        store
            .replay_webhook_dead_letters(
                "wh_a",
                Some(vec!["wd_0002".into(), "wd_0004".into()]),
                300
            )
            .await
            .unwrap(),
        1
    );
    let r = state_of(&store, "wh_a", "wd_0002").await;
    assert_eq!(
        (r.state, r.attempts, r.next_at),
        (DeliveryState::Pending, 0, 300)
    );
    assert_eq!(
        store
            .replay_webhook_dead_letters("wh_b", None, 300)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .replay_webhook_dead_letters("wh_a", None, 300)
            .await
            .unwrap(),
        2
    );
    let c = store
        .claim_webhook_deliveries(300, 10, &["wh_b".to_owned()], &claim("n_a", 1_000))
        .await
        .unwrap();
    assert_eq!(ids(&c), ["wd_0001", "wd_0002", "wd_0003"]);

    // Pruning takes delivered ones last changed before the cut, never open or dead ones.
    assert_eq!(store.prune_webhook_deliveries(150, 10).await.unwrap(), 0);
    assert_eq!(store.prune_webhook_deliveries(1_000, 1).await.unwrap(), 1);
    assert_eq!(store.prune_webhook_deliveries(1_000, 10).await.unwrap(), 1);
    assert_eq!(store.prune_webhook_deliveries(1_000, 10).await.unwrap(), 0);
    assert_eq!(
        store
            .list_webhook_deliveries("wh_a", None, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

pub async fn check_concurrent_webhook_claims(store: Arc<dyn Store>) {
    // 20 devices × 3 events; 4 claimers race; every delivery is sent exactly once and
    // each device's in order.
    let mut all = Vec::new();
    for d in 0..20u32 {
        for k in 0..3u32 {
            all.push(delivery(d * 10 + k, "wh_a", &format!("d{d:02}"), 100));
        }
    }
    store.enqueue_webhook_deliveries(all).await.unwrap();
    let sent = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for n in 0..4 {
        let store = store.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("n_{n}");
            for _ in 0..200 {
                let c = store
                    .claim_webhook_deliveries(1_000, 5, &[], &claim(&owner, 100_000))
                    .await
                    .unwrap();
                if c.is_empty() && sent.lock().unwrap().len() >= 60 {
                    break;
                }
                sent.lock().unwrap().extend(c.iter().map(|d| d.id.clone()));
                store
                    .finish_webhook_deliveries(
                        c.iter().map(|d| delivered(&d.id, 1)).collect(),
                        1_000,
                        &owner,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sent.len(), "a delivery was claimed twice");
    assert_eq!(sent.len(), 60);
    for d in 0..20u32 {
        let order: Vec<&String> = sent
            .iter()
            .filter(|id| {
                let n: u32 = id[3..].parse().unwrap();
                n / 10 == d
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "device {d} out of order");
    }
}
