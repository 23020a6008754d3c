//! A send interrupted by a restart after the sender's copy was durable but before the
//! recipient's row was: the client's resend with the same request id completes it with
//! the same message id, and nothing is duplicated.

use std::sync::Arc;
use std::time::Duration;

use actors::store::{InboxRow, MessageRecord, RowKind};
use serde_json::json;

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_after_restart_completes_a_half_written_send() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;

    // What a kill leaves behind: A's own copy of an unacked send, nothing in B's inbox.
    let store = server.running.as_ref().unwrap().state.env.store.clone();
    let message = Arc::new(MessageRecord {
        id: "m_interrupted".into(),
        sender_device: Some(a.id.as_str().into()),
        from: a.address.as_str().into(),
        to: Some(b.address.as_str().into()),
        group: None,
        body: r#"{"text":"half written"}"#.into(),
        ts: 1_700_000_000_000,
    });
    let outcomes = store
        .commit_rows(Arc::new(vec![InboxRow {
            device_id: a.id.as_str().into(),
            seq: 1,
            kind: RowKind::Message(message.clone()),
            ts: message.ts,
            client_id: Some("c-crash".into()),
            epoch: 0,
            into_fence: false,
        }]))
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok));

    // A's session starts now and finds the request id in the store.
    let mut wa = t.connect(&a).await;
    assert_eq!(wa.ready["last_seq"], 1);
    let mut wb = t.connect(&b).await;
    assert_eq!(wb.ready["last_seq"], 0);

    let ack = wa
        .send_to("c-crash", &b.address, json!({"text": "half written"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["message_id"], "m_interrupted");
    assert_eq!(ack["seq"], 1);
    let m = wb.recv_type("message").await;
    assert_eq!(m["message_id"], "m_interrupted");
    assert_eq!(m["body"], json!({"text": "half written"}));
    assert_eq!(m["from"], a.address.as_str());

    // Once more: the same answer, and B gets no second copy.
    let again = wa
        .send_to("c-crash", &b.address, json!({"text": "half written"}))
        .await;
    assert_eq!(again, ack);
    assert!(wb.try_recv(Duration::from_millis(300)).await.is_none());
    let (status, history) = t
        .call("GET", &format!("/v1/devices/{}/messages", b.id), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "{history}");
    // A's inbox still holds exactly its one copy.
    let (_, own) = t
        .call("GET", &format!("/v1/devices/{}/messages", a.id), None)
        .await;
    assert_eq!(own["items"].as_array().unwrap().len(), 1, "{own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_after_restart_of_a_complete_send_changes_nothing() {
    let server = TestServer::start().await;
    let t = server.tenant().await;
    let a = t.device().await;
    let b = t.device().await;
    let store = server.running.as_ref().unwrap().state.env.store.clone();
    let message = Arc::new(MessageRecord {
        id: "m_done".into(),
        sender_device: Some(a.id.as_str().into()),
        from: a.address.as_str().into(),
        to: Some(b.address.as_str().into()),
        group: None,
        body: r#"{"n":1}"#.into(),
        ts: 1_700_000_000_000,
    });
    let row = |device: &str, seq: u64, client: Option<&str>| InboxRow {
        device_id: device.into(),
        seq,
        kind: RowKind::Message(message.clone()),
        ts: message.ts,
        client_id: client.map(Into::into),
        epoch: 0,
        into_fence: false,
    };
    let outcomes = store
        .commit_rows(Arc::new(vec![
            row(&a.id, 1, Some("c-done")),
            row(&b.id, 1, None),
        ]))
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok));
    let mut wa = t.connect(&a).await;
    let mut wb = t.connect(&b).await;
    let ack = wa.send_to("c-done", &b.address, json!({"n": 1})).await;
    assert_eq!(ack["message_id"], "m_done");
    assert!(wb.try_recv(Duration::from_millis(300)).await.is_none());
    let (_, history) = t
        .call("GET", &format!("/v1/devices/{}/messages", b.id), None)
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
}
