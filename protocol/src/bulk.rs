//! `POST /v1/messages/bulk`: the body and its validation, as pure functions (fuzzed
//! with the other REST bodies). The whole call is validated before anything is queued;
//! an error names the offending entry.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorCode;
use crate::frames::Priority;
use crate::validate::{bounded, check_body, is_e164, quoted};

/// Most messages in one `messages` list.
pub const MAX_BULK_MESSAGES: usize = 10_000;
/// Most recipients in one campaign (`to` list).
pub const MAX_CAMPAIGN_RECIPIENTS: usize = 100_000;

/// `POST /v1/messages/bulk` body: a `messages` list, or the campaign form
/// (`device`, `to` list, `body`, `priority`). `send_at` (Unix ms) schedules them all.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkRequest {
    /// Up to 10,000 `{device, to | group, body, priority?, send_at?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>, max_items = 10_000))]
    pub messages: Option<Vec<Box<RawValue>>>,
    /// Campaign form: the sending device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Campaign form: up to 100,000 recipient addresses (E.164).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>, max_items = 100_000))]
    pub to: Option<Box<RawValue>>,
    /// Campaign form: the body (a JSON object, at most `max_message_bytes`) every
    /// recipient gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub body: Option<Box<RawValue>>,
    /// Campaign form: the lane, `critical`, `high`, `normal` or `low` (default normal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Not before this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct BulkItem {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    body: Option<Box<RawValue>>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    send_at: Option<i64>,
}

/// Why a bulk call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkError {
    /// `bad_request` or `too_large`.
    pub code: ErrorCode,
    /// What is wrong, naming the entry.
    pub message: String,
}

/// A `bad_request` refusal.
pub(crate) fn bad(message: impl Into<String>) -> BulkError {
    BulkError {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

/// A `too_large` refusal.
pub(crate) fn too_large(message: impl Into<String>) -> BulkError {
    BulkError {
        code: ErrorCode::TooLarge,
        message: message.into(),
    }
}

/// A message's body: its own, or the campaign's shared one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkBody {
    /// This message's own body (raw JSON object).
    Own(String),
    /// [`ParsedBulk::shared`].
    Shared,
}

/// One validated message of a bulk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkMessage {
    /// The sending device id.
    pub device: String,
    /// Recipient address.
    pub to: Option<String>,
    /// Recipient group.
    pub group: Option<String>,
    /// The body.
    pub body: BulkBody,
    /// Lane.
    pub priority: Priority,
    /// Not before (Unix ms).
    pub send_at: Option<i64>,
}

/// A validated bulk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBulk {
    /// Its messages, in order.
    pub messages: Vec<BulkMessage>,
    /// The campaign's body, stored once for all its messages.
    pub shared: Option<String>,
}

fn parse_priority(field: &str, p: Option<&str>) -> Result<Priority, BulkError> {
    match p {
        None => Ok(Priority::Normal),
        Some(s) => Priority::parse(s).ok_or_else(|| {
            bad(format!(
                "`{field}` must be critical, high, normal or low, got {}",
                quoted(s)
            ))
        }),
    }
}

fn parse_body(field: &str, b: Option<&RawValue>, max_bytes: usize) -> Result<String, BulkError> {
    match b {
        Some(raw) if raw.get().starts_with('{') => {
            if raw.get().len() > max_bytes {
                return Err(too_large(format!("`{field}` is over {max_bytes} bytes")));
            }
            check_body(raw.get()).map_err(|e| bad(format!("`{field}`: {e}")))?;
            Ok(raw.get().to_owned())
        }
        _ => Err(bad(format!("`{field}` must be a JSON object"))),
    }
}

fn check_send_at(field: &str, v: Option<i64>) -> Result<(), BulkError> {
    match v {
        Some(t) if t < 0 => Err(bad(format!(
            "`{field}` must be a Unix time in milliseconds"
        ))),
        _ => Ok(()),
    }
}

fn check_address(field: &str, address: &str) -> Result<(), BulkError> {
    if is_e164(address) {
        Ok(())
    } else {
        Err(bad(format!(
            "`{field}` must be an E.164 address like +15550001, got {}",
            quoted(address)
        )))
    }
}

impl BulkRequest {
    /// Validates the whole call; each body at most `max_body_bytes`.
    pub fn parse(self, max_body_bytes: usize) -> Result<ParsedBulk, BulkError> {
        check_send_at("send_at", self.send_at)?;
        match self.messages {
            Some(messages) => {
                if self.device.is_some() || self.to.is_some() || self.body.is_some() {
                    return Err(bad(
                        "give either `messages` or the campaign form (`device`, `to`, `body`), not both",
                    ));
                }
                parse_list(&messages, self.send_at, max_body_bytes)
            }
            None => self.parse_campaign(max_body_bytes),
        }
    }

    fn parse_campaign(self, max_body_bytes: usize) -> Result<ParsedBulk, BulkError> {
        let device = self
            .device
            .ok_or_else(|| bad("give `messages`, or `device`, `to` and `body`"))?;
        let to: Vec<String> = match &self.to {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| bad("campaign `to` must be a list of E.164 addresses"))?,
            None => return Err(bad("campaign `to` is missing")),
        };
        if to.is_empty() {
            return Err(bad("campaign `to` is empty"));
        }
        if to.len() > MAX_CAMPAIGN_RECIPIENTS {
            return Err(too_large(format!(
                "at most {MAX_CAMPAIGN_RECIPIENTS} recipients per campaign"
            )));
        }
        let body = parse_body("body", self.body.as_deref(), max_body_bytes)?;
        let priority = parse_priority("priority", self.priority.as_deref())?;
        let mut messages = Vec::with_capacity(to.len());
        for (i, address) in to.into_iter().enumerate() {
            check_address(&format!("to[{i}]"), &address)?;
            messages.push(BulkMessage {
                device: device.clone(),
                to: Some(address),
                group: None,
                body: BulkBody::Shared,
                priority,
                send_at: self.send_at,
            });
        }
        Ok(ParsedBulk {
            messages,
            shared: Some(body),
        })
    }
}

fn parse_list(
    messages: &[Box<RawValue>],
    send_at: Option<i64>,
    max_body_bytes: usize,
) -> Result<ParsedBulk, BulkError> {
    if messages.is_empty() {
        return Err(bad("`messages` is empty"));
    }
    if messages.len() > MAX_BULK_MESSAGES {
        return Err(too_large(format!(
            "at most {MAX_BULK_MESSAGES} messages per call"
        )));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, raw) in messages.iter().enumerate() {
        let item: BulkItem = serde_json::from_str(raw.get())
            .map_err(|e| bad(bounded(format!("messages[{i}]: {e}"))))?;
        let device = item
            .device
            .ok_or_else(|| bad(format!("messages[{i}].device is missing")))?;
        match (&item.to, &item.group) {
            (Some(to), None) => check_address(&format!("messages[{i}].to"), to)?,
            (None, Some(g)) if !g.is_empty() && g.len() <= 64 => {}
            (None, Some(_)) => return Err(bad(format!("messages[{i}].group must be a group id"))),
            _ => {
                return Err(bad(format!(
                    "messages[{i}] needs exactly one of `to` or `group`"
                )))
            }
        }
        let body = parse_body(
            &format!("messages[{i}].body"),
            item.body.as_deref(),
            max_body_bytes,
        )?;
        let priority =
            parse_priority(&format!("messages[{i}].priority"), item.priority.as_deref())?;
        check_send_at(&format!("messages[{i}].send_at"), item.send_at)?;
        out.push(BulkMessage {
            device,
            to: item.to,
            group: item.group,
            body: BulkBody::Own(body),
            priority,
            send_at: item.send_at.or(send_at),
        });
    }
    Ok(ParsedBulk {
        messages: out,
        shared: None,
    })
}
