//! End-to-end tests: a real server on port 0, real HTTP and WebSocket clients.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod admin_page;
mod admin_tree;
mod bulk;
mod consistency;
mod degraded;
mod device_delete;
mod group_sync;
mod groups;
mod isolation;
mod jobs;
mod js_client;
mod limits;
mod media;
mod notifications;
mod openapi;
mod ops;
mod process;
mod receipts;
mod recovery;
mod resilience;
mod rest;
mod security;
mod shared_budgets;
mod smoke;
mod stats;
mod supervision;
mod webhooks;
mod ws;
mod ws_errors;
