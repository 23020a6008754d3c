//! Tenants, devices, contacts and groups.

use std::sync::Arc;

use actors::jobs::JobState;
use actors::store::{DeviceRecord, GroupRecord, Store, StoreError, TenantRecord};
use protocol::rest::Contact;
use protocol::Priority;

use crate::inbox::{commit_ok, message_row, msg};
use crate::jobs::job;

pub fn tenant(id: &str, key: &str, created_at: i64) -> TenantRecord {
    TenantRecord {
        id: id.into(),
        name: format!("Tenant {id}"),
        api_key_hash: key.into(),
        created_at,
    }
}

pub fn device(id: &str, tenant_id: &str, address: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        tenant_id: tenant_id.into(),
        address: address.into(),
        name: None,
        created_at: 1_000,
        last_seen: None,
    }
}

fn group(id: &str, members: &[&str]) -> GroupRecord {
    GroupRecord {
        id: id.into(),
        tenant_id: "t1".into(),
        name: format!("Group {id}"),
        members: members.iter().map(|m| m.to_string()).collect(),
        created_at: 5,
        version: 0,
    }
}

fn contact(address: &str, name: Option<&str>) -> Contact {
    Contact {
        address: address.into(),
        name: name.map(Into::into),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub async fn check_tenants(store: Arc<dyn Store>) {
    assert!(store.list_tenants().await.unwrap().is_empty());
    store.create_tenant(tenant("t2", "k2", 20)).await.unwrap();
    store.create_tenant(tenant("t1", "k1", 20)).await.unwrap();
    store.create_tenant(tenant("t0", "k0", 30)).await.unwrap();
    // Same id, or same key hash: conflicts.
    assert!(matches!(
        store.create_tenant(tenant("t1", "other", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_tenant(tenant("t9", "k1", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    let t = store.tenant_by_key_hash("k1").await.unwrap().unwrap();
    assert_eq!(
        (
            t.id.as_str(),
            t.name.as_str(),
            t.api_key_hash.as_str(),
            t.created_at
        ),
        ("t1", "Tenant t1", "k1", 20)
    );
    assert!(store.tenant_by_key_hash("nope").await.unwrap().is_none());
    // By creation time, then id.
    let ids: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["t1", "t2", "t0"]);
}

pub async fn check_devices(store: Arc<dyn Store>) {
    let mut named = device("d2", "t1", "+15550002");
    named.name = Some("Front desk ☎".into());
    named.last_seen = Some(77);
    store.create_device(named).await.unwrap();
    store
        .create_device(device("d1", "t1", "+15550001"))
        .await
        .unwrap();
    store
        .create_device(device("d3", "t1", "+15550003"))
        .await
        .unwrap();
    // The same address in another tenant is another device.
    store
        .create_device(device("e1", "t2", "+15550001"))
        .await
        .unwrap();
    // The same address in the same tenant, or the same id: conflicts.
    assert!(matches!(
        store.create_device(device("d9", "t1", "+15550001")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_device(device("d1", "t3", "+15559999")).await,
        Err(StoreError::Conflict(_))
    ));

    let d2 = store.get_device("d2").await.unwrap().unwrap();
    assert_eq!(d2.name.as_deref(), Some("Front desk ☎"));
    assert_eq!(
        (d2.tenant_id.as_str(), d2.address.as_str()),
        ("t1", "+15550002")
    );
    assert_eq!((d2.created_at, d2.last_seen), (1_000, Some(77)));
    let d1 = store.get_device("d1").await.unwrap().unwrap();
    assert_eq!((d1.name, d1.last_seen), (None, None));
    assert!(store.get_device("nope").await.unwrap().is_none());

    let by_address = store
        .device_by_address("t2", "+15550001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_address.id, "e1");
    assert!(store
        .device_by_address("t2", "+15550002")
        .await
        .unwrap()
        .is_none());

    // Pages by id.
    let page = |after: Option<&'static str>, limit| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_devices("t1", after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 2).await, ["d1", "d2"]);
    assert_eq!(page(Some("d2"), 2).await, ["d3"]);
    assert!(page(Some("d3"), 2).await.is_empty());
    assert_eq!(page(None, 10).await, ["d1", "d2", "d3"]);
    assert!(page(None, 0).await.is_empty());

    let counts = store.device_counts().await.unwrap();
    assert_eq!(counts.get("t1"), Some(&3));
    assert_eq!(counts.get("t2"), Some(&1));
    assert_eq!(counts.len(), 2);

    store.set_last_seen("d1", 12_345).await.unwrap();
    assert_eq!(
        store.get_device("d1").await.unwrap().unwrap().last_seen,
        Some(12_345)
    );
    store.set_last_seen("d1", 12_346).await.unwrap();
    assert_eq!(
        store.get_device("d1").await.unwrap().unwrap().last_seen,
        Some(12_346)
    );
    // Unknown device: nothing happens.
    store.set_last_seen("nope", 1).await.unwrap();
    assert!(store.get_device("nope").await.unwrap().is_none());
}

pub async fn check_delete_device(store: Arc<dyn Store>) {
    store
        .create_device(device("a", "t1", "+15550001"))
        .await
        .unwrap();
    store
        .create_device(device("b", "t1", "+15550002"))
        .await
        .unwrap();
    store
        .upsert_contacts("a", &[contact("+1", Some("one")), contact("+2", None)])
        .await
        .unwrap();
    store
        .upsert_contacts("b", &[contact("+1", Some("kept"))])
        .await
        .unwrap();
    // A message both inboxes hold, and one only a's holds.
    let shared = msg(
        "m-shared",
        Some("a"),
        "+15550001",
        Some("+15550002"),
        "{\"x\":1}",
        10,
    );
    let own = msg(
        "m-own",
        Some("a"),
        "+15550001",
        Some("+15559999"),
        "{\"x\":2}",
        11,
    );
    commit_ok(
        &store,
        vec![
            message_row("a", 1, &shared, Some("c1")),
            message_row("b", 1, &shared, None),
            message_row("a", 2, &own, Some("c2")),
        ],
    )
    .await;
    let mut waiting = job("j-waiting", Priority::Normal, 100);
    waiting.device_id = "a".into();
    let mut delayed = job("j-delayed", Priority::Normal, 100);
    delayed.device_id = "a".into();
    delayed.state = JobState::Delayed;
    let mut active = job("j-active", Priority::Critical, 50);
    active.device_id = "a".into();
    let mut other = job("j-other", Priority::Normal, 100);
    other.device_id = "b".into();
    store
        .insert_jobs(Vec::new(), vec![waiting, delayed, active, other])
        .await
        .unwrap();
    // j-active is claimed (the best rank), then stays active.
    let claimed = store
        .claim_jobs(100, 1, &[], &crate::jobs::claim(crate::jobs::NODE))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, "j-active");

    assert!(store.delete_device("a", 999).await.unwrap());
    assert!(store.get_device("a").await.unwrap().is_none());
    assert!(store
        .device_by_address("t1", "+15550001")
        .await
        .unwrap()
        .is_none());
    assert!(store.list_contacts("a").await.unwrap().is_empty());
    assert!(store.read_inbox("a", 0, 100).await.unwrap().is_empty());
    assert_eq!(store.last_seq("a").await.unwrap(), 0);
    assert!(store.message_copies("m-own").await.unwrap().is_empty());
    // What the other device holds is untouched, the shared message included.
    assert_eq!(
        store.list_contacts("b").await.unwrap(),
        vec![contact("+1", Some("kept"))]
    );
    let b_rows = store.read_inbox("b", 0, 10).await.unwrap();
    assert_eq!(b_rows.len(), 1);
    assert_eq!(
        b_rows[0].kind,
        actors::store::RowKind::Message(shared.clone())
    );
    let copies = store.message_copies("m-shared").await.unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].device_id, "b");
    // Its queued jobs are cancelled; the others are left alone.
    for id in ["j-waiting", "j-delayed"] {
        let j = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Cancelled, "{id}");
        assert_eq!(
            j.error.as_deref(),
            Some("cancelled: the device was deleted")
        );
        assert_eq!(j.updated_at, 999);
    }
    assert_eq!(
        store.get_job("j-active").await.unwrap().unwrap().state,
        JobState::Active
    );
    assert_eq!(
        store.get_job("j-other").await.unwrap().unwrap().state,
        JobState::Waiting
    );
    assert_eq!(store.device_counts().await.unwrap().get("t1"), Some(&1));
    // Gone already.
    assert!(!store.delete_device("a", 1_000).await.unwrap());
    // The address is free again.
    store
        .create_device(device("a2", "t1", "+15550001"))
        .await
        .unwrap();
}

pub async fn check_contacts(store: Arc<dyn Store>) {
    assert_eq!(store.upsert_contacts("d1", &[]).await.unwrap(), 0);
    assert!(store.list_contacts("d1").await.unwrap().is_empty());
    let n = store
        .upsert_contacts(
            "d1",
            &[
                contact("+3", Some("three")),
                contact("+1", None),
                contact("+2", Some("two")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    store
        .upsert_contacts("d2", &[contact("+1", Some("elsewhere"))])
        .await
        .unwrap();
    // Updates by address: a name set, a name cleared, one new.
    let n = store
        .upsert_contacts(
            "d1",
            &[
                contact("+1", Some("one")),
                contact("+3", None),
                contact("+0", Some("zero")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        store.list_contacts("d1").await.unwrap(),
        vec![
            contact("+0", Some("zero")),
            contact("+1", Some("one")),
            contact("+2", Some("two")),
            contact("+3", None),
        ]
    );
    assert_eq!(
        store.list_contacts("d2").await.unwrap(),
        vec![contact("+1", Some("elsewhere"))]
    );

    // Ten thousand at once (a phone book), then read back in address order.
    let book: Vec<Contact> = (0..10_000)
        .rev()
        .map(|i| contact(&format!("+1555{i:07}"), Some(&format!("Contact {i}"))))
        .collect();
    assert_eq!(store.upsert_contacts("big", &book).await.unwrap(), 10_000);
    let listed = store.list_contacts("big").await.unwrap();
    assert_eq!(listed.len(), 10_000);
    for (i, c) in listed.iter().enumerate() {
        assert_eq!(c.address, format!("+1555{i:07}"));
        assert_eq!(c.name.as_deref(), Some(format!("Contact {i}").as_str()));
    }
}

pub async fn check_groups(store: Arc<dyn Store>) {
    assert!(store.get_group("g1").await.unwrap().is_none());
    store
        .create_group(group("g1", &["+2", "+1"]))
        .await
        .unwrap();
    assert!(matches!(
        store.create_group(group("g1", &[])).await,
        Err(StoreError::Conflict(_))
    ));
    let g = store.get_group("g1").await.unwrap().unwrap();
    assert_eq!((g.tenant_id.as_str(), g.name.as_str()), ("t1", "Group g1"));
    assert_eq!(g.created_at, 5);
    // Members as created (in whatever order they were given).
    let mut members = g.members.clone();
    members.sort();
    assert_eq!(members, strings(&["+1", "+2"]));
    assert_eq!(g.version, 0);

    // Added: sorted, unique, version bumped once.
    let g = store
        .add_group_members("g1", &strings(&["+4", "+3", "+1", "+4"]), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.members, strings(&["+1", "+2", "+3", "+4"]));
    assert_eq!(g.version, 1);
    // Nothing new: no change, no bump.
    let g = store
        .add_group_members("g1", &strings(&["+2"]), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.version, 1);
    assert_eq!(g.members.len(), 4);
    // Past the limit: refused whole.
    assert!(matches!(
        store
            .add_group_members("g1", &strings(&["+5", "+6"]), 5)
            .await,
        Err(StoreError::Limit(_))
    ));
    let g = store.get_group("g1").await.unwrap().unwrap();
    assert_eq!((g.members.len(), g.version), (4, 1));
    // Up to the limit exactly: fine.
    let g = store
        .add_group_members("g1", &strings(&["+5"]), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((g.members.len(), g.version), (5, 2));
    assert!(store
        .add_group_members("nope", &strings(&["+1"]), 5)
        .await
        .unwrap()
        .is_none());

    // Removed: bumped only when it was a member.
    let (g, was) = store
        .remove_group_member("g1", "+3")
        .await
        .unwrap()
        .unwrap();
    assert!(was);
    assert_eq!(g.members, strings(&["+1", "+2", "+4", "+5"]));
    assert_eq!(g.version, 3);
    let (g, was) = store
        .remove_group_member("g1", "+3")
        .await
        .unwrap()
        .unwrap();
    assert!(!was);
    assert_eq!(g.version, 3);
    assert!(store
        .remove_group_member("nope", "+1")
        .await
        .unwrap()
        .is_none());
    let g = store.get_group("g1").await.unwrap().unwrap();
    assert_eq!(g.members, strings(&["+1", "+2", "+4", "+5"]));
    assert_eq!(g.version, 3);
}

pub async fn check_concurrent_group_changes(store: Arc<dyn Store>) {
    store.create_group(group("g", &["+0"])).await.unwrap();
    // 20 tasks, each adding its own two members at once: none is lost.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .add_group_members("g", &[format!("+a{i:02}"), format!("+b{i:02}")], 1_000)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap().unwrap();
    }
    let g = store.get_group("g").await.unwrap().unwrap();
    assert_eq!(g.members.len(), 41, "{:?}", g.members);
    assert_eq!(g.version, 20);

    // 20 tasks racing for 9 free places: exactly 9 get in, the others hit the limit.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .add_group_members("g", &[format!("+c{i:02}")], 50)
                    .await
            })
        })
        .collect();
    let (mut added, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(_)) => added += 1,
            Err(StoreError::Limit(_)) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((added, refused), (9, 11));
    let g = store.get_group("g").await.unwrap().unwrap();
    assert_eq!(g.members.len(), 50);
    assert_eq!(g.version, 29);

    // Concurrent removals and additions: each change lands once.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store
                        .remove_group_member("g", &format!("+a{i:02}"))
                        .await
                        .map(|r| r.map(|(_, was)| was))
                } else {
                    store
                        .add_group_members("g", &[format!("+d{i:02}")], 1_000)
                        .await
                        .map(|r| r.map(|_| true))
                }
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(true));
    }
    let g = store.get_group("g").await.unwrap().unwrap();
    assert_eq!(g.members.len(), 50);
    assert_eq!(g.version, 49);
    assert!(g.members.iter().all(|m| !m.starts_with("+a") || {
        let n: u32 = m[2..].parse().unwrap();
        n % 2 == 1
    }));
}

pub async fn check_group_upserts(store: Arc<dyn Store>) {
    store.create_group(group("g1", &["+1"])).await.unwrap();
    let mut renamed = group("g1", &["+2", "+3"]);
    renamed.name = "Renamed".into();
    renamed.created_at = 99;
    let stored = store
        .upsert_groups(vec![renamed, group("g2", &["+4"])])
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    // Replaced: name and members as given, version bumped, creation time kept.
    assert_eq!(
        (
            stored[0].name.as_str(),
            stored[0].version,
            stored[0].created_at
        ),
        ("Renamed", 1, 5)
    );
    let g1 = store.get_group("g1").await.unwrap().unwrap();
    assert_eq!(g1.members, strings(&["+2", "+3"]));
    assert_eq!(
        (g1.name.as_str(), g1.version, g1.created_at),
        ("Renamed", 1, 5)
    );
    // Created as given.
    let g2 = store.get_group("g2").await.unwrap().unwrap();
    assert_eq!((g2.members.clone(), g2.version), (strings(&["+4"]), 0));
    // Repeating the call converges on the same groups (versions move on).
    store
        .upsert_groups(vec![group("g2", &["+4"])])
        .await
        .unwrap();
    let g2 = store.get_group("g2").await.unwrap().unwrap();
    assert_eq!((g2.members, g2.version), (strings(&["+4"]), 1));
    // Another tenant's id is a conflict and leaves the group as it was.
    let mut foreign = group("g1", &["+9"]);
    foreign.tenant_id = "t2".into();
    assert!(matches!(
        store.upsert_groups(vec![foreign]).await,
        Err(StoreError::Conflict(_))
    ));
    let g1 = store.get_group("g1").await.unwrap().unwrap();
    assert_eq!(
        (g1.members, g1.tenant_id.as_str()),
        (strings(&["+2", "+3"]), "t1")
    );
    // A thousand groups in one call.
    let many: Vec<GroupRecord> = (0..1000)
        .map(|i| group(&format!("m{i:04}"), &["+1", "+2"]))
        .collect();
    assert_eq!(store.upsert_groups(many).await.unwrap().len(), 1000);
    assert!(store.get_group("m0999").await.unwrap().is_some());
}
