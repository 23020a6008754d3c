//! The basic message path: two devices exchange a message.

use serde_json::json;

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_exchange_a_message() {
    let server = TestServer::start().await;
    let tenant = server.tenant().await;
    let a = tenant.device().await;
    let b = tenant.device().await;
    let mut wa = tenant.connect(&a).await;
    let mut wb = tenant.connect(&b).await;
    assert_eq!(wa.ready["device_id"], a.id.as_str());
    assert_eq!(wa.ready["last_seq"], 0);
    let ack = wa.send_to("m1", &b.address, json!({"text": "hi"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1);
    let msg = wb.recv_type("message").await;
    assert_eq!(msg["message_id"], ack["message_id"]);
    assert_eq!(msg["from"], a.address.as_str());
    assert_eq!(msg["to"], b.address.as_str());
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["body"], json!({"text": "hi"}));
}
