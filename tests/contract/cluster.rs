//! A cluster's shared state (`docs/cluster.md`): node leases, and device ownership
//! with fencing epochs taken by compare-and-set.

use std::collections::HashSet;
use std::sync::Arc;

use actors::store::{NodeLoad, NodeRecord, OwnerRecord, Store};

use crate::directory::device;

fn node(id: &str, lease_until: i64) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        addr: format!("10.0.0.1:{}", 8000 + id.len()),
        started_at: 1_000,
        lease_until,
        draining: false,
        connections: 0,
        sessions: 0,
    }
}

pub async fn check_nodes(store: Arc<dyn Store>) {
    assert!(store.list_nodes().await.unwrap().is_empty());
    store.put_node(node("n_b", 7_000)).await.unwrap();
    store.put_node(node("n_a", 6_000)).await.unwrap();
    store.put_node(node("n_c", 6_500)).await.unwrap();
    let ids: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["n_a", "n_b", "n_c"]);

    // A heartbeat: the lease and the figures, nothing else.
    let load = NodeLoad {
        connections: 5_000_000_000,
        sessions: 12,
        draining: true,
    };
    assert!(store.renew_node("n_b", 9_000, load).await.unwrap());
    let b = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "n_b")
        .unwrap();
    assert_eq!(
        b,
        NodeRecord {
            lease_until: 9_000,
            draining: true,
            connections: 5_000_000_000,
            sessions: 12,
            ..node("n_b", 0)
        }
    );
    // Not draining any more.
    let load = NodeLoad {
        draining: false,
        ..load
    };
    assert!(store.renew_node("n_b", 10_000, load).await.unwrap());
    let b = store.list_nodes().await.unwrap().remove(1);
    assert_eq!((b.lease_until, b.draining), (10_000, false));
    // An unknown node is not registered by a renewal.
    assert!(!store
        .renew_node("n_ghost", 9_000, NodeLoad::default())
        .await
        .unwrap());
    assert_eq!(store.list_nodes().await.unwrap().len(), 3);

    // Registering again replaces the record.
    let mut again = node("n_a", 20_000);
    again.addr = "10.0.0.9:9000".into();
    again.started_at = 15_000;
    store.put_node(again.clone()).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap()[0], again);

    store.remove_node("n_b").await.unwrap();
    store.remove_node("n_b").await.unwrap();
    store.remove_node("n_ghost").await.unwrap();
    let ids: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["n_a", "n_c"]);
    assert!(!store
        .renew_node("n_b", 11_000, NodeLoad::default())
        .await
        .unwrap());
}

pub async fn check_owner_claims(store: Arc<dyn Store>) {
    assert_eq!(store.get_owner("d1").await.unwrap(), None);
    // The first claim: epoch 1.
    let first = store
        .claim_owner("d1", "n_a", None, 100)
        .await
        .unwrap()
        .unwrap();
    let expected = OwnerRecord {
        device_id: "d1".into(),
        node: "n_a".into(),
        epoch: 1,
        clean: false,
        since: 100,
    };
    assert_eq!(first, expected);
    assert_eq!(store.get_owner("d1").await.unwrap(), Some(expected.clone()));
    // Someone claimed it first: no record is expected any more, nor another epoch.
    assert_eq!(
        store.claim_owner("d1", "n_b", None, 101).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_owner("d1", "n_b", Some(0), 101).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_owner("d1", "n_b", Some(2), 101).await.unwrap(),
        None
    );
    assert_eq!(store.get_owner("d1").await.unwrap(), Some(expected));

    // A takeover over the epoch read.
    let second = store
        .claim_owner("d1", "n_b", Some(1), 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.node.as_str(), second.epoch), ("n_b", 2));
    assert!(!second.clean);
    // The stale owner cannot release it; nor the new one at the old epoch.
    assert!(!store.release_owner("d1", "n_a", 1, 250).await.unwrap());
    assert!(!store.release_owner("d1", "n_a", 2, 250).await.unwrap());
    assert!(!store.release_owner("d1", "n_b", 1, 250).await.unwrap());
    assert!(!store.get_owner("d1").await.unwrap().unwrap().clean);
    assert!(!store.release_owner("ghost", "n_b", 2, 250).await.unwrap());
    // The owner releases it cleanly.
    assert!(store.release_owner("d1", "n_b", 2, 300).await.unwrap());
    assert_eq!(
        store.get_owner("d1").await.unwrap(),
        Some(OwnerRecord {
            device_id: "d1".into(),
            node: "n_b".into(),
            epoch: 2,
            clean: true,
            since: 300,
        })
    );
    // A claim after a clean release is a new epoch, not clean.
    let third = store
        .claim_owner("d1", "n_a", Some(2), 400)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (third.node.as_str(), third.epoch, third.clean),
        ("n_a", 3, false)
    );
    assert_eq!(store.get_owner("d1").await.unwrap(), Some(third));
    // Other devices are their own.
    assert_eq!(store.get_owner("d2").await.unwrap(), None);

    // Deleting a device deletes its owner record.
    store.create_device(device("d3", "t1", "+3")).await.unwrap();
    store
        .claim_owner("d3", "n_a", None, 500)
        .await
        .unwrap()
        .unwrap();
    assert!(store.delete_device("d3", 600).await.unwrap());
    assert_eq!(store.get_owner("d3").await.unwrap(), None);
    assert_eq!(store.get_owner("d1").await.unwrap().unwrap().epoch, 3);
}

pub async fn check_concurrent_owner_claims(store: Arc<dyn Store>) {
    // Rounds of four nodes claiming one device over the same epoch read: each round
    // exactly one wins, and the epoch goes up by one.
    let mut seen: Option<u64> = None;
    for round in 0..8_i64 {
        let claims: Vec<_> = (0..4)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let node = format!("n_{n}");
                    store
                        .claim_owner("contended", &node, seen, round)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut won: Vec<OwnerRecord> = Vec::new();
        for c in claims {
            won.extend(c.await.unwrap());
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let winner = won.remove(0);
        let epoch = seen.map_or(1, |e| e + 1);
        assert_eq!(winner.epoch, epoch);
        assert_eq!(store.get_owner("contended").await.unwrap(), Some(winner));
        seen = Some(epoch);
    }
    let owner = store.get_owner("contended").await.unwrap().unwrap();
    assert_eq!(owner.epoch, 8);
    let nodes: HashSet<String> = (0..4).map(|n| format!("n_{n}")).collect();
    assert!(nodes.contains(&owner.node));
}
