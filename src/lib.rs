//! The Switchboard server: configuration, HTTP/WebSocket transport, REST handlers and
//! the backends behind the actor crate's traits.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod webhooks;
pub mod ws;
