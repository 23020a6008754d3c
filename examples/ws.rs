//! A minimal WebSocket client for trying Switchboard by hand:
//! `cargo run --example ws -- ws://127.0.0.1:3000/v1/ws?token=<device token>`
//! prints every frame it receives and sends each line you type as a text frame.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: ws <ws://host/v1/ws?token=…>");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("< {t}"),
                Some(Ok(Message::Close(c))) => { println!("closed: {c:?}"); break; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { println!("error: {e}"); break; }
                None => break,
            },
            line = lines.next_line() => match line {
                Ok(Some(l)) if !l.trim().is_empty() => tx.send(Message::text(l)).await.unwrap(),
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
}
