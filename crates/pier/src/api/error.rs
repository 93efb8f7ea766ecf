//! Mapping of failures to `{"error":{"code","message"}}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pier_api::{ApiError, ErrorCode};
use pier_store::StoreError;

#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError(ApiError::new(code, message))
    }

    pub fn invalid(message: impl Into<String>) -> HttpError {
        HttpError::new(ErrorCode::InvalidInput, message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl From<StoreError> for HttpError {
    fn from(err: StoreError) -> HttpError {
        let code = match &err {
            StoreError::InvalidInput(_) => ErrorCode::InvalidInput,
            StoreError::NoLeader { .. } => ErrorCode::NoLeader,
            StoreError::Timeout { .. } => ErrorCode::Timeout,
            StoreError::Shutdown => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %err, "store failure while serving a request");
        }
        HttpError::new(code, err.to_string())
    }
}

pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        format!(
            "no such endpoint: {}; pier's API lives under /api/v1/ (see README)",
            uri.path()
        ),
    )
}
