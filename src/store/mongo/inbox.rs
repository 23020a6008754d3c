//! Messages and inboxes in the MongoDB store.
//!
//! A message is one document of `messages` (`_id` = message id, the body a string,
//! byte-exact), whatever its fan-out. An inbox row is one small document of `inbox`:
//! `device_id`, `seq`, `kind` (0 a message, 1 delivered, 2 read, -1 a fence),
//! `message_id`, `by` (the reporting address, status rows), `ts`, `client_id` (the
//! sender's own copy only, absent otherwise), `chat`, the other party (the peer's
//! address for 1:1, the group id for groups, the reporting address for statuses),
//! which the replaced system's `deviceId+chatId+timestamp` index is on, `epoch`, the
//! fencing epoch of the session that wrote it, and on message rows only
//! `message_key`, the message id again. `(device_id, seq)` is unique, and so is
//! `(device_id, message_key)` over message rows (`inbox_message_once`): an inbox holds
//! a message once. That key is its own field, absent from status rows and fences,
//! because not every server honours a partial filter: nx-27017 makes the index unique
//! over every row, and only a missing key (null, which its unique indexes let repeat)
//! keeps statuses and fences, which share message ids, out of it. Rows written before
//! `message_key` existed are not covered.
//!
//! Fence rows (`fence.rs`) are never read: every read asks for kinds >= 0 or one kind.
//!
//! Group commit without a transaction: the messages go first (`insert_many`,
//! unordered; a duplicate id is a message already stored), then the rows (the same);
//! the per-row outcome comes from the bulk error's write errors. An inbox never keeps a
//! row after a failed one of the same call: rows the unordered insert wrote past a
//! failure are deleted again before the call answers (a reader running at that moment
//! may glimpse them; see the module docs of `mod.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actors::store::{
    AcceptedSend, InboxRow, MessageCopy, MessageRecord, RowKind, RowResult, StatusEntry,
    StatusRecord, StoreError, StoreResult,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, IndexedWriteError};
use protocol::ReceiptStatus;
use serde::{Deserialize, Serialize};

use super::fence;
use super::stats::KnownQuery;
use super::{coll, find_all, limit_i64, map_err, to_i64, to_u64, Inner, CHUNK, DUPLICATE_KEY};

/// How often deleting the rows written past a failed one is tried.
const CLEANUP_ATTEMPTS: usize = 3;

#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender_device: Option<String>,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    body: String,
    ts: i64,
}

/// An inbox row as written.
#[derive(Debug, Serialize)]
pub(super) struct RowDoc<'a> {
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) device_id: &'a str,
    pub(super) seq: i64,
    pub(super) kind: i64,
    pub(super) message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) by: Option<&'a str>,
    pub(super) ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_id: Option<&'a str>,
    pub(super) chat: &'a str,
    pub(super) epoch: i64,
    /// The message id on message rows only: the key of `inbox_message_once`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message_key: Option<&'a str>,
}

impl<'a> RowDoc<'a> {
    /// The document of a row, under a fresh `_id`.
    pub(super) fn of(row: &'a InboxRow) -> StoreResult<Self> {
        Ok(RowDoc {
            id: ObjectId::new(),
            device_id: &row.device_id,
            seq: to_i64(row.seq, "seq")?,
            kind: kind_code(&row.kind),
            message_id: row.kind.message_id(),
            by: match &row.kind {
                RowKind::Status(st) => Some(&st.by),
                RowKind::Message(_) => None,
            },
            ts: row.ts,
            client_id: row.client_id.as_deref(),
            chat: chat_of(row),
            epoch: to_i64(row.epoch, "epoch")?,
            message_key: match &row.kind {
                RowKind::Message(m) => Some(&m.id),
                RowKind::Status(_) => None,
            },
        })
    }

    /// Whether a stored row's content (kind, message id, by) is this row's: a retry.
    pub(super) fn same_as(&self, stored: &(i64, String, Option<String>)) -> bool {
        let (kind, message_id, by) = stored;
        *kind == self.kind && message_id == self.message_id && by.as_deref() == self.by
    }
}

/// An inbox row as read back.
#[derive(Debug, Deserialize)]
struct RowRead {
    device_id: String,
    seq: i64,
    kind: i64,
    message_id: String,
    #[serde(default)]
    by: Option<String>,
    ts: i64,
    #[serde(default)]
    client_id: Option<String>,
    /// Absent on rows written before epochs existed: 0, one node's.
    #[serde(default)]
    epoch: i64,
}

/// A copy or a request id as read back (projections).
#[derive(Debug, Deserialize)]
struct SeqRead {
    seq: i64,
}

#[derive(Debug, Deserialize)]
struct CopyRead {
    device_id: String,
    seq: i64,
}

#[derive(Debug, Deserialize)]
struct SentRead {
    client_id: String,
    message_id: String,
    seq: i64,
    ts: i64,
}

#[derive(Debug, Deserialize)]
struct AddressRead {
    #[serde(rename = "_id")]
    id: String,
    address: String,
}

#[derive(Debug, Deserialize)]
struct HolderRead {
    device_id: String,
    message_id: String,
}

fn kind_code(kind: &RowKind) -> i64 {
    match kind {
        RowKind::Message(_) => 0,
        RowKind::Status(StatusRecord {
            status: ReceiptStatus::Delivered,
            ..
        }) => 1,
        RowKind::Status(StatusRecord {
            status: ReceiptStatus::Read,
            ..
        }) => 2,
    }
}

fn status_of(code: i64) -> Option<ReceiptStatus> {
    match code {
        1 => Some(ReceiptStatus::Delivered),
        2 => Some(ReceiptStatus::Read),
        _ => None,
    }
}

/// The other party of a row: what the `deviceId+chatId+timestamp` index groups by.
fn chat_of(row: &InboxRow) -> &str {
    match &row.kind {
        RowKind::Status(s) => &s.by,
        RowKind::Message(m) => match (&m.group, &m.sender_device) {
            (Some(g), _) => g,
            // The sender's own copy: the chat is with the recipient.
            (None, Some(sender)) if **sender == *row.device_id => {
                m.to.as_deref().unwrap_or(&m.from)
            }
            (None, _) => &m.from,
        },
    }
}

fn message_doc(m: &MessageRecord) -> MessageDoc {
    MessageDoc {
        id: m.id.to_string(),
        sender_device: m.sender_device.as_deref().map(str::to_owned),
        from: m.from.to_string(),
        to: m.to.as_deref().map(str::to_owned),
        group: m.group.as_deref().map(str::to_owned),
        body: m.body.to_string(),
        ts: m.ts,
    }
}

fn message_record(d: MessageDoc) -> Arc<MessageRecord> {
    Arc::new(MessageRecord {
        id: d.id.into(),
        sender_device: d.sender_device.map(Into::into),
        from: d.from.into(),
        to: d.to.map(Into::into),
        group: d.group.map(Into::into),
        body: d.body.into(),
        ts: d.ts,
    })
}

// ---- the queries ----

/// Highest seq of an inbox, fences left out: a walk down `inbox_seq` that stops at
/// the first row that is not a fence.
pub(super) fn last_seq_query(device_id: &str) -> KnownQuery {
    KnownQuery::new(
        "last_seq",
        coll::INBOX,
        doc! { "device_id": device_id, "kind": { "$gte": 0_i64 } },
    )
    .sort(doc! { "seq": -1 })
    .index("inbox_seq")
    .residual(&["kind"])
}

/// A page of an inbox, fences left out.
pub(super) fn read_inbox_query(device_id: &str, after: i64) -> KnownQuery {
    KnownQuery::new(
        "read_inbox",
        coll::INBOX,
        doc! { "device_id": device_id, "seq": { "$gt": after }, "kind": { "$gte": 0_i64 } },
    )
    .sort(doc! { "seq": 1 })
    .index("inbox_seq")
    .residual(&["kind"])
}

/// Messages by id (joining rows to their messages).
pub(super) fn messages_query(operation: &'static str, ids: &[&str]) -> KnownQuery {
    KnownQuery::new(operation, coll::MESSAGES, doc! { "_id": { "$in": ids } }).index("_id_")
}

/// Rows already at some seqs of one inbox (checking a duplicate seq's content; fences
/// included).
pub(super) fn rows_at_query(device_id: &str, seqs: &[i64]) -> KnownQuery {
    KnownQuery::new(
        "commit_rows",
        coll::INBOX,
        doc! { "device_id": device_id, "seq": { "$in": seqs } },
    )
    .index("inbox_seq")
}

/// The message rows of an inbox holding some messages.
pub(super) fn inbox_messages_query(device_id: &str, ids: &[&str]) -> KnownQuery {
    KnownQuery::new(
        "inbox_messages",
        coll::INBOX,
        doc! { "device_id": device_id, "message_id": { "$in": ids }, "kind": 0_i64 },
    )
    .index("inbox_device_message")
    .residual(&["kind"])
}

/// Every inbox holding a message as a message row.
pub(super) fn copies_query(message_id: &str) -> KnownQuery {
    KnownQuery::new(
        "message_copies",
        coll::INBOX,
        doc! { "message_id": message_id, "kind": 0_i64 },
    )
    .index("inbox_message")
    .residual(&["kind"])
}

/// The owners' addresses of some inboxes.
pub(super) fn addresses_query(ids: &[&str]) -> KnownQuery {
    KnownQuery::new(
        "message_copies",
        coll::DEVICES,
        doc! { "_id": { "$in": ids } },
    )
    .index("_id_")
}

/// The status rows of an inbox about one message.
pub(super) fn statuses_query(device_id: &str, message_id: &str) -> KnownQuery {
    KnownQuery::new(
        "statuses",
        coll::INBOX,
        doc! { "device_id": device_id, "message_id": message_id, "kind": { "$gt": 0_i64 } },
    )
    .index("inbox_device_message")
    .residual(&["kind"])
}

/// A device's latest sends with a request id.
pub(super) fn recent_client_ids_query(device_id: &str) -> KnownQuery {
    KnownQuery::new(
        "recent_client_ids",
        coll::INBOX,
        doc! { "device_id": device_id, "client_id": { "$exists": true } },
    )
    .sort(doc! { "seq": -1 })
    .index("inbox_sent")
}

/// A device's sends under a request id or its `.N` resends: `id` and `id.N` sort in
/// `[id, id + "/")` since '.' < '/' (other ids in that range are filtered out after).
pub(super) fn sends_by_client_id_query(device_id: &str, client_id: &str) -> KnownQuery {
    KnownQuery::new(
        "sends_by_client_id",
        coll::INBOX,
        doc! {
            "device_id": device_id,
            "client_id": { "$exists": true, "$gte": client_id, "$lt": format!("{client_id}/") },
        },
    )
    .index("inbox_client")
}

/// Deleting a device: the messages its inbox holds.
pub(super) fn held_messages_query(device_id: &str) -> KnownQuery {
    KnownQuery::new(
        "delete_device",
        coll::INBOX,
        doc! { "device_id": device_id, "kind": 0_i64 },
    )
    .index("inbox_seq")
    .residual(&["kind"])
}

/// Deleting a device: which of its messages other inboxes still hold.
pub(super) fn holders_query(ids: &[&str]) -> KnownQuery {
    KnownQuery::new(
        "delete_device",
        coll::INBOX,
        doc! { "message_id": { "$in": ids } },
    )
    .index("inbox_message")
}

/// Deleting a device: its inbox.
pub(super) fn inbox_query(device_id: &str) -> KnownQuery {
    KnownQuery::new(
        "delete_device",
        coll::INBOX,
        doc! { "device_id": device_id },
    )
    .index("inbox_seq")
}

// ---- commit ----

/// The write errors of an unordered `insert_many`, by index into what was inserted;
/// `Err` when the outcome is unknown (network, write concern): nothing can be said
/// per document.
fn write_errors(
    result: mongodb::error::Result<mongodb::results::InsertManyResult>,
) -> StoreResult<HashMap<usize, IndexedWriteError>> {
    match result {
        Ok(_) => Ok(HashMap::new()),
        Err(e) => match *e.kind {
            ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                Ok(failure
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| (w.index, w.clone()))
                    .collect())
            }
            _ => Err(map_err(e)),
        },
    }
}

fn row_error(w: &IndexedWriteError) -> StoreError {
    row_error_of(w.code, &w.message)
}

/// A server's refusal of one row (not a duplicate key): the row may be written later.
pub(super) fn row_error_of(code: i32, message: &str) -> StoreError {
    StoreError::Unavailable(format!("MongoDB write error {code}: {message}"))
}

/// Writes rows with one outcome per row (see `Store::commit_rows`).
pub(super) async fn commit_rows(s: &Inner, rows: &[InboxRow]) -> StoreResult<Vec<RowResult>> {
    // 1. The messages, each once.
    let mut message_ids: Vec<&str> = Vec::new();
    let mut messages: Vec<MessageDoc> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for row in rows {
        if let RowKind::Message(m) = &row.kind {
            if seen.insert(&m.id) {
                message_ids.push(&m.id);
                messages.push(message_doc(m));
            }
        }
    }
    let mut failed_messages: HashMap<&str, StoreError> = HashMap::new();
    if !messages.is_empty() {
        let result = s
            .coll::<MessageDoc>(coll::MESSAGES)
            .insert_many(&messages)
            .ordered(false)
            .await;
        for (i, w) in write_errors(result)? {
            // A duplicate id is the message already stored: it is left as it is.
            if w.code != DUPLICATE_KEY {
                if let Some(id) = message_ids.get(i) {
                    failed_messages.insert(id, row_error(&w));
                }
            }
        }
    }

    // 2. Which rows cannot be written: those whose message failed. No row of an inbox
    // is written after a failed one (by position in the call).
    let mut out: Vec<Option<RowResult>> = vec![None; rows.len()];
    let mut first_failure: HashMap<&str, usize> = HashMap::new();
    let mut failed_early: Vec<usize> = Vec::new();
    let failed_before = |first: &HashMap<&str, usize>, i: usize| {
        first.get(&*rows[i].device_id).is_some_and(|&f| f < i)
    };
    for (i, row) in rows.iter().enumerate() {
        if let RowKind::Message(m) = &row.kind {
            if let Some(e) = failed_messages.get(&*m.id) {
                out[i] = Some(Err(e.clone()));
                let at = first_failure.entry(&row.device_id).or_insert(i);
                *at = (*at).min(i);
                failed_early.push(i);
            }
        }
    }

    // 3. Rows into fences first, one conditional replace each, in seq order per inbox
    // (rare: the first rows after a takeover).
    let mut fenced: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].into_fence && out[i].is_none())
        .collect();
    fenced.sort_by(|&x, &y| {
        (&*rows[x].device_id, rows[x].seq).cmp(&(&*rows[y].device_id, rows[y].seq))
    });
    for i in fenced {
        if failed_before(&first_failure, i) {
            out[i] = Some(Err(StoreError::Aborted));
            continue;
        }
        let outcome = fence::write_into_fence(s, &RowDoc::of(&rows[i])?).await?;
        if outcome.is_err() {
            let at = first_failure.entry(&rows[i].device_id).or_insert(i);
            *at = (*at).min(i);
            failed_early.push(i);
        }
        out[i] = Some(outcome);
    }

    // 4. The other rows, inserted in one unordered batch.
    let mut batch: Vec<(usize, ObjectId)> = Vec::with_capacity(rows.len());
    let mut docs: Vec<RowDoc<'_>> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if out[i].is_some() || row.into_fence {
            continue;
        }
        if failed_before(&first_failure, i) {
            out[i] = Some(Err(StoreError::Aborted));
            continue;
        }
        let doc = RowDoc::of(row)?;
        batch.push((i, doc.id));
        docs.push(doc);
    }
    // Each inbox's rows in seq order: a server that applies the batch in order (a
    // single mongod does) lets a concurrent reader see a prefix of each inbox.
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&x, &y| (docs[x].device_id, docs[x].seq).cmp(&(docs[y].device_id, docs[y].seq)));
    let mut slots: Vec<Option<(RowDoc<'_>, (usize, ObjectId))>> =
        docs.into_iter().zip(batch).map(Some).collect();
    let (docs, batch): (Vec<RowDoc<'_>>, Vec<(usize, ObjectId)>) =
        order.iter().filter_map(|&p| slots[p].take()).unzip();
    let mut errors = HashMap::new();
    if !docs.is_empty() {
        let result = s
            .coll::<RowDoc<'_>>(coll::INBOX)
            .insert_many(&docs)
            .ordered(false)
            .await;
        errors = write_errors(result)?;
    }

    // 5. A taken seq holding the same content is an idempotent retry.
    let mut taken: HashMap<&str, Vec<i64>> = HashMap::new();
    for (b, w) in &errors {
        if w.code == DUPLICATE_KEY {
            let d = &docs[*b];
            taken.entry(d.device_id).or_default().push(d.seq);
        }
    }
    let existing = rows_at(s, &taken).await?;

    // 6. Outcomes in call order; rows this insert wrote past a failure of their inbox
    // go again (never a slot written into a fence in step 3: a fence is not put back).
    let mut by_call: Vec<usize> = (0..batch.len()).collect();
    by_call.sort_by_key(|&b| batch[b].0);
    let mut written_past_failure: Vec<ObjectId> = Vec::new();
    for b in by_call {
        let (i, id) = &batch[b];
        let row = &rows[*i];
        let doc = &docs[b];
        let aborted = first_failure
            .get(&*row.device_id)
            .is_some_and(|&failed_at| failed_at < *i);
        let error = errors.get(&b);
        if aborted {
            if error.is_none() {
                written_past_failure.push(*id);
            }
            out[*i] = Some(Err(StoreError::Aborted));
            continue;
        }
        let outcome = match error {
            None => Ok(()),
            Some(w) if w.code == DUPLICATE_KEY => match existing.get(&(doc.device_id, doc.seq)) {
                Some(stored) if doc.same_as(stored) => Ok(()),
                // A fence, another row, or (the slot free) the message at another seq.
                stored => Err(StoreError::Conflict(format!(
                    "inbox {} seq {} {}",
                    row.device_id,
                    row.seq,
                    match stored {
                        Some((fence::FENCE, _, _)) => "holds a fence",
                        Some(_) => "holds another row",
                        None => "is free, but the inbox holds the message at another seq",
                    }
                ))),
            },
            Some(w) => Err(row_error(w)),
        };
        if outcome.is_err() {
            let at = first_failure.entry(&row.device_id).or_insert(*i);
            *at = (*at).min(*i);
        }
        out[*i] = Some(outcome);
    }
    // A row that failed before the insert (its message, or its fence), after an earlier
    // failed row of its inbox: aborted, as if never tried.
    for i in failed_early {
        if first_failure
            .get(&*rows[i].device_id)
            .is_some_and(|&failed_at| failed_at < i)
        {
            out[i] = Some(Err(StoreError::Aborted));
        }
    }
    if !written_past_failure.is_empty() {
        delete_rows(s, &written_past_failure).await?;
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Err(StoreError::Aborted)))
        .collect())
}

/// The content (kind, message id, by) of rows at the given seqs.
pub(super) async fn rows_at<'a>(
    s: &Inner,
    taken: &HashMap<&'a str, Vec<i64>>,
) -> StoreResult<HashMap<(&'a str, i64), (i64, String, Option<String>)>> {
    let mut out = HashMap::new();
    if taken.is_empty() {
        return Ok(out);
    }
    let clauses: Vec<Document> = taken
        .iter()
        .map(|(device, seqs)| rows_at_query(device, seqs).filter)
        .collect();
    let found = find_all(
        &s.coll::<RowRead>(coll::INBOX),
        doc! { "$or": clauses },
        None,
        None,
        None,
    )
    .await?;
    for r in found {
        if let Some((device, _)) = taken.get_key_value(r.device_id.as_str()) {
            out.insert((*device, r.seq), (r.kind, r.message_id, r.by));
        }
    }
    Ok(out)
}

/// Deletes rows this call wrote past a failed row of their inbox. If that fails, the
/// call fails (`Unavailable`): the caller retries, and the retry answers each row again.
async fn delete_rows(s: &Inner, ids: &[ObjectId]) -> StoreResult<()> {
    let inbox = s.coll::<Document>(coll::INBOX);
    let mut last = None;
    for _ in 0..CLEANUP_ATTEMPTS {
        match inbox.delete_many(doc! { "_id": { "$in": ids } }).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(map_err(e)),
        }
    }
    let why = last.map(|e| e.to_string()).unwrap_or_default();
    tracing::error!(rows = ids.len(), error = %why, "could not delete inbox rows written past a failed row");
    Err(StoreError::Unavailable(format!(
        "rows written past a failed row could not be removed: {why}"
    )))
}

// ---- reads ----

pub(super) async fn last_seq(s: &Inner, device_id: &str) -> StoreResult<u64> {
    let q = last_seq_query(device_id);
    let found = find_all(
        &s.coll::<SeqRead>(q.collection),
        q.filter,
        q.sort,
        Some(1),
        Some(doc! { "_id": 0, "seq": 1 }),
    )
    .await?;
    found.first().map_or(Ok(0), |r| to_u64(r.seq, "seq"))
}

/// Joins rows to their messages with one `find` over the message ids.
async fn with_messages(
    s: &Inner,
    operation: &'static str,
    device_id: &str,
    rows: Vec<RowRead>,
) -> StoreResult<Vec<InboxRow>> {
    let mut ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == 0)
        .map(|r| r.message_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut messages: HashMap<String, Arc<MessageRecord>> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let q = messages_query(operation, chunk);
        let found = find_all(
            &s.coll::<MessageDoc>(q.collection),
            q.filter,
            None,
            None,
            None,
        )
        .await?;
        messages.extend(found.into_iter().map(|m| (m.id.clone(), message_record(m))));
    }
    let owner: Arc<str> = device_id.into();
    rows.into_iter()
        .map(|r| {
            let seq = to_u64(r.seq, "seq")?;
            let kind = match status_of(r.kind) {
                Some(status) => RowKind::Status(StatusRecord {
                    message_id: r.message_id.into(),
                    status,
                    by: r.by.unwrap_or_default().into(),
                }),
                None if r.kind == 0 => match messages.get(&r.message_id) {
                    Some(m) => RowKind::Message(Arc::clone(m)),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "inbox {device_id} seq {seq}: message {} missing",
                            r.message_id
                        )))
                    }
                },
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "inbox {device_id} seq {seq}: unknown row kind {}",
                        r.kind
                    )))
                }
            };
            Ok(InboxRow {
                device_id: Arc::clone(&owner),
                seq,
                kind,
                ts: r.ts,
                client_id: r.client_id,
                epoch: to_u64(r.epoch, "epoch")?,
                into_fence: false,
            })
        })
        .collect()
}

pub(super) async fn read_inbox(
    s: &Inner,
    device_id: &str,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<InboxRow>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let q = read_inbox_query(device_id, after);
    let rows = find_all(
        &s.coll::<RowRead>(q.collection),
        q.filter,
        q.sort,
        Some(limit_i64(limit)),
        None,
    )
    .await?;
    with_messages(s, "read_inbox", device_id, rows).await
}

pub(super) async fn inbox_messages(
    s: &Inner,
    device_id: &str,
    message_ids: &[String],
) -> StoreResult<Vec<InboxRow>> {
    let mut ids: Vec<&str> = message_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows: Vec<RowRead> = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let q = inbox_messages_query(device_id, chunk);
        rows.extend(find_all(&s.coll::<RowRead>(q.collection), q.filter, None, None, None).await?);
    }
    // At most one row per message: its first.
    rows.sort_by_key(|r| r.seq);
    let mut seen = HashSet::new();
    rows.retain(|r| seen.insert(r.message_id.clone()));
    with_messages(s, "inbox_messages", device_id, rows).await
}

pub(super) async fn message_copies(s: &Inner, message_id: &str) -> StoreResult<Vec<MessageCopy>> {
    let q = copies_query(message_id);
    let mut copies = find_all(
        &s.coll::<CopyRead>(q.collection),
        q.filter,
        None,
        None,
        Some(doc! { "_id": 0, "device_id": 1, "seq": 1 }),
    )
    .await?;
    copies.sort_by(|a, b| a.device_id.cmp(&b.device_id).then(a.seq.cmp(&b.seq)));
    let mut ids: Vec<&str> = copies.iter().map(|c| c.device_id.as_str()).collect();
    ids.dedup();
    let mut addresses: HashMap<String, String> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let q = addresses_query(chunk);
        let found = find_all(
            &s.coll::<AddressRead>(q.collection),
            q.filter,
            None,
            None,
            Some(doc! { "_id": 1, "address": 1 }),
        )
        .await?;
        addresses.extend(found.into_iter().map(|a| (a.id, a.address)));
    }
    copies
        .into_iter()
        .map(|c| {
            Ok(MessageCopy {
                address: addresses.get(&c.device_id).cloned(),
                seq: to_u64(c.seq, "seq")?,
                device_id: c.device_id,
            })
        })
        .collect()
}

pub(super) async fn statuses(
    s: &Inner,
    device_id: &str,
    message_id: &str,
) -> StoreResult<Vec<StatusEntry>> {
    let q = statuses_query(device_id, message_id);
    let mut rows = find_all(&s.coll::<RowRead>(q.collection), q.filter, None, None, None).await?;
    // Few rows per message: ordered here rather than by a sort stage on the server.
    rows.sort_by_key(|r| r.seq);
    rows.into_iter()
        .map(|r| {
            let status = status_of(r.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("status code {}", r.kind)))?;
            Ok(StatusEntry {
                by: r.by.unwrap_or_default(),
                status,
                ts: r.ts,
                seq: to_u64(r.seq, "seq")?,
            })
        })
        .collect()
}

fn accepted(r: SentRead) -> StoreResult<AcceptedSend> {
    Ok(AcceptedSend {
        seq: to_u64(r.seq, "seq")?,
        client_id: r.client_id,
        message_id: r.message_id,
        ts: r.ts,
    })
}

const SENT_PROJECTION: fn() -> Document =
    || doc! { "_id": 0, "client_id": 1, "message_id": 1, "seq": 1, "ts": 1 };

pub(super) async fn recent_client_ids(
    s: &Inner,
    device_id: &str,
    limit: usize,
) -> StoreResult<Vec<AcceptedSend>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let q = recent_client_ids_query(device_id);
    find_all(
        &s.coll::<SentRead>(q.collection),
        q.filter,
        q.sort,
        Some(limit_i64(limit)),
        Some(SENT_PROJECTION()),
    )
    .await?
    .into_iter()
    .map(accepted)
    .collect()
}

pub(super) async fn sends_by_client_id(
    s: &Inner,
    device_id: &str,
    client_id: &str,
) -> StoreResult<Vec<AcceptedSend>> {
    let q = sends_by_client_id_query(device_id, client_id);
    let mut rows = find_all(
        &s.coll::<SentRead>(q.collection),
        q.filter,
        None,
        None,
        Some(SENT_PROJECTION()),
    )
    .await?;
    rows.retain(|a| {
        a.client_id == client_id
            || a.client_id
                .strip_prefix(client_id)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    rows.sort_by_key(|r| r.seq);
    rows.into_iter().map(accepted).collect()
}

// ---- deleting a device ----

/// Deletes a device's inbox and the messages only it held.
pub(super) async fn delete_inbox(s: &Inner, device_id: &str) -> StoreResult<()> {
    #[derive(Deserialize)]
    struct MessageIdRead {
        message_id: String,
    }
    let q = held_messages_query(device_id);
    let held = find_all(
        &s.coll::<MessageIdRead>(q.collection),
        q.filter,
        None,
        None,
        Some(doc! { "_id": 0, "message_id": 1 }),
    )
    .await?;
    let mut ids: Vec<&str> = held.iter().map(|h| h.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(CHUNK) {
        let q = holders_query(chunk);
        let holders = find_all(
            &s.coll::<HolderRead>(q.collection),
            q.filter,
            None,
            None,
            Some(doc! { "_id": 0, "device_id": 1, "message_id": 1 }),
        )
        .await?;
        let kept: HashSet<&str> = holders
            .iter()
            .filter(|h| h.device_id != device_id)
            .map(|h| h.message_id.as_str())
            .collect();
        let orphans: Vec<&str> = chunk
            .iter()
            .copied()
            .filter(|id| !kept.contains(id))
            .collect();
        if !orphans.is_empty() {
            let q = messages_query("delete_device", &orphans);
            s.coll::<Document>(q.collection)
                .delete_many(q.filter)
                .await
                .map_err(map_err)?;
        }
    }
    let q = inbox_query(device_id);
    s.coll::<Document>(q.collection)
        .delete_many(q.filter)
        .await
        .map_err(map_err)?;
    Ok(())
}
