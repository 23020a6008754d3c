//! The checks of the `client_frame` and `rest_bodies` fuzz targets (`fuzz/`), here so
//! that `tests/fuzz_regressions.rs` replays their corpora through the very same code on
//! the stable toolchain. Not an API: the checks panic (by design) when an invariant
//! does not hold, which is how the fuzzer learns of a bug.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ErrorCode;
use crate::frames::{ClientFrame, FrameError, ServerFrame, Target, MAX_RECEIPT_IDS};
use crate::rest;
use crate::validate::{is_e164, MAX_CLIENT_ID_LEN};

/// Decodes `data` as one WebSocket text frame and checks the decoder's invariants.
/// Invalid UTF-8 is decoded through its lossy form, as a client cannot send it in a
/// text frame but a buggy proxy might mangle one.
pub fn client_frame(data: &[u8]) {
    let _ = client_frame_text(&String::from_utf8_lossy(data));
}

/// Decodes `text`, checks what must hold for any accepted or refused frame, and returns
/// the verdict (for tests).
pub fn client_frame_text(text: &str) -> Result<ClientFrame, FrameError> {
    let verdict = ClientFrame::decode(text);
    match &verdict {
        Ok(frame) => check_frame(frame),
        Err(e) => check_frame_error(e),
    }
    verdict
}

fn check_id(id: &Option<String>) {
    if let Some(id) = id {
        assert!(
            id.len() <= MAX_CLIENT_ID_LEN,
            "echoed id of {} bytes",
            id.len()
        );
    }
}

fn check_target(target: &Target) {
    match target {
        Target::To(to) => assert!(is_e164(to), "accepted `to` {to:?}"),
        Target::Group(g) => assert!(!g.is_empty() && g.len() <= 64, "accepted `group` {g:?}"),
    }
}

fn check_frame(frame: &ClientFrame) {
    match frame {
        ClientFrame::Send {
            id, target, body, ..
        } => {
            check_id(id);
            check_target(target);
            let raw = body.get();
            assert!(raw.starts_with('{') && raw.ends_with('}'), "body {raw:?}");
            // The body is stored and pushed as it came: it must be one JSON value that
            // parses back to itself (RawValue, so no recursion limit applies).
            let again: Box<RawValue> = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("accepted body does not re-parse: {e}"));
            assert_eq!(again.get(), raw);
        }
        ClientFrame::Receipt {
            id, message_ids, ..
        } => {
            check_id(id);
            assert!(
                (1..=MAX_RECEIPT_IDS).contains(&message_ids.len()),
                "receipt with {} ids",
                message_ids.len()
            );
        }
        ClientFrame::Sync { id, .. } | ClientFrame::Ping { id } => check_id(id),
        ClientFrame::Typing { id, target, .. } => {
            check_id(id);
            check_target(target);
        }
    }
}

fn check_frame_error(e: &FrameError) {
    check_id(&e.id);
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    assert!(!e.message.is_empty(), "{e:?}");
    // The error frame the server answers with must encode to valid JSON whatever the
    // message echoes of the input.
    let frame = ServerFrame::Error {
        id: e.id.as_deref(),
        code: e.code,
        message: &e.message,
        retry_after_ms: None,
    }
    .encode();
    let v: serde_json::Value = serde_json::from_str(&frame)
        .unwrap_or_else(|err| panic!("error frame is not JSON ({err}): {frame}"));
    assert_eq!(v.get("type").and_then(|t| t.as_str()), Some("error"));
    assert_eq!(
        v.get("id").and_then(|i| i.as_str()),
        e.id.as_deref(),
        "{frame}"
    );
}

/// A decoder of one REST request body type: decodes, re-encodes and decodes again, and
/// returns the first decode's error (if any) as text.
pub type BodyDecoder = fn(&[u8]) -> Result<(), String>;

/// Every REST request body the server decodes, by name. Adding a body type to the fuzz
/// target and its regression test is one line here.
pub const REST_BODIES: &[(&str, BodyDecoder)] = &[
    ("CreateTenant", round_trip::<rest::CreateTenant>),
    ("CreateDevice", round_trip::<rest::CreateDevice>),
    ("CreateToken", round_trip::<rest::CreateToken>),
    ("Contacts", round_trip::<rest::Contacts>),
    ("CreateGroup", round_trip::<rest::CreateGroup>),
    ("GroupMembers", round_trip::<rest::GroupMembers>),
    ("SendMessage", round_trip::<rest::SendMessage>),
    ("BulkRequest", bulk_request),
];

/// Decodes and validates a bulk call: an accepted one has 1 to 10,000 messages (or
/// 100,000 campaign recipients), each with a device, exactly one target, a body.
fn bulk_request(data: &[u8]) -> Result<(), String> {
    let req: crate::bulk::BulkRequest = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let parsed = req.parse(64 * 1024).map_err(|e| e.message)?;
    assert!(!parsed.messages.is_empty());
    assert!(parsed.messages.len() <= crate::bulk::MAX_CAMPAIGN_RECIPIENTS);
    for m in &parsed.messages {
        assert!(m.to.is_some() != m.group.is_some(), "{m:?}");
        if let Some(to) = &m.to {
            assert!(is_e164(to), "{m:?}");
        }
        match &m.body {
            crate::bulk::BulkBody::Own(b) => assert!(b.starts_with('{') && b.len() <= 64 * 1024),
            crate::bulk::BulkBody::Shared => assert!(parsed.shared.is_some()),
        }
    }
    Ok(())
}

/// Decodes `data` as every REST request body; panics on a decoder invariant failure.
pub fn rest_bodies(data: &[u8]) {
    for (_, decode) in REST_BODIES {
        let _ = decode(data);
    }
}

/// Decodes `data` as `T`; an accepted body must re-encode and decode again.
pub fn round_trip<T: DeserializeOwned + Serialize>(data: &[u8]) -> Result<(), String> {
    let value: T = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let text = serde_json::to_string(&value)
        .unwrap_or_else(|e| panic!("accepted body does not encode: {e}"));
    serde_json::from_str::<T>(&text)
        .unwrap_or_else(|e| panic!("re-encoded body does not decode ({e}): {text}"));
    Ok(())
}
