//! Messages and inboxes in the SQLite store.
//!
//! A message is one row of `messages`, whatever its fan-out; an inbox row (`inbox`,
//! clustered by `(device_id, seq)`, `WITHOUT ROWID`) is a small key row: kind (0 a
//! message, 1 delivered, 2 read, -1 a fence), message id, the reporting address for
//! statuses, time, the sender's request id on its own copy, and the fencing epoch of
//! the session that wrote it. `inbox_copy (message_id, device_id)` over message rows
//! finds every copy of a message and, being unique, keeps an inbox from holding a
//! message twice; `inbox_status` is the same key over status rows. Both lead with
//! the message id (a ULID, so new rows append to one page); the two partial indexes
//! on `client_id` cover only the sender's own rows that carry a request id
//! (idempotency lookups).
//!
//! A fence row (`docs/cluster.md`, "Fencing the inbox") holds a slot for a new owner:
//! kind -1, an empty message id, the owner's epoch. No read returns one: every query
//! of rows either asks for kinds >= 0 or for one kind.

use std::collections::HashSet;
use std::sync::Arc;

use actors::store::{
    AcceptedSend, InboxRow, MessageCopy, MessageRecord, RowKind, RowResult, StatusEntry,
    StatusRecord, StoreError, StoreResult,
};
use protocol::ReceiptStatus;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{limit_i64, to_i64, unavailable};

const INSERT_MESSAGE: &str = "INSERT OR IGNORE INTO messages \
     (id, sender_device, sender, recipient, group_id, body, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_ROW: &str = "INSERT OR IGNORE INTO inbox \
     (device_id, seq, kind, message_id, by_addr, ts, client_id, epoch) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const ROW_AT: &str =
    "SELECT kind, message_id, by_addr FROM inbox WHERE device_id = ?1 AND seq = ?2";
/// A row written into its epoch's fence (a conditional replace; a message the inbox
/// holds elsewhere leaves the fence as it is).
pub const INTO_FENCE: &str = "UPDATE OR IGNORE inbox SET kind = ?3, message_id = ?4, \
     by_addr = ?5, ts = ?6, client_id = ?7 \
     WHERE device_id = ?1 AND seq = ?2 AND kind = -1 AND epoch = ?8";
/// A fence in an empty slot.
const INSERT_FENCE: &str = "INSERT OR IGNORE INTO inbox \
     (device_id, seq, kind, message_id, by_addr, ts, client_id, epoch) \
     VALUES (?1, ?2, -1, '', NULL, 0, NULL, ?3)";
/// Rows of a lower epoch in a fenced range become fences of the new one.
pub const FENCE_STALE: &str = "UPDATE inbox SET kind = -1, message_id = '', by_addr = NULL, \
     ts = 0, client_id = NULL, epoch = ?4 \
     WHERE device_id = ?1 AND seq >= ?2 AND seq <= ?3 AND epoch < ?4";

/// Highest seq of an inbox, fences left out: a walk down the primary key that stops at
/// the first row that is not a fence.
pub const LAST_SEQ: &str =
    "SELECT seq FROM inbox WHERE device_id = ?1 AND kind >= 0 ORDER BY seq DESC LIMIT 1";
/// A page of an inbox, messages joined.
pub const READ_INBOX: &str = "SELECT inbox.seq, inbox.kind, inbox.message_id, inbox.by_addr, \
     inbox.ts, inbox.client_id, messages.sender_device, messages.sender, messages.recipient, \
     messages.group_id, messages.body, messages.ts, inbox.epoch \
     FROM inbox LEFT JOIN messages ON inbox.kind = 0 AND messages.id = inbox.message_id \
     WHERE inbox.device_id = ?1 AND inbox.seq > ?2 AND inbox.kind >= 0 \
     ORDER BY inbox.seq LIMIT ?3";
/// The message row of an inbox holding a message.
pub const INBOX_MESSAGE: &str = "SELECT inbox.seq, inbox.kind, inbox.message_id, inbox.by_addr, \
     inbox.ts, inbox.client_id, messages.sender_device, messages.sender, messages.recipient, \
     messages.group_id, messages.body, messages.ts, inbox.epoch \
     FROM inbox INDEXED BY inbox_copy JOIN messages ON messages.id = inbox.message_id \
     WHERE inbox.message_id = ?2 AND inbox.device_id = ?1 AND inbox.kind = 0 LIMIT 1";
/// Every inbox holding a message, with its owner's address.
pub const MESSAGE_COPIES: &str = "SELECT inbox.device_id, devices.address, inbox.seq \
     FROM inbox INDEXED BY inbox_copy LEFT JOIN devices ON devices.id = inbox.device_id \
     WHERE inbox.message_id = ?1 AND inbox.kind = 0 ORDER BY inbox.device_id";
/// The status rows of an inbox about one message.
pub const STATUSES: &str = "SELECT by_addr, kind, ts, seq FROM inbox INDEXED BY inbox_status \
     WHERE message_id = ?2 AND device_id = ?1 AND kind > 0 ORDER BY seq";
/// A device's latest sends with a request id.
pub const RECENT_CLIENT_IDS: &str = "SELECT client_id, message_id, seq, ts FROM inbox \
     INDEXED BY inbox_sent WHERE device_id = ?1 AND client_id IS NOT NULL \
     ORDER BY seq DESC LIMIT ?2";
/// A device's sends under a request id (or its `.N` resends).
pub const SENDS_BY_CLIENT_ID: &str = "SELECT client_id, message_id, seq, ts FROM inbox \
     INDEXED BY inbox_client WHERE device_id = ?1 AND client_id IS NOT NULL \
     AND client_id >= ?2 AND client_id < ?3 ORDER BY seq";
/// Deleting a device: messages only its inbox held.
pub const DELETE_ORPHAN_MESSAGES: &str = "DELETE FROM messages WHERE id IN \
     (SELECT message_id FROM inbox WHERE device_id = ?1 AND kind = 0) \
     AND NOT EXISTS (SELECT 1 FROM inbox o INDEXED BY inbox_copy \
     WHERE o.message_id = messages.id AND o.kind = 0 AND o.device_id <> ?1)";
/// Deleting a device: its inbox.
pub const DELETE_INBOX: &str = "DELETE FROM inbox WHERE device_id = ?1";

/// The kind code of a fence row.
const FENCE: i64 = -1;

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

fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, what.into())
}

/// An inbox row as [`READ_INBOX`] selects it (device id given); column 12 is its epoch.
fn row_from(device_id: &Arc<str>, r: &Row<'_>) -> rusqlite::Result<InboxRow> {
    let seq: u64 = r.get(0)?;
    let code: i64 = r.get(1)?;
    let message_id: String = r.get(2)?;
    let kind = match status_of(code) {
        Some(status) => {
            let by: Option<String> = r.get(3)?;
            RowKind::Status(StatusRecord {
                message_id: message_id.into(),
                status,
                by: by.unwrap_or_default().into(),
            })
        }
        None => {
            let Some(from) = r.get::<_, Option<String>>(7)? else {
                return Err(corrupt(format!(
                    "inbox {device_id} seq {seq}: message {message_id} missing"
                )));
            };
            RowKind::Message(Arc::new(MessageRecord {
                id: message_id.into(),
                sender_device: r.get::<_, Option<String>>(6)?.map(Into::into),
                from: from.into(),
                to: r.get::<_, Option<String>>(8)?.map(Into::into),
                group: r.get::<_, Option<String>>(9)?.map(Into::into),
                body: r.get::<_, String>(10)?.into(),
                ts: r.get(11)?,
            }))
        }
    };
    Ok(InboxRow {
        device_id: device_id.clone(),
        seq,
        kind,
        ts: r.get(4)?,
        client_id: r.get(5)?,
        epoch: r.get(12)?,
        into_fence: false,
    })
}

/// Maps a read error: unreadable data is `Corrupt`, anything else `Unavailable`.
pub(super) fn read_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
            StoreError::Corrupt(inner.to_string())
        }
        other => unavailable(other),
    }
}

/// Writes rows in one transaction with one outcome per row (see `Store::commit_rows`).
/// A row is inserted into an empty slot, or written into its epoch's fence
/// (`into_fence`); when neither applies, the slot holding the same row is an
/// idempotent retry and anything else (another row, a fence, the message at another
/// seq) a conflict.
pub(super) fn commit_rows(conn: &mut Connection, rows: &[InboxRow]) -> StoreResult<Vec<RowResult>> {
    let tx = conn.transaction().map_err(unavailable)?;
    let mut out = Vec::with_capacity(rows.len());
    {
        let mut insert_message = tx.prepare_cached(INSERT_MESSAGE).map_err(unavailable)?;
        let mut insert_row = tx.prepare_cached(INSERT_ROW).map_err(unavailable)?;
        let mut into_fence = tx.prepare_cached(INTO_FENCE).map_err(unavailable)?;
        let mut row_at = tx.prepare_cached(ROW_AT).map_err(unavailable)?;
        let mut stored: HashSet<&str> = HashSet::new();
        let mut failed: HashSet<&str> = HashSet::new();
        for row in rows {
            if failed.contains(&*row.device_id) {
                out.push(Err(StoreError::Aborted));
                continue;
            }
            let by = match &row.kind {
                RowKind::Message(m) => {
                    if stored.insert(&m.id) {
                        insert_message
                            .execute(params![
                                &*m.id,
                                m.sender_device.as_deref(),
                                &*m.from,
                                m.to.as_deref(),
                                m.group.as_deref(),
                                &*m.body,
                                m.ts
                            ])
                            .map_err(unavailable)?;
                    }
                    None
                }
                RowKind::Status(s) => Some(&*s.by),
            };
            let seq = to_i64(row.seq, "seq")?;
            let epoch = to_i64(row.epoch, "epoch")?;
            let code = kind_code(&row.kind);
            let values = params![
                &*row.device_id,
                seq,
                code,
                &**row.kind.message_id(),
                by,
                row.ts,
                row.client_id.as_deref(),
                epoch
            ];
            let written = if row.into_fence {
                into_fence.execute(values)
            } else {
                insert_row.execute(values)
            }
            .map_err(unavailable)?;
            if written == 1 {
                out.push(Ok(()));
                continue;
            }
            // Not written: the same row already there is an idempotent retry.
            let existing: Option<(i64, String, Option<String>)> = row_at
                .query_row(params![&*row.device_id, seq], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(unavailable)?;
            let same = existing.as_ref().is_some_and(|(k, mid, b)| {
                *k == code && **mid == **row.kind.message_id() && b.as_deref() == by
            });
            if same {
                out.push(Ok(()));
            } else {
                failed.insert(&row.device_id);
                let why = match existing {
                    Some((FENCE, _, _)) => "holds a fence",
                    Some(_) => "holds another row",
                    None if row.into_fence => "holds no fence",
                    None => "is free, but the inbox holds the message at another seq",
                };
                out.push(Err(StoreError::Conflict(format!(
                    "inbox {} seq {} {why}",
                    row.device_id, row.seq
                ))));
            }
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(out)
}

/// Fences `from ..= from + count - 1` for `epoch` in one transaction (see
/// `Store::fence_inbox`).
pub(super) fn fence_inbox(
    conn: &mut Connection,
    device_id: &str,
    from: u64,
    count: u64,
    epoch: u64,
) -> StoreResult<()> {
    let Some(last) = crate::store::fence_end(from, count)? else {
        return Ok(());
    };
    let (first, last, epoch) = (
        to_i64(from, "seq")?,
        to_i64(last, "seq")?,
        to_i64(epoch, "epoch")?,
    );
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut insert = tx.prepare_cached(INSERT_FENCE).map_err(unavailable)?;
        for seq in first..=last {
            insert
                .execute(params![device_id, seq, epoch])
                .map_err(unavailable)?;
        }
        tx.prepare_cached(FENCE_STALE)
            .and_then(|mut st| st.execute(params![device_id, first, last, epoch]))
            .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)
}

pub(super) fn last_seq(conn: &Connection, device_id: &str) -> StoreResult<u64> {
    conn.prepare_cached(LAST_SEQ)
        .and_then(|mut st| st.query_row([device_id], |r| r.get(0)).optional())
        .map(Option::unwrap_or_default)
        .map_err(unavailable)
}

pub(super) fn read_inbox(
    conn: &Connection,
    device_id: &str,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<InboxRow>> {
    let owner: Arc<str> = device_id.into();
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let mut st = conn.prepare_cached(READ_INBOX).map_err(unavailable)?;
    let rows = st
        .query_map(params![device_id, after, limit_i64(limit)], |r| {
            row_from(&owner, r)
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(read_error)?;
    Ok(rows)
}

pub(super) fn inbox_messages(
    conn: &Connection,
    device_id: &str,
    message_ids: &[String],
) -> StoreResult<Vec<InboxRow>> {
    let owner: Arc<str> = device_id.into();
    let mut st = conn.prepare_cached(INBOX_MESSAGE).map_err(unavailable)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for id in message_ids {
        if !seen.insert(id.as_str()) {
            continue;
        }
        if let Some(row) = st
            .query_row(params![device_id, id], |r| row_from(&owner, r))
            .optional()
            .map_err(read_error)?
        {
            out.push(row);
        }
    }
    Ok(out)
}

pub(super) fn message_copies(conn: &Connection, message_id: &str) -> StoreResult<Vec<MessageCopy>> {
    conn.prepare_cached(MESSAGE_COPIES)
        .and_then(|mut st| {
            st.query_map([message_id], |r| {
                Ok(MessageCopy {
                    device_id: r.get(0)?,
                    address: r.get(1)?,
                    seq: r.get(2)?,
                })
            })?
            .collect()
        })
        .map_err(unavailable)
}

pub(super) fn statuses(
    conn: &Connection,
    device_id: &str,
    message_id: &str,
) -> StoreResult<Vec<StatusEntry>> {
    let mut st = conn.prepare_cached(STATUSES).map_err(unavailable)?;
    let rows = st
        .query_map([device_id, message_id], |r| {
            let code: i64 = r.get(1)?;
            let status = status_of(code).ok_or_else(|| corrupt(format!("status code {code}")))?;
            Ok(StatusEntry {
                by: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                status,
                ts: r.get(2)?,
                seq: r.get(3)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(read_error)?;
    Ok(rows)
}

fn accepted(r: &Row<'_>) -> rusqlite::Result<AcceptedSend> {
    Ok(AcceptedSend {
        client_id: r.get(0)?,
        message_id: r.get(1)?,
        seq: r.get(2)?,
        ts: r.get(3)?,
    })
}

pub(super) fn recent_client_ids(
    conn: &Connection,
    device_id: &str,
    limit: usize,
) -> StoreResult<Vec<AcceptedSend>> {
    conn.prepare_cached(RECENT_CLIENT_IDS)
        .and_then(|mut st| {
            st.query_map(params![device_id, limit_i64(limit)], accepted)?
                .collect()
        })
        .map_err(unavailable)
}

pub(super) fn sends_by_client_id(
    conn: &Connection,
    device_id: &str,
    client_id: &str,
) -> StoreResult<Vec<AcceptedSend>> {
    // `id` and `id.N` sort in [id, id + "/"): '.' < '/'. Other ids in that range (`id-x`
    // sorts below '.') are filtered out below.
    let high = format!("{client_id}/");
    let rows: Vec<AcceptedSend> = conn
        .prepare_cached(SENDS_BY_CLIENT_ID)
        .and_then(|mut st| {
            st.query_map(params![device_id, client_id, high], accepted)?
                .collect()
        })
        .map_err(unavailable)?;
    Ok(rows
        .into_iter()
        .filter(|a| {
            a.client_id == client_id
                || a.client_id
                    .strip_prefix(client_id)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect())
}
