//! What travels between nodes: serializable envelopes, batched per destination node
//! into one bus message (see `docs/cluster.md`, "Messages between nodes").
//!
//! A [`Request`] expects a [`Response`] (matched by call id, with a timeout on the
//! caller's side); a [`Cast`] does not. Nothing here holds a reply port, a guard or an
//! actor reference: those stay on the node that made the call.

use std::sync::Arc;

use protocol::rest::MessageAccepted;
use protocol::{ErrorCode, Priority, ReceiptStatus, Target};
use serde::{Deserialize, Serialize};

use crate::device::{outbox::PairOrder, RowOutcome, SendError};
use crate::store::{AcceptedSend, MessageRecord};

/// One bus message: everything one node had queued for another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    /// The sending node.
    pub from: String,
    /// In the order they were queued.
    pub items: Vec<Envelope>,
}

/// One item of a [`Batch`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Envelope {
    /// A request; the answer goes back to the batch's `from` node under `call`.
    Call {
        /// Call id, unique on the calling node.
        call: u64,
        /// What is asked.
        req: Request,
    },
    /// The answer to a [`Envelope::Call`].
    Reply {
        /// The call answered.
        call: u64,
        /// The answer.
        resp: Response,
    },
    /// A one-way message.
    Cast(Cast),
}

/// A request to the node owning `device` (or, for none, to the node itself).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Request {
    /// A row for `device`'s inbox from a sender session; answered with the row's
    /// outcome once it is durable (or refused).
    Deliver {
        /// The recipient.
        device: String,
        /// The sending device.
        from_device: String,
        /// Its place in the sender's stream.
        order: WireOrder,
        /// Which try of the row.
        attempt: u32,
        /// The message.
        message: WireMessage,
    },
    /// Statuses for messages `device` sent; answered once they are stored.
    Receipts {
        /// The sender of the messages.
        device: String,
        /// The statuses.
        notes: Vec<WireNote>,
    },
    /// A send by `device`.
    Send {
        /// The sending device.
        device: String,
        /// The request.
        send: WireSend,
        /// Where the answer goes: back in a [`Response::Sent`] (REST, the queue), or
        /// as an ack frame to this connection (attached through [`Request::Attach`]).
        conn: Option<u64>,
    },
    /// A client of `device` on the calling node.
    Attach {
        /// The device.
        device: String,
        /// The connection (ids are unique across nodes).
        conn: u64,
    },
    /// A running session's live view.
    Info {
        /// The device.
        device: String,
    },
    /// A device was deleted: stop its session for good, start none again.
    Remove {
        /// The device.
        device: String,
        /// Its tenant.
        tenant_id: String,
    },
}

/// The answer to a [`Request`] (tagged next to its content: several answers are a
/// bare value, which an internally tagged enum cannot carry).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "a", content = "v", rename_all = "snake_case")]
pub enum Response {
    /// A delivered row's outcome.
    Row(WireOutcome),
    /// Receipts stored (true) or not.
    Stored(bool),
    /// A send's answer.
    Sent(Result<MessageAccepted, WireError>),
    /// Attached, with the device's durable seq; or refused.
    Attached(Result<u64, WireError>),
    /// The live view (`None`: no session runs).
    Info(Option<WireInfo>),
    /// Done.
    Done,
    /// This node does not own the device: route again.
    NotOwner,
}

/// A one-way message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub enum Cast {
    /// A client of `device` on the sending node went away.
    Detach {
        /// The device.
        device: String,
        /// The connection.
        conn: u64,
    },
    /// Frames for a connection on the receiving node, in order.
    Frames {
        /// The connection.
        conn: u64,
        /// Encoded frames.
        frames: Vec<Arc<str>>,
    },
    /// Close a connection on the receiving node.
    Close {
        /// The connection.
        conn: u64,
        /// The close code.
        code: u16,
    },
    /// A frame (typing) for every connection of `device`, if its session runs.
    Push {
        /// The device.
        device: String,
        /// Encoded frame.
        frame: Arc<str>,
    },
    /// Close every connection of `device` with `code`.
    Kick {
        /// The device.
        device: String,
        /// The close code.
        code: u16,
    },
    /// An operator's restart of `device`'s session (of `tenant_id`), asked through
    /// another node.
    Restart {
        /// The device.
        device: String,
        /// Its tenant.
        tenant_id: String,
    },
    /// Test hook: panic inside `device`'s session.
    Panic {
        /// The device.
        device: String,
    },
}

/// [`PairOrder`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WireOrder {
    /// Sender incarnation.
    pub epoch: u64,
    /// Row number.
    pub n: u64,
    /// The row it follows.
    pub prev: Option<u64>,
}

impl From<PairOrder> for WireOrder {
    fn from(o: PairOrder) -> Self {
        WireOrder {
            epoch: o.epoch,
            n: o.n,
            prev: o.prev,
        }
    }
}

impl From<WireOrder> for PairOrder {
    fn from(o: WireOrder) -> Self {
        PairOrder {
            epoch: o.epoch,
            n: o.n,
            prev: o.prev,
        }
    }
}

/// [`MessageRecord`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    /// Message id.
    pub id: String,
    /// Sending device.
    pub sender_device: Option<String>,
    /// Sender address.
    pub from: String,
    /// Recipient address (1:1).
    pub to: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Raw JSON body.
    pub body: String,
    /// Acceptance time.
    pub ts: i64,
}

impl From<&MessageRecord> for WireMessage {
    fn from(m: &MessageRecord) -> Self {
        WireMessage {
            id: m.id.to_string(),
            sender_device: m.sender_device.as_deref().map(str::to_owned),
            from: m.from.to_string(),
            to: m.to.as_deref().map(str::to_owned),
            group: m.group.as_deref().map(str::to_owned),
            body: m.body.to_string(),
            ts: m.ts,
        }
    }
}

impl From<WireMessage> for MessageRecord {
    fn from(m: WireMessage) -> Self {
        MessageRecord {
            id: m.id.into(),
            sender_device: m.sender_device.map(Into::into),
            from: m.from.into(),
            to: m.to.map(Into::into),
            group: m.group.map(Into::into),
            body: m.body.into(),
            ts: m.ts,
        }
    }
}

/// [`RowOutcome`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireOutcome {
    /// Durable.
    Committed,
    /// Refused (order, resync).
    Rejected,
    /// Its commit failed.
    Failed,
    /// Never handled.
    Dropped,
    /// The recipient is gone.
    Gone,
}

impl From<RowOutcome> for WireOutcome {
    fn from(o: RowOutcome) -> Self {
        match o {
            RowOutcome::Committed => WireOutcome::Committed,
            RowOutcome::Rejected => WireOutcome::Rejected,
            RowOutcome::Failed => WireOutcome::Failed,
            RowOutcome::Dropped | RowOutcome::Deferred => WireOutcome::Dropped,
            RowOutcome::Gone => WireOutcome::Gone,
        }
    }
}

impl From<WireOutcome> for RowOutcome {
    fn from(o: WireOutcome) -> Self {
        match o {
            WireOutcome::Committed => RowOutcome::Committed,
            WireOutcome::Rejected => RowOutcome::Rejected,
            WireOutcome::Failed => RowOutcome::Failed,
            WireOutcome::Dropped => RowOutcome::Dropped,
            WireOutcome::Gone => RowOutcome::Gone,
        }
    }
}

/// A receipt on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireNote {
    /// The message.
    pub message_id: String,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// The reporting address.
    pub by: String,
    /// When (Unix ms).
    pub ts: i64,
}

/// A send request on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSend {
    /// Client request id.
    pub client_id: Option<String>,
    /// Recipient address.
    pub to: Option<String>,
    /// Recipient group.
    pub group: Option<String>,
    /// Raw JSON body.
    pub body: String,
    /// Rate tier.
    pub priority: Priority,
    /// An earlier send under this request id (the queue found it).
    pub resume: Option<WireAccepted>,
}

impl WireSend {
    /// The target (exactly one of `to` and `group` is set by the sender).
    pub fn target(&self) -> Target {
        match (&self.to, &self.group) {
            (Some(to), _) => Target::To(to.clone()),
            (None, Some(g)) => Target::Group(g.clone()),
            (None, None) => Target::To(String::new()),
        }
    }
}

/// [`AcceptedSend`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireAccepted {
    /// Request id.
    pub client_id: String,
    /// Message id.
    pub message_id: String,
    /// Seq of the sender's copy.
    pub seq: u64,
    /// Acceptance time.
    pub ts: i64,
}

impl From<AcceptedSend> for WireAccepted {
    fn from(a: AcceptedSend) -> Self {
        WireAccepted {
            client_id: a.client_id,
            message_id: a.message_id,
            seq: a.seq,
            ts: a.ts,
        }
    }
}

impl From<WireAccepted> for AcceptedSend {
    fn from(a: WireAccepted) -> Self {
        AcceptedSend {
            client_id: a.client_id,
            message_id: a.message_id,
            seq: a.seq,
            ts: a.ts,
        }
    }
}

/// [`SendError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
    /// For `rate_limited`.
    pub retry_after_ms: Option<u64>,
}

impl From<SendError> for WireError {
    fn from(e: SendError) -> Self {
        WireError {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl From<WireError> for SendError {
    fn from(e: WireError) -> Self {
        SendError {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// A session's live view on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireInfo {
    /// Connected clients (on every node).
    pub connections: usize,
    /// Last time a client was connected.
    pub last_seen: Option<i64>,
    /// Highest durable seq.
    pub last_seq: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Messages received.
    pub messages_in: u64,
    /// The node running the session.
    pub node: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_batch_survives_the_wire() {
        let batch = Batch {
            from: "n_a".into(),
            items: vec![
                Envelope::Call {
                    call: 7,
                    req: Request::Deliver {
                        device: "d_b".into(),
                        from_device: "d_a".into(),
                        order: WireOrder {
                            epoch: 1,
                            n: 2,
                            prev: Some(1),
                        },
                        attempt: 1,
                        message: WireMessage {
                            id: "m_1".into(),
                            sender_device: Some("d_a".into()),
                            from: "+1".into(),
                            to: Some("+2".into()),
                            group: None,
                            body: "{\"t\":\"é\"}".into(),
                            ts: 5,
                        },
                    },
                },
                Envelope::Reply {
                    call: 3,
                    resp: Response::Row(WireOutcome::Committed),
                },
                Envelope::Cast(Cast::Frames {
                    conn: 9,
                    frames: vec![Arc::from("{}")],
                }),
            ],
        };
        let text = serde_json::to_string(&batch).unwrap();
        let back: Batch = serde_json::from_str(&text).unwrap();
        assert_eq!(back.items.len(), 3);
        match &back.items[0] {
            Envelope::Call {
                call: 7,
                req: Request::Deliver { message, order, .. },
            } => {
                assert_eq!(message.body, "{\"t\":\"é\"}");
                assert_eq!(order.prev, Some(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            back.items[1],
            Envelope::Reply {
                call: 3,
                resp: Response::Row(WireOutcome::Committed)
            }
        ));
    }

    #[test]
    fn every_answer_survives_the_wire() {
        let answers = vec![
            Response::Row(WireOutcome::Failed),
            Response::Stored(true),
            Response::Sent(Err(WireError {
                code: ErrorCode::Unavailable,
                message: "away".into(),
                retry_after_ms: Some(5),
            })),
            Response::Attached(Ok(42)),
            Response::Info(None),
            Response::Done,
            Response::NotOwner,
        ];
        let n = answers.len();
        let batch = Batch {
            from: "n_a".into(),
            items: answers
                .into_iter()
                .enumerate()
                .map(|(i, resp)| Envelope::Reply {
                    call: i as u64,
                    resp,
                })
                .collect(),
        };
        let text = serde_json::to_string(&batch).unwrap();
        let back: Batch = serde_json::from_str(&text).unwrap();
        assert_eq!(back.items.len(), n);
        assert!(matches!(
            back.items[1],
            Envelope::Reply {
                resp: Response::Stored(true),
                ..
            }
        ));
        assert!(matches!(
            back.items[3],
            Envelope::Reply {
                resp: Response::Attached(Ok(42)),
                ..
            }
        ));
    }
}
