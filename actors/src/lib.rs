//! The Switchboard actor tree (ractor) and the traits it talks to.
//!
//! ```text
//! root
//! ├── persistence   writer actors, one group-commit batch in flight each
//! ├── dispatcher    the durable send queue (priority lanes, rate-limit aware)
//! └── tenant:<id>   one TenantSupervisor per tenant, started on demand
//!     └── device:<id>  one DeviceSession per device, started on demand, stops when idle
//! ```
//!
//! The directory (device id → live session, address → device id) is a sharded index
//! shared by every actor rather than an actor of its own: lookups are on every message
//! and must not queue behind a mailbox. Starting a session goes through the tenant
//! supervisor, which serializes it.
//!
//! This crate names no database or network client: it uses [`store::Store`],
//! [`cluster::Transport`] and [`cache::Cache`], implemented by the server binary.

pub mod cache;
pub mod clock;
pub mod cluster;
pub mod conn;
pub mod device;
pub mod directory;
pub mod dispatcher;
pub mod env;
pub mod frame_queue;
pub mod jobs;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod persistence;
pub mod root;
pub mod settings;
pub mod stats;
pub mod store;
pub mod supervision;
pub mod tenant;
pub mod webhooks;

pub use env::Env;
pub use settings::Settings;
