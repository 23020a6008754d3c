//! WebSocket frames. One JSON object per text frame, tagged by `type`.
//!
//! Client frames are decoded through a flat, all-optional struct first so that a frame
//! with a bad field still yields its `id` for the `error` answer, and so that `body`
//! can stay raw JSON (never re-parsed or re-encoded on the message path).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorCode;
use crate::validate::{bounded, check_body, is_e164, quoted, MAX_CLIENT_ID_LEN};

/// Sending priority; each tier has its own rate budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    /// Highest tier (default budget 200/min).
    Critical,
    /// High tier (default budget 100/min).
    High,
    /// The default tier (default budget 60/min).
    #[default]
    Normal,
    /// Lowest tier (default budget 30/min).
    Low,
}

impl Priority {
    /// All tiers, highest first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "critical" => Some(Priority::Critical),
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    /// Position in [`Priority::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Receipt kinds a recipient reports, in the order a message goes through them:
/// a status only ever moves forward (`delivered` < `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReceiptStatus {
    /// The message reached the device.
    Delivered,
    /// The user read it.
    Read,
}

impl ReceiptStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
        }
    }
}

/// Typing indicator states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    /// The user is typing.
    Composing,
    /// The user stopped typing.
    Paused,
}

/// Where a message or typing indicator goes: one address or one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An E.164 address in the sender's tenant.
    To(String),
    /// A group id in the sender's tenant.
    Group(String),
}

impl Target {
    /// Builds a target from the `to` / `group` pair, exactly one of which must be set.
    pub fn from_parts(to: Option<String>, group: Option<String>) -> Result<Target, String> {
        match (to, group) {
            (Some(to), None) => {
                if is_e164(&to) {
                    Ok(Target::To(to))
                } else {
                    Err(format!(
                        "`to` must be an E.164 address, got {}",
                        quoted(&to)
                    ))
                }
            }
            (None, Some(group)) if !group.is_empty() && group.len() <= 64 => {
                Ok(Target::Group(group))
            }
            (None, Some(_)) => Err("`group` must be a group id".into()),
            (Some(_), Some(_)) => Err("give either `to` or `group`, not both".into()),
            (None, None) => Err("`to` or `group` is required".into()),
        }
    }
}

/// A decoded, validated client frame.
#[derive(Debug)]
pub enum ClientFrame {
    /// Send a message.
    Send {
        /// Client request id, echoed in the answer and used for idempotent resends.
        id: Option<String>,
        /// Recipient.
        target: Target,
        /// The message body: a JSON object, kept raw.
        body: Box<RawValue>,
        /// Rate tier.
        priority: Priority,
    },
    /// Report delivered/read for messages this device received.
    Receipt {
        /// Client request id.
        id: Option<String>,
        /// Messages the receipt covers.
        message_ids: Vec<String>,
        /// Delivered or read.
        status: ReceiptStatus,
    },
    /// Page through the inbox after a sequence number.
    Sync {
        /// Client request id.
        id: Option<String>,
        /// Return messages with `seq > after_seq`.
        after_seq: u64,
        /// Page size (server caps it).
        limit: Option<u32>,
    },
    /// Typing indicator; never stored.
    Typing {
        /// Client request id (echoed only in an error).
        id: Option<String>,
        /// Recipient.
        target: Target,
        /// Composing or paused.
        state: TypingState,
    },
    /// Application-level ping.
    Ping {
        /// Client request id.
        id: Option<String>,
    },
}

/// Why a client frame was refused; `id` is echoed when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The request id, if the frame had a readable one.
    pub id: Option<String>,
    /// Error code (always `bad_request` from the decoder).
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct RawClientFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    to: Option<String>,
    group: Option<String>,
    body: Option<Box<RawValue>>,
    priority: Option<String>,
    message_ids: Option<Vec<String>>,
    status: Option<String>,
    after_seq: Option<u64>,
    limit: Option<u32>,
    state: Option<String>,
}

/// Largest number of message ids one receipt may carry.
pub const MAX_RECEIPT_IDS: usize = 1000;

impl ClientFrame {
    /// Decodes and validates one text frame.
    pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
        let raw: RawClientFrame = serde_json::from_str(text).map_err(|e| FrameError {
            id: salvage_id(text),
            code: ErrorCode::BadRequest,
            message: bounded(format!("invalid frame: {e}")),
        })?;
        let id = raw.id.clone().filter(|i| i.len() <= MAX_CLIENT_ID_LEN);
        raw.into_frame().map_err(|message| FrameError {
            id,
            code: ErrorCode::BadRequest,
            message,
        })
    }
}

/// Reads `id` out of a frame that did not decode, so the error can still be matched.
/// Only `id` is read: every other field is skipped unparsed (no number range, no depth
/// limit), so a bad field elsewhere never loses the id.
fn salvage_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id?;
    (id.len() <= MAX_CLIENT_ID_LEN).then_some(id)
}

impl RawClientFrame {
    fn into_frame(self) -> Result<ClientFrame, String> {
        if let Some(id) = &self.id {
            if id.len() > MAX_CLIENT_ID_LEN {
                return Err(format!(
                    "`id` is longer than {MAX_CLIENT_ID_LEN} characters"
                ));
            }
        }
        let kind = self.kind.ok_or("`type` is required")?;
        match kind.as_str() {
            "send" => {
                let target = Target::from_parts(self.to, self.group)?;
                let body = self.body.ok_or("`body` is required")?;
                if !body.get().starts_with('{') {
                    return Err("`body` must be a JSON object".into());
                }
                check_body(body.get())?;
                let priority = match self.priority.as_deref() {
                    None => Priority::Normal,
                    Some(p) => Priority::parse(p).ok_or_else(|| {
                        format!(
                            "`priority` must be critical, high, normal or low, got {}",
                            quoted(p)
                        )
                    })?,
                };
                Ok(ClientFrame::Send {
                    id: self.id,
                    target,
                    body,
                    priority,
                })
            }
            "receipt" => {
                let message_ids = self.message_ids.ok_or("`message_ids` is required")?;
                if message_ids.is_empty() || message_ids.len() > MAX_RECEIPT_IDS {
                    return Err(format!(
                        "`message_ids` must hold 1 to {MAX_RECEIPT_IDS} ids"
                    ));
                }
                let status = match self.status.as_deref() {
                    Some("delivered") => ReceiptStatus::Delivered,
                    Some("read") => ReceiptStatus::Read,
                    _ => return Err("`status` must be delivered or read".into()),
                };
                Ok(ClientFrame::Receipt {
                    id: self.id,
                    message_ids,
                    status,
                })
            }
            "sync" => Ok(ClientFrame::Sync {
                id: self.id,
                after_seq: self.after_seq.unwrap_or(0),
                limit: self.limit,
            }),
            "typing" => {
                let target = Target::from_parts(self.to, self.group)?;
                let state = match self.state.as_deref() {
                    Some("composing") => TypingState::Composing,
                    Some("paused") => TypingState::Paused,
                    _ => return Err("`state` must be composing or paused".into()),
                };
                Ok(ClientFrame::Typing {
                    id: self.id,
                    target,
                    state,
                })
            }
            "ping" => Ok(ClientFrame::Ping { id: self.id }),
            other => Err(format!("unknown frame type {}", quoted(other))),
        }
    }
}

/// A stored or live message, as pushed live and as listed by `sync` and history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageItem {
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: MessageTag,
    /// Server-assigned id, the same in every inbox the message lands in.
    pub message_id: String,
    /// Position in the receiving device's inbox.
    pub seq: u64,
    /// Server time of acceptance (Unix ms).
    pub ts: i64,
    /// Sender address.
    pub from: String,
    /// Recipient address (1:1 messages).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to: Option<String>,
    /// Group id (group messages).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<String>,
    /// The body as the sender gave it.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: Box<RawValue>,
}

/// The constant `type` tag of a [`MessageItem`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MessageTag {
    /// `"message"`.
    #[default]
    Message,
}

/// Frames the server sends, other than `message` (see [`MessageRef`]) and the `messages`
/// page of a `sync` (see [`encode_page`]), which are encoded around their raw bodies.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on a connection.
    Ready {
        /// This device.
        device_id: &'a str,
        /// Its tenant.
        tenant_id: &'a str,
        /// Its address.
        address: &'a str,
        /// Highest seq in its inbox.
        last_seq: u64,
        /// How often the server pings.
        heartbeat_ms: u64,
    },
    /// A `send` is durable.
    Ack {
        /// Echoed request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// The message id.
        message_id: &'a str,
        /// Seq of the copy in the sender's own inbox.
        seq: u64,
        /// Acceptance time.
        ts: i64,
    },
    /// A request failed.
    Error {
        /// Echoed request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
        /// For `rate_limited`: when to retry.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A recipient reported a receipt for a message this device sent. Statuses are
    /// stored in the sender's inbox: `seq` is the status's position there, and `sync`
    /// lists it among the messages (see [`StatusRef`]).
    Status {
        /// The message.
        message_id: &'a str,
        /// Delivered or read.
        status: ReceiptStatus,
        /// Address of the recipient that reported it.
        by: &'a str,
        /// When the server got the receipt.
        ts: i64,
        /// Position in the sender's inbox.
        seq: u64,
    },
    /// Someone is typing to this device.
    Typing {
        /// Who types.
        from: &'a str,
        /// Group, when typing in a group.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<&'a str>,
        /// Composing or paused.
        state: TypingState,
    },
    /// Answer to `ping`.
    Pong {
        /// Echoed request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: all keys are strings, no maps of non-string keys.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl MessageItem {
    /// Encodes the message as a `message` frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A message as the server holds it, borrowed for encoding without re-parsing its body.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Message id.
    pub message_id: &'a str,
    /// Seq in the receiving inbox.
    pub seq: u64,
    /// Acceptance time.
    pub ts: i64,
    /// Sender address.
    pub from: &'a str,
    /// Recipient address (1:1).
    pub to: Option<&'a str>,
    /// Group id (group message).
    pub group: Option<&'a str>,
    /// Raw JSON body, already validated as an object.
    pub body: &'a str,
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

impl MessageRef<'_> {
    /// Appends this message's `message` frame (the same JSON as [`MessageItem`]).
    pub fn encode_into(&self, out: &mut String) {
        out.push_str(r#"{"type":"message","message_id":"#);
        push_json_str(out, self.message_id);
        out.push_str(r#","seq":"#);
        out.push_str(&self.seq.to_string());
        out.push_str(r#","ts":"#);
        out.push_str(&self.ts.to_string());
        out.push_str(r#","from":"#);
        push_json_str(out, self.from);
        if let Some(to) = self.to {
            out.push_str(r#","to":"#);
            push_json_str(out, to);
        }
        if let Some(group) = self.group {
            out.push_str(r#","group":"#);
            push_json_str(out, group);
        }
        out.push_str(r#","body":"#);
        out.push_str(self.body);
        out.push('}');
    }

    /// This message's `message` frame.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(160 + self.body.len());
        self.encode_into(&mut out);
        out
    }
}

/// A stored status (a recipient's receipt for a message the inbox owner sent), as
/// `sync` and history list it: the same JSON as the live `status` frame.
#[derive(Debug, Clone, Copy)]
pub struct StatusRef<'a> {
    /// The message reported on.
    pub message_id: &'a str,
    /// Position in the sender's inbox.
    pub seq: u64,
    /// When the receipt came (Unix ms).
    pub ts: i64,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// The reporting recipient's address.
    pub by: &'a str,
}

impl StatusRef<'_> {
    /// This status's `status` frame.
    pub fn encode(&self) -> String {
        ServerFrame::Status {
            message_id: self.message_id,
            status: self.status,
            by: self.by,
            ts: self.ts,
            seq: self.seq,
        }
        .encode()
    }
}

/// One entry of an inbox page: a message or a status, each at its seq.
#[derive(Debug, Clone, Copy)]
pub enum PageItem<'a> {
    /// A message sent or received.
    Message(MessageRef<'a>),
    /// A status of a message the owner sent.
    Status(StatusRef<'a>),
}

impl PageItem<'_> {
    /// The entry's seq.
    pub fn seq(&self) -> u64 {
        match self {
            PageItem::Message(m) => m.seq,
            PageItem::Status(s) => s.seq,
        }
    }

    fn encode_into(&self, out: &mut String) {
        match self {
            PageItem::Message(m) => m.encode_into(out),
            PageItem::Status(s) => out.push_str(&s.encode()),
        }
    }
}

/// Encodes a page of inbox entries: the WS `messages` frame when `ws` is true (with
/// `frame_id` echoed), else the REST history body.
pub fn encode_page(
    ws: bool,
    frame_id: Option<&str>,
    items: &[PageItem<'_>],
    next_after_seq: u64,
    more: bool,
) -> String {
    let mut out = String::with_capacity(64 + items.len() * 256);
    out.push('{');
    if ws {
        out.push_str(r#""type":"messages","#);
        if let Some(id) = frame_id {
            out.push_str(r#""id":"#);
            push_json_str(&mut out, id);
            out.push(',');
        }
    }
    out.push_str(r#""items":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item.encode_into(&mut out);
    }
    out.push_str(r#"],"next_after_seq":"#);
    out.push_str(&next_after_seq.to_string());
    out.push_str(r#","more":"#);
    out.push_str(if more { "true" } else { "false" });
    out.push('}');
    out
}
