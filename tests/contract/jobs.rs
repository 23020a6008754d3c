//! The durable job queue: the state machine of `actors::jobs`, as each store keeps it
//! (ported from the SQLite store's own tests, now run against every backend).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actors::jobs::{
    rank, JobBody, JobKind, JobRecord, JobState, JobUpdate, QueueCount, SharedBody,
};
use actors::store::{JobClaim, Store, StoreError};
use protocol::Priority;

const AGING: Duration = Duration::from_secs(10);

/// The node the checks claim jobs as, unless they race two.
pub const NODE: &str = "n_test";

/// A claim by `owner` whose lease holds for a long time.
pub fn claim(owner: &str) -> JobClaim {
    JobClaim {
        owner: owner.into(),
        lease_until: i64::MAX,
    }
}

pub fn job(id: &str, lane: Priority, due: i64) -> JobRecord {
    JobRecord {
        id: id.into(),
        kind: JobKind::Message,
        tenant_id: "t1".into(),
        device_id: "d1".into(),
        lane,
        state: JobState::Waiting,
        attempts: 0,
        target_to: Some("+15550001".into()),
        target_group: None,
        body: JobBody::Inline("{}".into()),
        message_id: None,
        error: None,
        send_at: None,
        not_before: due,
        rank: rank(due, lane, AGING),
        created_at: due,
        updated_at: due,
        progress_done: 0,
        progress_total: 0,
    }
}

fn ids(jobs: &[JobRecord]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

/// Counts summed by (tenant, lane, state), live and pruned together.
fn count_map(counts: &[QueueCount]) -> HashMap<(String, Priority, JobState), u64> {
    let mut out = HashMap::new();
    for c in counts {
        *out.entry((c.tenant_id.clone(), c.lane, c.state))
            .or_default() += c.count;
    }
    out.retain(|_, n| *n > 0);
    out
}

pub async fn check_claims_by_lane_with_aging(store: Arc<dyn Store>) {
    let now = 1_000_000;
    store
        .insert_jobs(
            Vec::new(),
            vec![
                job("low-new", Priority::Low, now),
                job("normal-new", Priority::Normal, now),
                job("critical-new", Priority::Critical, now),
                // Waited 31 s: three aging periods, more than a low job needs to
                // outrank a critical one enqueued now.
                job("low-old", Priority::Low, now - 31_000),
                job("high-new", Priority::High, now),
            ],
        )
        .await
        .unwrap();
    let first = store.claim_jobs(now, 2, &[], &claim(NODE)).await.unwrap();
    assert_eq!(ids(&first), ["low-old", "critical-new"]);
    assert!(first.iter().all(|j| j.state == JobState::Active));
    let rest = store.claim_jobs(now, 10, &[], &claim(NODE)).await.unwrap();
    assert_eq!(ids(&rest), ["high-new", "normal-new", "low-new"]);
    assert!(store
        .claim_jobs(now, 10, &[], &claim(NODE))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_jobs(now, 0, &[], &claim(NODE))
        .await
        .unwrap()
        .is_empty());
    for id in ["low-new", "low-old", "critical-new"] {
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            JobState::Active
        );
    }
}

pub async fn check_paused_lanes_and_depths(store: Arc<dyn Store>) {
    let now = 1_000_000;
    let mut later = job("low-later", Priority::Low, now + 60_000);
    later.state = JobState::Delayed;
    store
        .insert_jobs(
            Vec::new(),
            vec![
                job("critical", Priority::Critical, now),
                job("low-1", Priority::Low, now - 100_000),
                job("low-2", Priority::Low, now),
                job("normal", Priority::Normal, now),
                later,
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.lane_depths().await.unwrap(), [1, 0, 1, 3]);
    let got = store
        .claim_jobs(now, 10, &[Priority::Low], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(ids(&got), ["critical", "normal"]);
    // Claimed jobs are active, no longer queued.
    assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 0, 3]);
    assert!(store
        .claim_jobs(now, 10, &[Priority::Low, Priority::High], &claim(NODE))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_jobs(now, 10, &Priority::ALL, &claim(NODE))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&store.claim_jobs(now, 10, &[], &claim(NODE)).await.unwrap()),
        ["low-1", "low-2"]
    );
    assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 0, 1]);
}

pub async fn check_state_machine(store: Arc<dyn Store>) {
    let now = 5_000;
    let mut later = job("later", Priority::Normal, now + 1_000);
    later.state = JobState::Delayed;
    store
        .insert_jobs(Vec::new(), vec![job("a", Priority::Normal, now), later])
        .await
        .unwrap();
    let claimed = store
        .claim_jobs(now + 10, 10, &[], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(ids(&claimed), ["a"]);
    // Answered as it was before the claim: never touched (fresh).
    assert_eq!(claimed[0].updated_at, claimed[0].created_at);
    assert_eq!(claimed[0].attempts, 0);
    // Rate-limited: delayed, then due again.
    store
        .finish_jobs(
            vec![JobUpdate::Delayed {
                id: "a".into(),
                not_before: now + 500,
                attempts: 0,
            }],
            now + 20,
            NODE,
        )
        .await
        .unwrap();
    let a = store.get_job("a").await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.not_before, a.updated_at),
        (JobState::Delayed, now + 500, now + 20)
    );
    assert_eq!(store.promote_due_jobs(now + 499).await.unwrap(), 0);
    assert_eq!(store.promote_due_jobs(now + 1_000).await.unwrap(), 2);
    assert_eq!(store.promote_due_jobs(now + 1_000).await.unwrap(), 0);
    let claimed = store
        .claim_jobs(now + 1_500, 10, &[], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let a = claimed.iter().find(|j| j.id == "a").unwrap();
    // Touched before (delayed once): the dispatcher looks for an earlier send.
    assert_ne!(a.updated_at, a.created_at);
    // A crash: active jobs go back to waiting, with the attempt counted.
    assert_eq!(store.requeue_active_jobs().await.unwrap(), 2);
    assert_eq!(store.requeue_active_jobs().await.unwrap(), 0);
    let later = store.get_job("later").await.unwrap().unwrap();
    assert_eq!((later.state, later.attempts), (JobState::Waiting, 1));
    let reclaimed = store
        .claim_jobs(now + 2_000, 10, &[], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 2);
    let later = reclaimed.iter().find(|j| j.id == "later").unwrap();
    assert_eq!(later.attempts, 1);
    assert_ne!(later.updated_at, later.created_at);
    store
        .finish_jobs(
            vec![
                JobUpdate::Completed {
                    id: "a".into(),
                    message_id: Some("m_1".into()),
                    attempts: 1,
                },
                JobUpdate::Failed {
                    id: "later".into(),
                    error: "not_found: x".into(),
                    attempts: 1,
                },
            ],
            now + 3_000,
            NODE,
        )
        .await
        .unwrap();
    let a = store.get_job("a").await.unwrap().unwrap();
    assert_eq!(a.state, JobState::Completed);
    assert_eq!(a.message_id.as_deref(), Some("m_1"));
    assert_eq!((a.attempts, a.updated_at, a.error), (1, now + 3_000, None));
    let l = store.get_job("later").await.unwrap().unwrap();
    assert_eq!(l.state, JobState::Failed);
    assert_eq!(l.error.as_deref(), Some("not_found: x"));
    // Final states are not moved by stale outcomes, progress, cancel or retry.
    store
        .finish_jobs(
            vec![JobUpdate::Failed {
                id: "a".into(),
                error: "late".into(),
                attempts: 2,
            }],
            now,
            NODE,
        )
        .await
        .unwrap();
    store.set_job_progress("a", 5, now).await.unwrap();
    let a = store.get_job("a").await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.progress_done),
        (JobState::Completed, 1, 0)
    );
    assert!(!store.cancel_job("a", now).await.unwrap());
    assert!(!store.retry_job("a", now, 0).await.unwrap());
    // Failed → retry → waiting with attempts reset, the given rank, due now.
    assert!(store.retry_job("later", now + 4_000, 7).await.unwrap());
    let l = store.get_job("later").await.unwrap().unwrap();
    assert_eq!((l.state, l.attempts, l.error), (JobState::Waiting, 0, None));
    assert_eq!(
        (l.rank, l.not_before, l.updated_at),
        (7, now + 4_000, now + 4_000)
    );
    assert!(!store.retry_job("later", now, 8).await.unwrap());
    assert!(store.cancel_job("later", now + 5_000).await.unwrap());
    assert!(!store.cancel_job("later", now + 5_000).await.unwrap());
    let l = store.get_job("later").await.unwrap().unwrap();
    assert_eq!((l.state, l.updated_at), (JobState::Cancelled, now + 5_000));
    assert!(store
        .claim_jobs(now + 9_000, 10, &[], &claim(NODE))
        .await
        .unwrap()
        .is_empty());
    // A delayed job is cancellable too; an unknown one is not.
    let mut d = job("d", Priority::Low, now);
    d.state = JobState::Delayed;
    store.insert_jobs(Vec::new(), vec![d]).await.unwrap();
    assert!(store.cancel_job("d", now).await.unwrap());
    assert!(!store.cancel_job("nope", now).await.unwrap());
    let counts = count_map(&store.queue_counts().await.unwrap());
    assert_eq!(counts.values().sum::<u64>(), 3);
    assert_eq!(
        counts.get(&("t1".into(), Priority::Normal, JobState::Cancelled)),
        Some(&1)
    );
    assert_eq!(
        counts.get(&("t1".into(), Priority::Normal, JobState::Completed)),
        Some(&1)
    );
    assert_eq!(
        counts.get(&("t1".into(), Priority::Low, JobState::Cancelled)),
        Some(&1)
    );
    assert!(store.get_job("nope").await.unwrap().is_none());
}

pub async fn check_job_fields_and_progress(store: Arc<dyn Store>) {
    let mut full = job("full", Priority::High, 9_000);
    full.kind = JobKind::Contacts;
    full.tenant_id = "tenant-ü".into();
    full.device_id = "dev".into();
    full.target_to = None;
    full.target_group = Some("grp".into());
    full.body = JobBody::Inline("[{\"address\":\"+1\"}] ✓".into());
    full.send_at = Some(8_000);
    full.progress_total = 5_000_000_000;
    full.attempts = 2;
    store
        .insert_jobs(Vec::new(), vec![full.clone()])
        .await
        .unwrap();
    let got = store.get_job("full").await.unwrap().unwrap();
    assert_eq!(got.kind, JobKind::Contacts);
    assert_eq!(got.tenant_id, "tenant-ü");
    assert_eq!(got.device_id, "dev");
    assert_eq!(got.lane, Priority::High);
    assert_eq!(got.state, JobState::Waiting);
    assert_eq!(got.attempts, 2);
    assert_eq!(
        (got.target_to, got.target_group.as_deref()),
        (None, Some("grp"))
    );
    assert_eq!(got.body, full.body);
    assert_eq!((got.message_id, got.error), (None, None));
    assert_eq!(
        (got.send_at, got.not_before, got.rank),
        (Some(8_000), 9_000, full.rank)
    );
    assert_eq!((got.created_at, got.updated_at), (9_000, 9_000));
    assert_eq!((got.progress_done, got.progress_total), (0, 5_000_000_000));
    // Progress is recorded on an active job only.
    store.set_job_progress("full", 10, 9_100).await.unwrap();
    assert_eq!(
        store.get_job("full").await.unwrap().unwrap().progress_done,
        0
    );
    store.claim_jobs(9_000, 1, &[], &claim(NODE)).await.unwrap();
    store.set_job_progress("full", 10, 9_200).await.unwrap();
    let got = store.get_job("full").await.unwrap().unwrap();
    assert_eq!((got.progress_done, got.updated_at), (10, 9_200));
    // A completed contact sync has no message id.
    store
        .finish_jobs(
            vec![JobUpdate::Completed {
                id: "full".into(),
                message_id: None,
                attempts: 3,
            }],
            9_300,
            NODE,
        )
        .await
        .unwrap();
    let got = store.get_job("full").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.message_id, got.attempts),
        (JobState::Completed, None, 3)
    );
    store.finish_jobs(Vec::new(), 1, NODE).await.unwrap();

    // The same id again: refused, and nothing of that call is stored (no partial
    // enqueue), its new shared body included.
    let err = store
        .insert_jobs(
            vec![SharedBody {
                id: "body-new".into(),
                tenant_id: "t1".into(),
                body: "{\"campaign\":1}".into(),
            }],
            vec![
                job("fresh-1", Priority::Normal, 1),
                job("full", Priority::Normal, 1),
                job("fresh-2", Priority::Normal, 1),
            ],
        )
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    assert!(store.get_job("fresh-1").await.unwrap().is_none());
    assert!(store.get_job("fresh-2").await.unwrap().is_none());
    assert!(store.job_body("body-new").await.unwrap().is_none());
    assert_eq!(
        store.get_job("full").await.unwrap().unwrap().state,
        JobState::Completed
    );
}

pub async fn check_queue_tail(store: Arc<dyn Store>) {
    assert_eq!(
        store.queue_tail("t1", Priority::Normal).await.unwrap(),
        None
    );
    let mut other_tenant = job("o", Priority::Normal, 50_000);
    other_tenant.tenant_id = "t2".into();
    let mut delayed = job("delayed", Priority::Normal, 90_000);
    delayed.state = JobState::Delayed;
    let mut j1 = job("j1", Priority::Normal, 0);
    j1.rank = 100;
    let mut j2 = job("j2", Priority::Normal, 0);
    j2.rank = -5;
    let mut j3 = job("j3", Priority::Normal, 0);
    j3.rank = 300;
    let mut low = job("low", Priority::Low, 0);
    low.rank = 10_000;
    store
        .insert_jobs(Vec::new(), vec![other_tenant, delayed, j1, j2, j3, low])
        .await
        .unwrap();
    assert_eq!(
        store.queue_tail("t1", Priority::Normal).await.unwrap(),
        Some(300)
    );
    assert_eq!(
        store.queue_tail("t1", Priority::Low).await.unwrap(),
        Some(10_000)
    );
    assert_eq!(store.queue_tail("t1", Priority::High).await.unwrap(), None);
    assert_eq!(
        store.queue_tail("t2", Priority::Normal).await.unwrap(),
        Some(rank(50_000, Priority::Normal, AGING))
    );
    // Only waiting jobs count: claim the best three normal ones (j2, j1, then j3).
    let claimed = store
        .claim_jobs(0, 3, &[Priority::Low], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(ids(&claimed), ["j2", "j1", "j3"]);
    assert_eq!(
        store.queue_tail("t1", Priority::Normal).await.unwrap(),
        None
    );
}

pub async fn check_shared_bodies_and_prune(store: Arc<dyn Store>) {
    let campaign = SharedBody {
        id: "campaign".into(),
        tenant_id: "t1".into(),
        body: "{\"text\":\"sale ✓\",\"n\":1.0}".into(),
    };
    let other = SharedBody {
        id: "other".into(),
        tenant_id: "t1".into(),
        body: "{}".into(),
    };
    let mut jobs = Vec::new();
    for i in 0..4 {
        let mut j = job(&format!("c{i}"), Priority::Low, 1_000 + i);
        j.body = JobBody::Shared("campaign".into());
        jobs.push(j);
    }
    let mut o = job("o1", Priority::Low, 1_000);
    o.body = JobBody::Shared("other".into());
    jobs.push(o);
    jobs.push(job("inline", Priority::Critical, 1_000));
    let mut t2 = job("t2-job", Priority::Normal, 1_000);
    t2.tenant_id = "t2".into();
    jobs.push(t2);
    store
        .insert_jobs(vec![campaign.clone(), other], jobs)
        .await
        .unwrap();
    // A body stored again under its id is left as it is (a campaign resumed).
    store
        .insert_jobs(
            vec![SharedBody {
                id: "campaign".into(),
                tenant_id: "t1".into(),
                body: "{\"changed\":true}".into(),
            }],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_job("c0").await.unwrap().unwrap().body,
        JobBody::Shared("campaign".into())
    );
    assert_eq!(
        store.job_body("campaign").await.unwrap().as_deref(),
        Some(&*campaign.body)
    );
    assert!(store.job_body("nope").await.unwrap().is_none());

    // Finish everything: c0..c2 and o1 complete at 2_000, c3 fails at 5_000, the
    // inline job is cancelled at 2_000, t2's job stays waiting.
    let claimed = store
        .claim_jobs(10_000, 100, &[Priority::Normal], &claim(NODE))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 6);
    let mut updates: Vec<JobUpdate> = ["c0", "c1", "c2", "o1"]
        .iter()
        .map(|id| JobUpdate::Completed {
            id: id.to_string(),
            message_id: Some(format!("m-{id}")),
            attempts: 1,
        })
        .collect();
    updates.push(JobUpdate::Delayed {
        id: "inline".into(),
        not_before: 1,
        attempts: 0,
    });
    store.finish_jobs(updates, 2_000, NODE).await.unwrap();
    store.promote_due_jobs(2_000).await.unwrap();
    assert!(store.cancel_job("inline", 2_000).await.unwrap());
    store
        .finish_jobs(
            vec![JobUpdate::Failed {
                id: "c3".into(),
                error: "x: y".into(),
                attempts: 1,
            }],
            5_000,
            NODE,
        )
        .await
        .unwrap();
    let before = count_map(&store.queue_counts().await.unwrap());

    // Nothing is old enough yet.
    assert_eq!(store.prune_jobs(2_000, 100).await.unwrap(), 0);
    assert_eq!(store.prune_jobs(3_000, 0).await.unwrap(), 0);
    // At most `limit` at a time.
    assert_eq!(store.prune_jobs(3_000, 2).await.unwrap(), 2);
    assert_eq!(store.prune_jobs(3_000, 100).await.unwrap(), 3);
    assert_eq!(store.prune_jobs(3_000, 100).await.unwrap(), 0);
    for id in ["c0", "c1", "c2", "o1", "inline"] {
        assert!(store.get_job(id).await.unwrap().is_none(), "{id}");
    }
    // c3 (failed later) still points at the campaign body: kept. Nothing points at
    // the other body: removed.
    assert!(store.job_body("campaign").await.unwrap().is_some());
    assert!(store.job_body("other").await.unwrap().is_none());
    // Pruned jobs stay counted.
    assert_eq!(count_map(&store.queue_counts().await.unwrap()), before);
    assert_eq!(
        before.get(&("t1".into(), Priority::Low, JobState::Completed)),
        Some(&4)
    );
    assert_eq!(
        before.get(&("t2".into(), Priority::Normal, JobState::Waiting)),
        Some(&1)
    );

    assert_eq!(store.prune_jobs(6_000, 100).await.unwrap(), 1);
    assert!(store.job_body("campaign").await.unwrap().is_none());
    assert_eq!(count_map(&store.queue_counts().await.unwrap()), before);
    // Pruned again later: the totals add up.
    let mut again = job("c-late", Priority::Low, 1);
    again.state = JobState::Completed;
    again.updated_at = 10;
    store.insert_jobs(Vec::new(), vec![again]).await.unwrap();
    assert_eq!(store.prune_jobs(6_000, 100).await.unwrap(), 1);
    let after = count_map(&store.queue_counts().await.unwrap());
    assert_eq!(
        after.get(&("t1".into(), Priority::Low, JobState::Completed)),
        Some(&5)
    );
    // The waiting job is never pruned.
    assert!(store.get_job("t2-job").await.unwrap().is_some());
}

pub async fn check_concurrent_claims(store: Arc<dyn Store>) {
    let jobs: Vec<JobRecord> = (0..200)
        .map(|i| job(&format!("j{i:03}"), Priority::ALL[i % 4], 1_000 + i as i64))
        .collect();
    store.insert_jobs(Vec::new(), jobs).await.unwrap();
    // Four claimers race until the queue is empty: every job is handed out once.
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim_jobs(10_000, 7, &[], &claim(NODE))
                        .await
                        .unwrap();
                    if got.is_empty() {
                        break mine;
                    }
                    assert!(got.iter().all(|j| j.state == JobState::Active));
                    mine.extend(got.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a job was claimed twice");
    assert_eq!(all.len(), 200);
    assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 0, 0]);
}

/// A claim by `owner` that holds until `lease_until`.
fn leased(owner: &str, lease_until: i64) -> JobClaim {
    JobClaim {
        owner: owner.into(),
        lease_until,
    }
}

fn completed(id: &str) -> JobUpdate {
    JobUpdate::Completed {
        id: id.into(),
        message_id: Some(format!("m-{id}")),
        attempts: 1,
    }
}

async fn state_of(store: &Arc<dyn Store>, id: &str) -> (JobState, u32) {
    let j = store.get_job(id).await.unwrap().unwrap();
    (j.state, j.attempts)
}

pub async fn check_leased_claims(store: Arc<dyn Store>) {
    let now = 10_000;
    let jobs: Vec<JobRecord> = (0..5)
        .map(|i| job(&format!("j{i}"), Priority::Normal, now + i))
        .collect();
    store.insert_jobs(Vec::new(), jobs).await.unwrap();
    let a = store
        .claim_jobs(now, 2, &[], &leased("n_a", now + 1_000))
        .await
        .unwrap();
    let b = store
        .claim_jobs(now, 2, &[], &leased("n_b", now + 5_000))
        .await
        .unwrap();
    assert_eq!((ids(&a), ids(&b)), (vec!["j0", "j1"], vec!["j2", "j3"]));

    // Only the claim's owner writes an outcome.
    store
        .finish_jobs(vec![completed("j0")], now + 10, "n_b")
        .await
        .unwrap();
    assert_eq!(state_of(&store, "j0").await, (JobState::Active, 0));
    store
        .finish_jobs(vec![completed("j0"), completed("j2")], now + 10, "n_a")
        .await
        .unwrap();
    assert_eq!(state_of(&store, "j0").await.0, JobState::Completed);
    assert_eq!(state_of(&store, "j2").await.0, JobState::Active);

    // A heartbeat renews the node's active claims only (j0 is finished).
    assert_eq!(store.renew_job_claims("n_a", now + 3_000).await.unwrap(), 1);
    assert_eq!(store.renew_job_claims("n_ghost", now).await.unwrap(), 0);
    // Nothing has run out yet.
    assert_eq!(store.reclaim_jobs(now + 2_000).await.unwrap(), 0);
    assert_eq!(state_of(&store, "j1").await.0, JobState::Active);
    // n_a's renewed lease runs out (n_a died): its job is waiting again, the attempt
    // counted, and n_a's late outcome no longer applies.
    assert_eq!(store.reclaim_jobs(now + 3_001).await.unwrap(), 1);
    assert_eq!(store.reclaim_jobs(now + 3_001).await.unwrap(), 0);
    assert_eq!(state_of(&store, "j1").await, (JobState::Waiting, 1));
    store
        .finish_jobs(vec![completed("j1")], now + 3_100, "n_a")
        .await
        .unwrap();
    assert_eq!(state_of(&store, "j1").await.0, JobState::Waiting);
    // A claim is not renewed for a node whose claims were taken back.
    assert_eq!(store.renew_job_claims("n_a", now + 9_000).await.unwrap(), 0);

    // n_b drains: its claims go back to waiting, no attempt counted.
    assert_eq!(store.release_job_claims("n_b").await.unwrap(), 2);
    assert_eq!(store.release_job_claims("n_b").await.unwrap(), 0);
    assert_eq!(state_of(&store, "j2").await, (JobState::Waiting, 0));
    assert_eq!(state_of(&store, "j3").await, (JobState::Waiting, 0));
    assert_eq!(store.lane_depths().await.unwrap(), [0, 0, 4, 0]);
    // Not reclaimed later by its old lease either.
    assert_eq!(store.reclaim_jobs(i64::MAX).await.unwrap(), 0);

    // Another node takes them over; the released node's outcome does not apply.
    let c = store
        .claim_jobs(now + 4_000, 10, &[], &leased("n_c", now + 10_000))
        .await
        .unwrap();
    assert_eq!(ids(&c), ["j1", "j2", "j3", "j4"]);
    store
        .finish_jobs(vec![completed("j2")], now + 4_100, "n_b")
        .await
        .unwrap();
    assert_eq!(state_of(&store, "j2").await.0, JobState::Active);
    store
        .finish_jobs(
            vec![
                completed("j2"),
                JobUpdate::Delayed {
                    id: "j3".into(),
                    not_before: now + 20_000,
                    attempts: 1,
                },
            ],
            now + 4_100,
            "n_c",
        )
        .await
        .unwrap();
    assert_eq!(state_of(&store, "j2").await.0, JobState::Completed);
    assert_eq!(state_of(&store, "j3").await, (JobState::Delayed, 1));
    // A finished or delayed job is neither renewed nor reclaimed.
    assert_eq!(
        store.renew_job_claims("n_c", now + 20_000).await.unwrap(),
        2
    );
    assert_eq!(store.reclaim_jobs(now + 20_001).await.unwrap(), 2);
    assert_eq!(state_of(&store, "j3").await, (JobState::Delayed, 1));
    assert_eq!(state_of(&store, "j4").await, (JobState::Waiting, 1));
}

pub async fn check_lane_pauses(store: Arc<dyn Store>) {
    assert!(store.paused_lanes().await.unwrap().is_empty());
    store.set_lane_paused(Priority::Low, true).await.unwrap();
    store
        .set_lane_paused(Priority::Critical, true)
        .await
        .unwrap();
    // Pausing twice is one pause.
    store.set_lane_paused(Priority::Low, true).await.unwrap();
    assert_eq!(
        store.paused_lanes().await.unwrap(),
        [Priority::Critical, Priority::Low]
    );
    store.set_lane_paused(Priority::Low, false).await.unwrap();
    store.set_lane_paused(Priority::High, false).await.unwrap();
    assert_eq!(store.paused_lanes().await.unwrap(), [Priority::Critical]);
    store.set_lane_paused(Priority::Low, true).await.unwrap();
    store
        .set_lane_paused(Priority::Critical, false)
        .await
        .unwrap();
    assert_eq!(store.paused_lanes().await.unwrap(), [Priority::Low]);
}
