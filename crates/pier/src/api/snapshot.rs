//! `GET /api/v1/snapshot` (a tar archive of the whole state) and
//! `POST /api/v1/snapshot/restore[?force=true]` (writes one back). See `crate::snapshot`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pier_api::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{AppState, HttpError};
use crate::snapshot::{self, SnapshotError};

/// A restore carries the whole state; far above the API's default body limit.
pub const RESTORE_BODY_LIMIT_BYTES: usize = 1024 * 1024 * 1024;

impl From<SnapshotError> for HttpError {
    fn from(err: SnapshotError) -> HttpError {
        match err {
            SnapshotError::Store(e) => e.into(),
            SnapshotError::Invalid(_) => HttpError::invalid(err.to_string()),
            SnapshotError::NotEmpty(_) => HttpError::new(ErrorCode::Conflict, err.to_string()),
            SnapshotError::Io { .. } => {
                tracing::error!(error = %err, "snapshot I/O failed");
                HttpError::new(ErrorCode::Internal, err.to_string())
            }
        }
    }
}

pub async fn save(State(state): State<AppState>) -> Result<Response, HttpError> {
    let server = state.store.status().node_name;
    let archive = snapshot::build(&state.store, &server).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"pier-snapshot.tar\"",
            ),
        ],
        archive,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct RestoreParams {
    #[serde(default)]
    force: bool,
}

#[derive(Serialize, Deserialize)]
pub struct RestoreResponse {
    pub keys: u64,
    pub snapshot_index: u64,
    pub snapshot_created_at_ms: u64,
}

pub async fn restore(
    State(state): State<AppState>,
    Query(params): Query<RestoreParams>,
    body: Bytes,
) -> Result<Json<RestoreResponse>, HttpError> {
    let parsed = snapshot::parse(&body)?;
    let keys = snapshot::restore(&state.store, &parsed, params.force).await?;
    tracing::info!(keys, index = parsed.meta.index, "snapshot restored");
    Ok(Json(RestoreResponse {
        keys,
        snapshot_index: parsed.meta.index,
        snapshot_created_at_ms: parsed.meta.created_at_ms,
    }))
}
