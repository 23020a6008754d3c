//! Cluster tests: several server binaries as child processes on one MongoDB (nx-27017)
//! and one Redis, on loopback, with fast cluster timings. Each test makes its own
//! cluster (its own database and key prefix) and is bounded in time.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod faults;
#[allow(dead_code)]
mod harness;
mod heartbeat;
mod load;
mod messaging;
mod queue;
