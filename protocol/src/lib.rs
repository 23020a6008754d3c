//! Switchboard wire types: WebSocket frames, REST bodies and the error table.
//!
//! This crate has no runtime and does no I/O. It is shared by the server, the tests and
//! the load generator so that every side agrees on field names. JSON shapes are pinned by
//! the snapshot tests in `tests/shapes.rs`.

pub mod background;
pub mod bulk;
pub mod error;
pub mod frames;
#[doc(hidden)]
pub mod fuzzing;
pub mod rest;
pub mod validate;
pub mod webhooks;

pub use error::ErrorCode;
pub use frames::{
    encode_page, ClientFrame, FrameError, MessageItem, MessageRef, PageItem, Priority,
    ReceiptStatus, ServerFrame, StatusRef, Target, TypingState,
};
