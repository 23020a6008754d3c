//! Switchboard's credential logic, without I/O: device tokens (JWT, HS256), tenant API
//! keys, the admin token comparison and webhook signatures (HMAC-SHA256).
//!
//! The server's extractors (`src/auth.rs`) turn HTTP requests into calls of these
//! functions; keeping them in a crate of their own, with no actix and no store, lets
//! `fuzz/` build and fuzz them in seconds. Every function here takes untrusted input and
//! refuses oversized or malformed input before doing any real work.

mod secret;
mod token;
mod webhook;

#[doc(hidden)]
pub mod fuzzing;

pub use secret::{
    bearer, hash_key, parse_api_key, random_secret, secret_matches, API_KEY_PREFIX,
    MAX_CREDENTIAL_LEN,
};
pub use token::{DeviceClaims, IssueError, TokenError, TokenKeys, MAX_TOKEN_LEN};
pub use webhook::{
    new_webhook_secret, verify_webhook_signature, webhook_mac, webhook_signature,
    WEBHOOK_SECRET_PREFIX,
};
