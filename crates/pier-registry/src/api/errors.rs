//! RegistryError → HTTP status and the spec's JSON error body.

use axum::body::Body;
use axum::response::Response;
use http::{header, StatusCode};
use serde::Serialize;

use crate::RegistryError;

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: Vec<ErrorEntry<'a>>,
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

fn status_and_code(err: &RegistryError) -> (StatusCode, &'static str) {
    use RegistryError::*;
    match err {
        BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        BlobUploadInvalid(_) | ClientBody(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
        BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
        ChunkOutOfOrder { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
        RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID"),
        Unsupported(_) | BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
        NoRoute(_) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
        MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        Storage(_) | Index(_) | Io { .. } | Internal(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
        }
    }
}

pub(crate) fn response(err: &RegistryError) -> Response {
    let (status, code) = status_and_code(err);
    if status.is_server_error() {
        tracing::error!(error = %err, "request failed");
    } else {
        tracing::debug!(error = %err, status = status.as_u16(), "request refused");
    }
    let entries = match err {
        RegistryError::ManifestBlobUnknown(missing) => missing
            .iter()
            .map(|d| ErrorEntry {
                code,
                message: "manifest references a manifest or blob unknown to the repository".into(),
                detail: Some(serde_json::json!({ "digest": d })),
            })
            .collect(),
        _ => vec![ErrorEntry {
            code,
            message: err.to_string(),
            detail: None,
        }],
    };
    let body = serde_json::to_vec(&ErrorBody { errors: entries }).unwrap_or_default();
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    if let RegistryError::RangeNotSatisfiable { size } = err {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes */{size}"));
    }
    builder.body(Body::from(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
