//! A JSON body extractor whose failures are our JSON errors with status 400
//! (or 413/415), instead of axum's plain-text 422.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use pier_api::ErrorCode;
use serde::de::DeserializeOwned;

use super::HttpError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(map_rejection(rejection)),
        }
    }
}

fn map_rejection(rejection: JsonRejection) -> HttpError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => HttpError::new(
            ErrorCode::InvalidInput,
            "expected a JSON body: send `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            HttpError::invalid(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            HttpError::invalid(format!("invalid request body: {}", e.body_text()))
        }
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body too large (limit {} bytes)",
                    super::DEFAULT_BODY_LIMIT_BYTES
                ),
            )
        }
        other => HttpError::invalid(other.body_text()),
    }
}
