//! `/metrics` and `POST /_pier/gc?dry_run=true|false`.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use serde::Deserialize;

use super::util;
use crate::Registry;

pub(super) async fn metrics(State(registry): State<Registry>) -> Response {
    let text = registry.inner.metrics.encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct GcParams {
    #[serde(default)]
    dry_run: Option<String>,
}

pub(super) async fn gc(
    State(registry): State<Registry>,
    Query(params): Query<GcParams>,
) -> Response {
    let dry_run = match params.dry_run.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            let body = serde_json::json!({"error": format!("dry_run must be true or false, got {other:?}")});
            return util::json_response(StatusCode::BAD_REQUEST, body.to_string().into_bytes());
        }
    };
    match registry.gc(dry_run).await {
        Ok(report) => match serde_json::to_vec(&report) {
            Ok(body) => util::json_response(StatusCode::OK, body),
            Err(e) => util::json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": e.to_string()})
                    .to_string()
                    .into_bytes(),
            ),
        },
        Err(e) => {
            tracing::error!(error = %e, "gc failed");
            util::json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": e.to_string()})
                    .to_string()
                    .into_bytes(),
            )
        }
    }
}
