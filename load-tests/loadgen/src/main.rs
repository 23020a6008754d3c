//! `loadgen`: a load generator for the Switchboard server.
//!
//! Runs one scenario against a real server over its public API (REST for setup, one
//! WebSocket per device for traffic) and reports what it measured: 1:1 at a fixed rate
//! or the highest rate within a latency bound, group fan-out, a reconnect storm of
//! devices with a backlog, idle memory per connection, queued bulk sends draining, and
//! a long soak with connection churn. In MQTT mode the same 1:1 client drives an MQTT
//! broker (mosquitto) for comparison. With several `--url`s the devices are spread over
//! the nodes of a cluster and the server's figures are summed over them. See
//! `README.md` next to `Cargo.toml`.

mod cli;
mod conn;
mod fleet;
mod redis_info;
mod report;
mod sampler;
mod scenario;
mod server;
mod setup;
mod stats;
mod sys;
mod window;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::Args;

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = args.json;
    let name = args.scenario().name();
    let code = match runtime.block_on(scenario::run(args)) {
        Ok(out) => {
            eprint!("{}", out.human);
            if json {
                match serde_json::to_string(&out.json) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("loadgen: cannot encode the report: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {name}: setup failed: {e:#}");
            ExitCode::from(1)
        }
    };
    // Connection tasks that did not finish were aborted; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
