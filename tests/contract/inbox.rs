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
        epoch: 0,
        into_fence: false,
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
        epoch: 0,
        into_fence: false,
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

/// `row` written by the session of `epoch`, into that epoch's fence or not.
fn at_epoch(row: InboxRow, epoch: u64, into_fence: bool) -> InboxRow {
    InboxRow {
        epoch,
        into_fence,
        ..row
    }
}

async fn commit(store: &Arc<dyn Store>, rows: Vec<InboxRow>) -> Vec<Result<(), StoreError>> {
    store.commit_rows(Arc::new(rows)).await.unwrap()
}

fn is_conflict(r: &Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

pub async fn check_fences(store: Arc<dyn Store>) {
    let m = |id: &str, ts: i64| msg(id, Some("f"), "+1", Some("+2"), "{}", ts);
    let (m1, m2, m4, m8) = (m("m1", 1), m("m2", 2), m("m4", 4), m("m8", 8));
    // Epoch 1 wrote 1..3; its stale commit landed at 4, 5 and 8 (8 lies past the range
    // fenced below); m4 is held by another inbox too.
    commit_ok(
        &store,
        vec![
            at_epoch(message_row("f", 1, &m1, Some("c1")), 1, false),
            at_epoch(message_row("f", 2, &m2, None), 1, false),
            at_epoch(
                status_row("f", 3, "m1", ReceiptStatus::Delivered, "+2", 3),
                1,
                false,
            ),
            at_epoch(message_row("f", 4, &m4, Some("c4")), 1, false),
            at_epoch(
                status_row("f", 5, "m1", ReceiptStatus::Read, "+2", 5),
                1,
                false,
            ),
            at_epoch(message_row("f", 8, &m8, None), 1, false),
            message_row("r", 1, &m4, None),
        ],
    )
    .await;
    let rows = store.read_inbox("f", 0, 100).await.unwrap();
    assert_eq!(seqs(&rows), [1, 2, 3, 4, 5, 8]);
    assert!(rows.iter().all(|r| r.epoch == 1 && !r.into_fence));

    // Epoch 2 fences 4..=7: the stale rows there become its fences, the empty slots
    // get fences; rows outside the range stay.
    store.fence_inbox("f", 4, 4, 2).await.unwrap();
    assert_eq!(
        seqs(&store.read_inbox("f", 0, 100).await.unwrap()),
        [1, 2, 3, 8]
    );
    assert_eq!(seqs(&store.read_inbox("f", 3, 1).await.unwrap()), [8]);
    assert_eq!(store.last_seq("f").await.unwrap(), 8);
    // No read finds what the fences replaced.
    assert!(store
        .inbox_messages("f", &["m4".to_string()])
        .await
        .unwrap()
        .is_empty());
    let copies = store.message_copies("m4").await.unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].device_id, "r");
    let statuses = store.statuses("f", "m1").await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].seq, 3);
    let recent = store.recent_client_ids("f", 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].client_id, "c1");
    assert!(store
        .sends_by_client_id("f", "c4")
        .await
        .unwrap()
        .is_empty());

    // The stale owner's inserts hit the fences: conflict, and its later rows aborted.
    let (m5, m6, m7) = (m("m5", 5), m("m6", 6), m("m7", 7));
    let stale = commit(
        &store,
        vec![
            at_epoch(message_row("f", 6, &m5, None), 1, false),
            at_epoch(message_row("f", 7, &m6, None), 1, false),
        ],
    )
    .await;
    assert!(is_conflict(&stale[0]), "{stale:?}");
    assert_eq!(stale[1], Err(StoreError::Aborted));
    // Nor may it write into a fence of another epoch.
    let stale = commit(
        &store,
        vec![at_epoch(message_row("f", 6, &m5, None), 1, true)],
    )
    .await;
    assert!(is_conflict(&stale[0]), "{stale:?}");
    // A row of the fencing epoch that is not meant for a fence does not replace one.
    let plain = commit(
        &store,
        vec![at_epoch(message_row("f", 6, &m5, None), 2, false)],
    )
    .await;
    assert!(is_conflict(&plain[0]), "{plain:?}");
    // A row meant for a fence where there is none.
    let none = commit(
        &store,
        vec![at_epoch(message_row("f", 20, &m5, None), 2, true)],
    )
    .await;
    assert!(is_conflict(&none[0]), "{none:?}");

    // The new owner writes into its fences (a retry of it is answered the same); a
    // later row of the inbox that conflicts aborts those after it, which go again,
    // while the rows written into fences stay.
    let own = vec![
        at_epoch(message_row("f", 4, &m5, Some("c5")), 2, true),
        at_epoch(message_row("f", 5, &m6, None), 2, true),
    ];
    assert_eq!(commit(&store, own.clone()).await, [Ok(()), Ok(())]);
    assert_eq!(commit(&store, own).await, [Ok(()), Ok(())]);
    let mixed = commit(
        &store,
        vec![
            at_epoch(message_row("f", 6, &m7, None), 2, true),
            at_epoch(message_row("f", 8, &m7, None), 2, false),
            at_epoch(message_row("f", 9, &m("m9", 9), None), 2, false),
        ],
    )
    .await;
    assert_eq!(mixed[0], Ok(()));
    assert!(is_conflict(&mixed[1]), "{mixed:?}");
    assert_eq!(mixed[2], Err(StoreError::Aborted));
    let rows = store.read_inbox("f", 0, 100).await.unwrap();
    assert_eq!(seqs(&rows), [1, 2, 3, 4, 5, 6, 8]);
    assert_eq!(rows[3].kind, RowKind::Message(Arc::clone(&m5)));
    assert_eq!(rows[3].client_id.as_deref(), Some("c5"));
    assert_eq!(
        rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 1, 1, 2, 2, 2, 1]
    );
    assert_eq!(store.recent_client_ids("f", 10).await.unwrap().len(), 2);
    // A slot written into its fence holds that row: other content conflicts.
    let other = commit(
        &store,
        vec![at_epoch(message_row("f", 4, &m8, None), 2, true)],
    )
    .await;
    assert!(is_conflict(&other[0]), "{other:?}");

    // Fencing again at the same epoch leaves its rows and fences alone.
    store.fence_inbox("f", 4, 4, 2).await.unwrap();
    assert_eq!(
        seqs(&store.read_inbox("f", 0, 100).await.unwrap()),
        [1, 2, 3, 4, 5, 6, 8]
    );
    // Its fence at 7 is still there to write into.
    commit_ok(
        &store,
        vec![at_epoch(message_row("f", 7, &m("m10", 10), None), 2, true)],
    )
    .await;

    // A newer epoch fences over all of it: epoch 2's rows and fences, epoch 1's row.
    store.fence_inbox("f", 4, 5, 3).await.unwrap();
    assert_eq!(
        seqs(&store.read_inbox("f", 0, 100).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(store.last_seq("f").await.unwrap(), 3);
    assert!(store.message_copies("m5").await.unwrap().is_empty());
    let late = commit(
        &store,
        vec![at_epoch(message_row("f", 6, &m7, None), 2, true)],
    )
    .await;
    assert!(is_conflict(&late[0]), "{late:?}");
    // A message whose row became a fence may be written again, into a fence.
    commit_ok(
        &store,
        vec![at_epoch(message_row("f", 4, &m5, None), 3, true)],
    )
    .await;
    assert_eq!(store.last_seq("f").await.unwrap(), 4);
    assert_eq!(
        store
            .inbox_messages("f", &["m5".to_string()])
            .await
            .unwrap()[0]
            .seq,
        4
    );
    // An empty range fences nothing.
    store.fence_inbox("f", 5, 0, 9).await.unwrap();
    commit_ok(
        &store,
        vec![at_epoch(message_row("f", 5, &m6, None), 3, true)],
    )
    .await;
    // Other inboxes are untouched.
    assert_eq!(seqs(&store.read_inbox("r", 0, 10).await.unwrap()), [1]);
}

pub async fn check_message_rows_once(store: Arc<dyn Store>) {
    let m = |id: &str| msg(id, Some("a"), "+1", Some("+2"), "{}", 1);
    let (m1, m2, m3, m4) = (m("m1"), m("m2"), m("m3"), m("m4"));
    commit_ok(&store, vec![message_row("a", 1, &m1, Some("c1"))]).await;
    // The same message again at another seq: a conflict, the inbox's later rows
    // aborted.
    let again = commit(
        &store,
        vec![
            message_row("a", 2, &m1, None),
            message_row("a", 3, &m2, None),
        ],
    )
    .await;
    assert!(is_conflict(&again[0]), "{again:?}");
    assert_eq!(again[1], Err(StoreError::Aborted));
    assert_eq!(store.last_seq("a").await.unwrap(), 1);
    // Twice in one call.
    let twice = commit(
        &store,
        vec![
            message_row("a", 2, &m3, None),
            message_row("a", 3, &m3, None),
            message_row("a", 4, &m4, None),
            message_row("b", 1, &m3, None),
        ],
    )
    .await;
    assert_eq!(twice[0], Ok(()));
    assert!(is_conflict(&twice[1]), "{twice:?}");
    assert_eq!(twice[2], Err(StoreError::Aborted));
    assert_eq!(twice[3], Ok(()));
    assert_eq!(seqs(&store.read_inbox("a", 0, 10).await.unwrap()), [1, 2]);
    // The same row at its own seq is still a retry; statuses of one message repeat;
    // other inboxes hold their own copy.
    commit_ok(
        &store,
        vec![
            message_row("a", 1, &m1, Some("c1")),
            status_row("a", 3, "m1", ReceiptStatus::Delivered, "+2", 2),
            status_row("a", 4, "m1", ReceiptStatus::Read, "+2", 3),
            message_row("b", 2, &m1, None),
        ],
    )
    .await;
    assert_eq!(store.message_copies("m1").await.unwrap().len(), 2);
    // Into a fence as well.
    store.fence_inbox("a", 5, 2, 1).await.unwrap();
    let fenced = commit(
        &store,
        vec![at_epoch(message_row("a", 5, &m1, None), 1, true)],
    )
    .await;
    assert!(is_conflict(&fenced[0]), "{fenced:?}");
    commit_ok(
        &store,
        vec![at_epoch(message_row("a", 5, &m2, None), 1, true)],
    )
    .await;
    assert_eq!(store.last_seq("a").await.unwrap(), 5);
}
