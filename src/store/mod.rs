//! Backends implementing the actor crate's `Store` trait.

pub mod sqlite;
