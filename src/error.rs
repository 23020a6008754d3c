//! REST errors: one type carrying a code from the protocol's error table.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::device::SendError;
use actors::directory::RouteError;
use actors::store::StoreError;
use protocol::error::{ErrorBody, ErrorDetail};
use protocol::ErrorCode;

/// An error answered as `{"error":{"code","message"}}` with the code's HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail for people.
    pub message: String,
    /// For 429: when to retry.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(ms) = self.retry_after_ms {
            res.insert_header(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                retry_after_ms: self.retry_after_ms,
            },
        })
    }
}

impl From<StoreError> for ApiError {
    /// Clients see the error table's code; the store's own text goes to the log only.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ApiError::new(ErrorCode::Conflict, "already exists"),
            StoreError::Limit(m) => ApiError::new(ErrorCode::TooLarge, m),
            StoreError::Unavailable(_) | StoreError::Aborted => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(ErrorCode::Unavailable, "storage unavailable, retry later")
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "stored data unreadable");
                ApiError::new(ErrorCode::Internal, "stored data unreadable")
            }
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoDevice => ApiError::not_found("no such device"),
            RouteError::Unavailable => ApiError::new(ErrorCode::Unavailable, "server restarting"),
            RouteError::Store(s) => s.into(),
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        ApiError {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// Turns actix's JSON and query extractor failures into our error body.
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => {
            ApiError::new(ErrorCode::TooLarge, "request body too large")
        }
        J::ContentType => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        other => ApiError::bad_request(format!("invalid JSON body: {other}")),
    };
    api.into()
}

/// Turns query-string extractor failures into our error body.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query: {err}")).into()
}

/// Turns path extractor failures into our error body.
pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(format!("invalid path: {err}")).into()
}
