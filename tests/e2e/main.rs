//! End-to-end tests: a real server on port 0, real HTTP and WebSocket clients.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin_page;
mod admin_tree;
mod bulk;
mod isolation;
mod jobs;
mod ops;
mod process;
mod recovery;
mod resilience;
mod rest;
mod smoke;
mod ws;
mod ws_errors;
