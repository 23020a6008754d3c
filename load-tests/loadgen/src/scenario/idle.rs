//! `idle`: N connections (Switchboard devices or MQTT clients) opened and held idle for
//! `--hold` seconds; the report gives the server's RSS before connecting and when
//! connected, and (connected − before) / connections. No message is sent.

use anyhow::Result;

use super::{one_to_one, Output};
use crate::cli::Args;

/// Runs the idle scenario: the one-to-one connect and hold, with no sending.
pub async fn run(args: &Args) -> Result<Output> {
    let mut idle = args.clone();
    idle.rate = Some(0.0);
    if args.server_pids.is_empty() {
        eprintln!("note: without --server-pid the report has no server memory figures");
    }
    one_to_one::run(&idle, "idle").await
}
