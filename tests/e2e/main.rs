//! End-to-end tests: a real server on port 0, real HTTP and WebSocket clients.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod process;
mod smoke;
mod isolation;
mod rest;
mod ws;
mod ws_errors;
mod resilience;
