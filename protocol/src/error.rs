//! The one error table: every client-visible error has a stable code, an HTTP status,
//! a WebSocket close code where one applies, and whether a client should retry.

use serde::{Deserialize, Serialize};

/// A stable, client-visible error code (`{"error":{"code":…}}` and WS `error` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// Malformed or invalid input.
    BadRequest,
    /// No credentials, or invalid / expired ones.
    Unauthorized,
    /// The resource belongs to another tenant, or the caller may not use it.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The resource already exists.
    Conflict,
    /// The request or frame is over a size limit.
    TooLarge,
    /// The request body is not JSON (`Content-Type` other than `application/json`).
    UnsupportedMediaType,
    /// Over a rate budget; retry after `retry_after_ms`.
    RateLimited,
    /// The server cannot serve this now (restarting, storage failing); retry.
    Unavailable,
    /// An unexpected server fault.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status a REST answer with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }
}

/// WebSocket close codes used by the server.
pub mod close {
    /// The client sent a frame over the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The server (or this device's session) is restarting: reconnect and `sync`.
    pub const RESTARTING: u16 = 1012;
    /// The device token expired while connected.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The device was deleted: do not reconnect with its tokens.
    pub const DEVICE_DELETED: u16 = 4410;
    /// The client stopped reading and its outbound buffer filled.
    pub const TOO_SLOW: u16 = 4408;
    /// The client sent no frame and answered no ping within the heartbeat window.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// An operator disconnected this device's clients.
    pub const KICKED: u16 = 4001;
}

/// The REST error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// Code and human-readable message of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable code from the error table.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For `rate_limited`: how long to wait before retrying.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_after_ms: Option<u64>,
}
