//! Switchboard's credential logic, without I/O: device tokens (JWT, HS256), tenant API
//! keys and the admin token comparison.
//!
//! The server's extractors (`src/auth.rs`) turn HTTP requests into calls of these
//! functions; keeping them in a crate of their own, with no actix and no store, lets
//! `fuzz/` build and fuzz them in seconds. Every function here takes untrusted input and
//! refuses oversized or malformed input before doing any real work.

mod secret;
mod token;

#[doc(hidden)]
pub mod fuzzing;

pub use secret::{
    bearer, hash_key, parse_api_key, random_secret, secret_matches, API_KEY_PREFIX,
    MAX_CREDENTIAL_LEN,
};
pub use token::{DeviceClaims, IssueError, TokenError, TokenKeys, MAX_TOKEN_LEN};
