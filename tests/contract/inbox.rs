//! Messages and inboxes: group commit, sync reads, lookups.

use std::sync::Arc;

use actors::store::{
    InboxRow, MessageCopy, MessageRecord, RowKind, StatusEntry, StatusRecord, Store, StoreError,
};
use protocol::ReceiptStatus;

use crate::directory::device;

pub fn msg(
    id: &str,
    sender_device: Option<&str>,
    from: &str,
    to: Option<&str>,
    body: &str,
    ts: i64,
) -> Arc<MessageRecord> {
    Arc::new(MessageRecord {
        id: id.into(),
        sender_device: sender_device.map(Into::into),
        from: from.into(),
        to: to.map(Into::into),
        group: None,
        body: body.into(),
        ts,
    })
}

fn group_msg(
    id: &str,
    sender_device: &str,
    from: &str,
    group: &str,
    ts: i64,
) -> Arc<MessageRecord> {
    Arc::new(MessageRecord {
        id: id.into(),
        sender_device: Some(sender_device.into()),
        from: from.into(),
        to: None,
        group: Some(group.into()),
        body: format!("{{\"text\":\"to the group {group}\"}}").into(),
        ts,
    })
}

pub fn message_row(
    device_id: &str,
    seq: u64,
    m: &Arc<MessageRecord>,
    client_id: Option<&str>,
) -> InboxRow {
    InboxRow {
        device_id: device_id.into(),
        seq,
        kind: RowKind::Message(Arc::clone(m)),
        ts: m.ts,
        client_id: client_id.map(Into::into),
    }
}

fn status_row(
    device_id: &str,
    seq: u64,
    message_id: &str,
    status: ReceiptStatus,
    by: &str,
    ts: i64,
) -> InboxRow {
    InboxRow {
        device_id: device_id.into(),
        seq,
        kind: RowKind::Status(StatusRecord {
            message_id: message_id.into(),
            status,
            by: by.into(),
        }),
        ts,
        client_id: None,
    }
}

/// Commits rows that must all succeed.
pub async fn commit_ok(store: &Arc<dyn Store>, rows: Vec<InboxRow>) {
    let n = rows.len();
    let results = store.commit_rows(Arc::new(rows)).await.unwrap();
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "row {i}: {r:?}");
    }
}

fn seqs(rows: &[InboxRow]) -> Vec<u64> {
    rows.iter().map(|r| r.seq).collect()
}

pub async fn check_commit_and_read(store: Arc<dyn Store>) {
    assert_eq!(store.last_seq("a").await.unwrap(), 0);
    assert!(store.read_inbox("a", 0, 10).await.unwrap().is_empty());
    assert!(store
        .commit_rows(Arc::new(Vec::new()))
        .await
        .unwrap()
        .is_empty());

    // Bodies come back byte for byte (escapes, non-ASCII, spacing, number formats).
    let tricky = "{ \"text\": \"h\\u00e9llo \u{1F600} \\n\\\"q\\\"\", \"n\": 1.50, \"big\": 12345678901234567890 }";
    let m1 = msg("m1", Some("a"), "+1", Some("+2"), tricky, 100);
    let m2 = msg(
        "m2",
        Some("b"),
        "+2",
        Some("+1"),
        "{\"text\":\"back\"}",
        101,
    );
    let m3 = msg("m3", Some("a"), "+1", Some("+2"), "{}", 102);
    // Out of seq order in one call (and the sender's copies in the same call).
    commit_ok(
        &store,
        vec![
            message_row("a", 3, &m3, Some("req-3")),
            message_row("a", 1, &m1, Some("req-1")),
            message_row("b", 1, &m1, None),
            message_row("a", 2, &m2, None),
            message_row("b", 2, &m2, Some("req-b")),
            message_row("b", 3, &m3, None),
        ],
    )
    .await;
    let rows = store.read_inbox("a", 0, 10).await.unwrap();
    assert_eq!(seqs(&rows), [1, 2, 3]);
    assert_eq!(rows[0].kind, RowKind::Message(Arc::clone(&m1)));
    match &rows[0].kind {
        RowKind::Message(m) => assert_eq!(&*m.body, tricky),
        other => panic!("not a message: {other:?}"),
    }
    assert_eq!(rows[0].client_id.as_deref(), Some("req-1"));
    assert_eq!(rows[0].ts, 100);
    assert_eq!(&*rows[0].device_id, "a");
    assert_eq!(rows[1].kind, RowKind::Message(Arc::clone(&m2)));
    assert_eq!(rows[1].client_id, None);
    assert_eq!(store.last_seq("a").await.unwrap(), 3);
    assert_eq!(store.last_seq("b").await.unwrap(), 3);

    // Paging.
    assert_eq!(seqs(&store.read_inbox("a", 1, 1).await.unwrap()), [2]);
    assert_eq!(seqs(&store.read_inbox("a", 1, 10).await.unwrap()), [2, 3]);
    assert!(store.read_inbox("a", 3, 10).await.unwrap().is_empty());
    assert!(store.read_inbox("a", 0, 0).await.unwrap().is_empty());

    // A group message: stored once, one row per member inbox.
    let g = group_msg("g1", "a", "+1", "grp", 200);
    let members: Vec<String> = (0..5).map(|i| format!("member-{i}")).collect();
    let mut rows = vec![message_row("a", 4, &g, Some("req-g"))];
    rows.extend(members.iter().map(|m| message_row(m, 1, &g, None)));
    commit_ok(&store, rows).await;
    for m in &members {
        let got = store.read_inbox(m, 0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, RowKind::Message(Arc::clone(&g)));
    }
    assert_eq!(store.message_copies("g1").await.unwrap().len(), 6);
    // A message already stored under its id is left as it is.
    let impostor = msg("g1", Some("x"), "+9", Some("+8"), "{\"other\":true}", 1);
    commit_ok(&store, vec![message_row("late", 1, &impostor, None)]).await;
    let got = store.read_inbox("late", 0, 10).await.unwrap();
    assert_eq!(got[0].kind, RowKind::Message(Arc::clone(&g)));

    // Status rows (receipts, in the sender's inbox).
    commit_ok(
        &store,
        vec![
            status_row("a", 5, "m1", ReceiptStatus::Delivered, "+2", 300),
            status_row("a", 6, "m1", ReceiptStatus::Read, "+2", 301),
        ],
    )
    .await;
    let rows = store.read_inbox("a", 4, 10).await.unwrap();
    assert_eq!(seqs(&rows), [5, 6]);
    assert_eq!(
        rows[0].kind,
        RowKind::Status(StatusRecord {
            message_id: "m1".into(),
            status: ReceiptStatus::Delivered,
            by: "+2".into(),
        })
    );
    assert_eq!(rows[1].ts, 301);
    assert_eq!(store.last_seq("a").await.unwrap(), 6);
}

pub async fn check_commit_retries_and_conflicts(store: Arc<dyn Store>) {
    let m1 = msg("m1", Some("a"), "+1", Some("+2"), "{\"n\":1}", 1);
    let m2 = msg("m2", Some("a"), "+1", Some("+2"), "{\"n\":2}", 2);
    let batch = vec![
        message_row("a", 1, &m1, Some("c1")),
        message_row("b", 1, &m1, None),
        message_row("a", 2, &m2, Some("c2")),
        status_row("a", 3, "m1", ReceiptStatus::Delivered, "+2", 5),
    ];
    commit_ok(&store, batch.clone()).await;
    // The same rows again (a retry after a lost answer): each is Ok, nothing doubles.
    commit_ok(&store, batch).await;
    assert_eq!(
        seqs(&store.read_inbox("a", 0, 10).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(store.message_copies("m1").await.unwrap().len(), 2);

    // A taken seq with other content conflicts; the inbox's later rows in the call are
    // aborted and not written, other inboxes' rows are.
    let m3 = msg("m3", Some("a"), "+1", Some("+2"), "{\"n\":3}", 3);
    let m4 = msg("m4", Some("a"), "+1", Some("+2"), "{\"n\":4}", 4);
    let m5 = msg("m5", Some("c"), "+3", Some("+1"), "{\"n\":5}", 5);
    let results = store
        .commit_rows(Arc::new(vec![
            message_row("a", 4, &m3, None),
            message_row("a", 2, &m4, None),
            message_row("b", 2, &m3, None),
            message_row("a", 5, &m4, None),
            status_row("a", 3, "m1", ReceiptStatus::Delivered, "+2", 5),
            message_row("c", 1, &m5, None),
            message_row("a", 6, &m5, None),
        ]))
        .await
        .unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(results[1], Err(StoreError::Conflict(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2], Ok(()));
    assert_eq!(results[3], Err(StoreError::Aborted));
    // Even an idempotent duplicate after the failure is answered Aborted.
    assert_eq!(results[4], Err(StoreError::Aborted));
    assert_eq!(results[5], Ok(()));
    assert_eq!(results[6], Err(StoreError::Aborted));
    let a = store.read_inbox("a", 0, 10).await.unwrap();
    assert_eq!(seqs(&a), [1, 2, 3, 4]);
    assert_eq!(a[1].kind, RowKind::Message(Arc::clone(&m2)));
    assert_eq!(store.last_seq("a").await.unwrap(), 4);
    assert_eq!(seqs(&store.read_inbox("b", 0, 10).await.unwrap()), [1, 2]);
    assert_eq!(seqs(&store.read_inbox("c", 0, 10).await.unwrap()), [1]);
    // Rows not written leave no copy behind.
    assert!(store.message_copies("m4").await.unwrap().is_empty());

    // A status at a taken seq: the same report is a retry, another is a conflict.
    let again = store
        .commit_rows(Arc::new(vec![status_row(
            "a",
            3,
            "m1",
            ReceiptStatus::Delivered,
            "+2",
            999,
        )]))
        .await
        .unwrap();
    assert_eq!(again, [Ok(())]);
    let other = store
        .commit_rows(Arc::new(vec![
            status_row("a", 3, "m1", ReceiptStatus::Read, "+2", 6),
            status_row("a", 7, "m1", ReceiptStatus::Read, "+2", 6),
        ]))
        .await
        .unwrap();
    assert!(matches!(other[0], Err(StoreError::Conflict(_))));
    assert_eq!(other[1], Err(StoreError::Aborted));
    let other_by = store
        .commit_rows(Arc::new(vec![status_row(
            "a",
            3,
            "m1",
            ReceiptStatus::Delivered,
            "+7",
            6,
        )]))
        .await
        .unwrap();
    assert!(matches!(other_by[0], Err(StoreError::Conflict(_))));
    assert_eq!(store.last_seq("a").await.unwrap(), 4);
}

pub async fn check_inbox_lookups(store: Arc<dyn Store>) {
    store
        .create_device(device("alice", "t1", "+1"))
        .await
        .unwrap();
    store
        .create_device(device("bob", "t1", "+2"))
        .await
        .unwrap();
    let m1 = msg("m1", Some("alice"), "+1", Some("+2"), "{\"n\":1}", 10);
    let m2 = msg("m2", Some("alice"), "+1", Some("+2"), "{\"n\":2}", 11);
    let m3 = msg("m3", Some("bob"), "+2", Some("+1"), "{\"n\":3}", 12);
    commit_ok(
        &store,
        vec![
            message_row("alice", 1, &m1, Some("req")),
            message_row("bob", 1, &m1, None),
            // A recipient whose device is gone (or was never registered).
            message_row("ghost", 7, &m1, None),
            message_row("alice", 2, &m2, Some("req.1")),
            message_row("bob", 2, &m2, None),
            message_row("bob", 3, &m3, Some("bob-req")),
            message_row("alice", 3, &m3, None),
            status_row("alice", 4, "m1", ReceiptStatus::Delivered, "+2", 20),
            message_row(
                "alice",
                5,
                &msg("m4", Some("alice"), "+1", Some("+2"), "{}", 13),
                Some("req-x"),
            ),
            message_row(
                "alice",
                6,
                &msg("m5", Some("alice"), "+1", Some("+2"), "{}", 14),
                Some("req.x"),
            ),
            message_row(
                "alice",
                7,
                &msg("m6", Some("alice"), "+1", Some("+2"), "{}", 15),
                Some("req.12"),
            ),
            message_row(
                "alice",
                8,
                &msg("m7", Some("alice"), "+1", Some("+2"), "{}", 16),
                Some("reqs"),
            ),
            status_row("alice", 9, "m1", ReceiptStatus::Read, "+2", 21),
            status_row("alice", 10, "m2", ReceiptStatus::Delivered, "+2", 22),
        ],
    )
    .await;

    // The message rows holding some messages: at most one per id, statuses left out.
    let found = store
        .inbox_messages(
            "alice",
            &["m1".to_string(), "m3".into(), "m1".into(), "nope".into()],
        )
        .await
        .unwrap();
    let mut got: Vec<(u64, String)> = found
        .iter()
        .map(|r| (r.seq, r.kind.message_id().to_string()))
        .collect();
    got.sort();
    assert_eq!(got, [(1, "m1".to_string()), (3, "m3".to_string())]);
    let first = found.iter().find(|r| r.seq == 1).unwrap();
    assert_eq!(first.kind, RowKind::Message(Arc::clone(&m1)));
    assert_eq!(first.client_id.as_deref(), Some("req"));
    assert!(store.inbox_messages("alice", &[]).await.unwrap().is_empty());

    // Every copy, by device id, with the owner's address where the device exists.
    assert_eq!(
        store.message_copies("m1").await.unwrap(),
        vec![
            MessageCopy {
                device_id: "alice".into(),
                address: Some("+1".into()),
                seq: 1,
            },
            MessageCopy {
                device_id: "bob".into(),
                address: Some("+2".into()),
                seq: 1,
            },
            MessageCopy {
                device_id: "ghost".into(),
                address: None,
                seq: 7,
            },
        ]
    );
    assert!(store.message_copies("nope").await.unwrap().is_empty());

    // Statuses of one message in the sender's inbox, in seq order.
    assert_eq!(
        store.statuses("alice", "m1").await.unwrap(),
        vec![
            StatusEntry {
                by: "+2".into(),
                status: ReceiptStatus::Delivered,
                ts: 20,
                seq: 4,
            },
            StatusEntry {
                by: "+2".into(),
                status: ReceiptStatus::Read,
                ts: 21,
                seq: 9,
            },
        ]
    );
    assert_eq!(store.statuses("alice", "m2").await.unwrap().len(), 1);
    assert!(store.statuses("bob", "m1").await.unwrap().is_empty());

    // The idempotency window: the latest sends with a request id, newest first.
    let recent = store.recent_client_ids("alice", 3).await.unwrap();
    let ids: Vec<(&str, &str, u64, i64)> = recent
        .iter()
        .map(|a| (a.client_id.as_str(), a.message_id.as_str(), a.seq, a.ts))
        .collect();
    assert_eq!(
        ids,
        [
            ("reqs", "m7", 8, 16),
            ("req.12", "m6", 7, 15),
            ("req.x", "m5", 6, 14),
        ]
    );
    assert_eq!(
        store.recent_client_ids("alice", 100).await.unwrap().len(),
        6
    );
    assert_eq!(store.recent_client_ids("bob", 100).await.unwrap().len(), 1);
    assert!(store
        .recent_client_ids("ghost", 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .recent_client_ids("alice", 0)
        .await
        .unwrap()
        .is_empty());

    // A request id and its `.N` resends, oldest first; not `req-x`, `req.x`, `reqs`.
    let sends = store.sends_by_client_id("alice", "req").await.unwrap();
    let got: Vec<(&str, &str, u64)> = sends
        .iter()
        .map(|a| (a.client_id.as_str(), a.message_id.as_str(), a.seq))
        .collect();
    assert_eq!(
        got,
        [("req", "m1", 1), ("req.1", "m2", 2), ("req.12", "m6", 7)]
    );
    assert_eq!(sends[0].ts, 10);
    assert!(store
        .sends_by_client_id("bob", "req")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .sends_by_client_id("alice", "req.1")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .sends_by_client_id("alice", "re")
        .await
        .unwrap()
        .is_empty());
}
