//! The JSON error body of pier's own API (`/api/v1/...`).

use serde::{Deserialize, Serialize};

/// Machine-readable class of an API error; the HTTP status follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidInput,
    /// A credential (e.g. a webhook signature) is missing or wrong.
    Unauthorized,
    /// The request is understood but not allowed (e.g. a webhook on a pipeline without a secret).
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    NoLeader,
    Timeout,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::NoLeader | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

/// `{"error": {"code": "...", "message": "..."}}`: the message is written for
/// a person and says what to do next when there is something to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            error: ApiErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.error.message, self.error.code)
    }
}

impl std::error::Error for ApiError {}
