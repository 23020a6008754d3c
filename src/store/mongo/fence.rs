//! Fencing an inbox in the MongoDB store (`docs/cluster.md`, "Fencing the inbox").
//!
//! A fence row is an inbox document of kind -1 with an empty `message_id`, the
//! fencing `epoch` and `ts` 0, and nothing else of a row: it holds a slot of the inbox
//! for the owner of that epoch, so a stale owner's insert there hits the unique
//! `(device_id, seq)` index. [`fence_inbox`] puts fences in the empty slots of a range
//! (one unordered insert, duplicates ignored) and then turns every row of a lower epoch
//! in the range into one (one `update_many`). The owner writes its first rows into its
//! fences with [`write_into_fence`], a conditional replace per row, which only a fence
//! of its own epoch lets through.

use actors::store::{RowResult, StoreError, StoreResult};
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use super::inbox::{row_error_of, rows_at, RowDoc};
use super::stats::KnownQuery;
use super::{coll, map_err, to_i64, Inner, DUPLICATE_KEY};

/// The kind code of a fence row.
pub(super) const FENCE: i64 = -1;

// ---- the queries ----

/// The slot a row written into a fence replaces: this epoch's fence at its seq.
pub(super) fn into_fence_query(device_id: &str, seq: i64, epoch: i64) -> KnownQuery {
    KnownQuery::new(
        "commit_rows",
        coll::INBOX,
        doc! { "device_id": device_id, "seq": seq, "kind": FENCE, "epoch": epoch },
    )
    .index("inbox_seq")
    .residual(&["kind", "epoch"])
}

/// The rows of a lower epoch in a fenced range.
pub(super) fn stale_rows_query(device_id: &str, first: i64, last: i64, epoch: i64) -> KnownQuery {
    KnownQuery::new(
        "fence_inbox",
        coll::INBOX,
        doc! {
            "device_id": device_id,
            "seq": { "$gte": first, "$lte": last },
            "epoch": { "$lt": epoch },
        },
    )
    .index("inbox_seq")
    .residual(&["epoch"])
}

// ---- writes ----

/// Fences `from ..= from + count - 1` of an inbox for `epoch` (see
/// `Store::fence_inbox`). Both steps are idempotent: a call cut off part way is
/// completed by calling it again.
pub(super) async fn fence_inbox(
    s: &Inner,
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
    let inbox = s.coll::<Document>(coll::INBOX);
    let fences: Vec<Document> = (first..=last)
        .map(|seq| {
            doc! {
                "device_id": device_id, "seq": seq, "kind": FENCE, "message_id": "",
                "ts": 0_i64, "epoch": epoch,
            }
        })
        .collect();
    if let Err(e) = inbox.insert_many(&fences).ordered(false).await {
        match *e.kind {
            // A taken slot keeps its row (step two deals with a stale one).
            ErrorKind::InsertMany(ref f)
                if f.write_concern_error.is_none()
                    && f.write_errors
                        .iter()
                        .flatten()
                        .all(|w| w.code == DUPLICATE_KEY) => {}
            _ => return Err(map_err(e)),
        }
    }
    let q = stale_rows_query(device_id, first, last, epoch);
    inbox
        .update_many(
            q.filter,
            doc! {
                "$set": { "kind": FENCE, "message_id": "", "ts": 0_i64, "epoch": epoch },
                "$unset": { "by": "", "client_id": "", "chat": "", "message_key": "" },
            },
        )
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Writes a row into its epoch's fence at its seq (a conditional replace). The outcome
/// is the row's: the slot already holding the same row is a retry (`Ok`), any other
/// content, or the message held at another seq, is `Conflict`. `Err` when the outcome
/// is unknown (the server could not be reached): the call fails as a whole.
pub(super) async fn write_into_fence(s: &Inner, row: &RowDoc<'_>) -> StoreResult<RowResult> {
    let q = into_fence_query(row.device_id, row.seq, row.epoch);
    let mut replacement = mongodb::bson::to_document(row)
        .map_err(|e| StoreError::Corrupt(format!("encoding an inbox row: {e}")))?;
    // The document keeps its `_id`: a replacement may not change it.
    replacement.remove("_id");
    let conflict = |why: &str| {
        Ok(Err(StoreError::Conflict(format!(
            "inbox {} seq {} {why}",
            row.device_id, row.seq
        ))))
    };
    match s
        .coll::<Document>(q.collection)
        .replace_one(q.filter, replacement)
        .await
    {
        Ok(r) if r.matched_count > 0 => Ok(Ok(())),
        Ok(_) => {
            let taken = [(row.device_id, vec![row.seq])].into_iter().collect();
            match rows_at(s, &taken).await?.get(&(row.device_id, row.seq)) {
                Some(stored) if row.same_as(stored) => Ok(Ok(())),
                Some((FENCE, _, _)) => conflict("holds the fence of another epoch"),
                Some(_) => conflict("holds another row"),
                None => conflict("holds no fence"),
            }
        }
        Err(e) => match *e.kind {
            ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == DUPLICATE_KEY => {
                conflict("is fenced, but the inbox holds the message at another seq")
            }
            ErrorKind::Write(WriteFailure::WriteError(ref w)) => {
                Ok(Err(row_error_of(w.code, &w.message)))
            }
            _ => Err(map_err(e)),
        },
    }
}
