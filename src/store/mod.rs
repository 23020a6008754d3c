//! Backends implementing the actor crate's `Store` trait.

pub mod hooked;
pub mod sqlite;
