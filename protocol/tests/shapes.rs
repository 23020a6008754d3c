//! Pins the JSON shapes of the wire types (PROTOCOL.md field names are fixed).
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use switchboard_protocol::{
    encode_page, ClientFrame, ErrorCode, MessageItem, MessageRef, PageItem, Priority,
    ReceiptStatus, ServerFrame, StatusRef, Target, TypingState,
};

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn server_frames() {
    let ready = ServerFrame::Ready {
        device_id: "d1",
        tenant_id: "t1",
        address: "+15550001",
        last_seq: 7,
        heartbeat_ms: 30000,
    };
    assert_eq!(
        parse(&ready.encode()),
        json!({"type":"ready","device_id":"d1","tenant_id":"t1","address":"+15550001","last_seq":7,"heartbeat_ms":30000})
    );
    let ack = ServerFrame::Ack {
        id: Some("c1"),
        message_id: "m1",
        seq: 3,
        ts: 1700,
    };
    assert_eq!(
        parse(&ack.encode()),
        json!({"type":"ack","id":"c1","message_id":"m1","seq":3,"ts":1700})
    );
    let err = ServerFrame::Error {
        id: None,
        code: ErrorCode::RateLimited,
        message: "slow down",
        retry_after_ms: Some(1500),
    };
    assert_eq!(
        parse(&err.encode()),
        json!({"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":1500})
    );
    let status = ServerFrame::Status {
        message_id: "m1",
        status: ReceiptStatus::Read,
        by: "+15550002",
        ts: 9,
        seq: 12,
    };
    assert_eq!(
        parse(&status.encode()),
        json!({"type":"status","message_id":"m1","status":"read","by":"+15550002","ts":9,"seq":12})
    );
    let typing = ServerFrame::Typing {
        from: "+15550002",
        group: None,
        state: TypingState::Composing,
    };
    assert_eq!(
        parse(&typing.encode()),
        json!({"type":"typing","from":"+15550002","state":"composing"})
    );
    assert_eq!(
        parse(&ServerFrame::Pong { id: Some("p") }.encode()),
        json!({"type":"pong","id":"p"})
    );
}

#[test]
fn message_frames_and_pages() {
    let m = MessageRef {
        message_id: "m1",
        seq: 4,
        ts: 1000,
        from: "+15550001",
        to: Some("+15550002"),
        group: None,
        body: r#"{"text":"hi \"there\""}"#,
    };
    let expected = json!({"type":"message","message_id":"m1","seq":4,"ts":1000,"from":"+15550001","to":"+15550002","body":{"text":"hi \"there\""}});
    assert_eq!(parse(&m.encode()), expected);
    // Clients can decode it as the typed item.
    let item: MessageItem = serde_json::from_str(&m.encode()).unwrap();
    assert_eq!(item.seq, 4);
    assert_eq!(item.body.get(), r#"{"text":"hi \"there\""}"#);

    let status = StatusRef {
        message_id: "m0",
        seq: 5,
        ts: 1001,
        status: ReceiptStatus::Delivered,
        by: "+15550002",
    };
    let ws = encode_page(
        true,
        Some("s1"),
        &[PageItem::Message(m), PageItem::Status(status)],
        5,
        true,
    );
    let status_json = json!({"type":"status","message_id":"m0","status":"delivered","by":"+15550002","ts":1001,"seq":5});
    assert_eq!(
        parse(&ws),
        json!({"type":"messages","id":"s1","items":[expected.clone(), status_json],"next_after_seq":5,"more":true})
    );
    // Statuses move only forward.
    assert!(ReceiptStatus::Delivered < ReceiptStatus::Read);
    let rest = encode_page(false, None, &[], 0, false);
    assert_eq!(
        parse(&rest),
        json!({"items":[],"next_after_seq":0,"more":false})
    );
}

#[test]
fn client_frames_decode() {
    match ClientFrame::decode(
        r#"{"type":"send","id":"c1","to":"+15550002","body":{"a":1},"priority":"high"}"#,
    )
    .unwrap()
    {
        ClientFrame::Send {
            id,
            target,
            body,
            priority,
        } => {
            assert_eq!(id.as_deref(), Some("c1"));
            assert_eq!(target, Target::To("+15550002".into()));
            assert_eq!(body.get(), r#"{"a":1}"#);
            assert_eq!(priority, Priority::High);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ClientFrame::decode(r#"{"type":"sync","id":"s","after_seq":5}"#).unwrap(),
        ClientFrame::Sync {
            after_seq: 5,
            limit: None,
            ..
        }
    ));
    assert!(matches!(
        ClientFrame::decode(r#"{"type":"receipt","message_ids":["m1"],"status":"delivered"}"#)
            .unwrap(),
        ClientFrame::Receipt {
            status: ReceiptStatus::Delivered,
            ..
        }
    ));
    assert!(matches!(
        ClientFrame::decode(r#"{"type":"typing","group":"g1","state":"paused"}"#).unwrap(),
        ClientFrame::Typing {
            state: TypingState::Paused,
            ..
        }
    ));
    assert!(matches!(
        ClientFrame::decode(r#"{"type":"ping","id":"p"}"#).unwrap(),
        ClientFrame::Ping { .. }
    ));
}

#[test]
fn client_frame_errors_keep_the_id() {
    let cases = [
        (
            r#"{"type":"send","id":"x1","to":"+15550002"}"#,
            Some("x1"),
            "body",
        ),
        (
            r#"{"type":"send","id":"x2","to":"555","body":{}}"#,
            Some("x2"),
            "E.164",
        ),
        (
            r#"{"type":"send","id":"x3","to":"+15550002","group":"g","body":{}}"#,
            Some("x3"),
            "not both",
        ),
        (
            r#"{"type":"send","id":"x4","to":"+15550002","body":[1]}"#,
            Some("x4"),
            "object",
        ),
        (
            r#"{"type":"send","id":"x5","to":"+15550002","body":{},"priority":"urgent"}"#,
            Some("x5"),
            "priority",
        ),
        (
            r#"{"type":"nope","id":"x6"}"#,
            Some("x6"),
            "unknown frame type",
        ),
        (
            r#"{"type":"sync","id":"x7","after_seq":"zero"}"#,
            Some("x7"),
            "invalid frame",
        ),
        (r#"not json"#, None, "invalid frame"),
        (r#"{"id":"x8"}"#, Some("x8"), "type"),
    ];
    for (text, id, needle) in cases {
        let err = ClientFrame::decode(text).unwrap_err();
        assert_eq!(err.id.as_deref(), id, "{text}");
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains(needle), "{text}: {}", err.message);
    }
    let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
    assert_eq!(ClientFrame::decode(&long).unwrap_err().id, None);
}

#[test]
fn error_table() {
    for (code, wire, status, retry) in [
        (ErrorCode::BadRequest, "bad_request", 400, false),
        (ErrorCode::Unauthorized, "unauthorized", 401, false),
        (ErrorCode::Forbidden, "forbidden", 403, false),
        (ErrorCode::NotFound, "not_found", 404, false),
        (ErrorCode::Conflict, "conflict", 409, false),
        (ErrorCode::TooLarge, "too_large", 413, false),
        (
            ErrorCode::UnsupportedMediaType,
            "unsupported_media_type",
            415,
            false,
        ),
        (ErrorCode::RateLimited, "rate_limited", 429, true),
        (ErrorCode::Unavailable, "unavailable", 503, true),
    ] {
        assert_eq!(code.as_str(), wire);
        assert_eq!(serde_json::to_value(code).unwrap(), json!(wire));
        assert_eq!(code.http_status(), status);
        assert_eq!(code.retryable(), retry);
    }
}

#[test]
fn webhook_bodies() {
    use switchboard_protocol::webhooks::{CreateWebhook, Webhook, WebhookCreated};
    let created = WebhookCreated {
        webhook: Webhook {
            webhook_id: "wh_1".into(),
            url: "https://example.com/hook".into(),
            events: vec!["message.received".into()],
            description: None,
            enabled: true,
            created_at: 1,
            updated_at: 2,
        },
        secret: "whsec_x".into(),
    };
    // The secret sits beside the endpoint's fields, not nested.
    assert_eq!(
        serde_json::to_value(&created).unwrap(),
        json!({"webhook_id":"wh_1","url":"https://example.com/hook","events":["message.received"],
               "description":null,"enabled":true,"created_at":1,"updated_at":2,"secret":"whsec_x"})
    );
    let req: CreateWebhook =
        serde_json::from_value(json!({"url":"http://h/x","events":["job.failed"]})).unwrap();
    assert_eq!(
        (req.url.as_str(), req.enabled, req.description),
        ("http://h/x", None, None)
    );
    // A secret cannot be chosen by the caller.
    assert!(serde_json::from_value::<CreateWebhook>(
        json!({"url":"http://h/x","events":["job.failed"],"secret":"mine"})
    )
    .is_err());
}
