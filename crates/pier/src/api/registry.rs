//! The registry's endpoints on the HTTP API:
//! - `GET /api/v1/registry/peer/blobs/{digest}`: this server's copy of a blob, for the
//!   other servers (servers only: see `security::routes`). Only what is on this server's
//!   disk is served, never fetched on, so two servers can never ask each other in a loop.
//! - `GET /api/v1/registry/endpoints`: the registry addresses the servers advertise (agents'
//!   node-local registry endpoints pull through them).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pier_api::ErrorCode;
use pier_registry::cluster::PEER_BLOB_PATH;
use pier_registry::digest::Digest;
use pier_registry::Registry;
use pier_store::{Consistency, Store};

use super::HttpError;

#[derive(Clone)]
pub struct RegistryApi {
    pub registry: Registry,
    pub store: Store,
}

pub fn router(state: RegistryApi) -> Router {
    Router::new()
        .route(&format!("{PEER_BLOB_PATH}/{{digest}}"), get(peer_blob))
        .route("/api/v1/registry/endpoints", get(endpoints))
        .with_state(state)
}

async fn peer_blob(
    State(state): State<RegistryApi>,
    Path(digest): Path<String>,
) -> Result<Response, HttpError> {
    let digest = Digest::parse(&digest).map_err(|e| HttpError::invalid(e.to_string()))?;
    match state.registry.read_local(&digest).await {
        Ok(Some((size, stream))) => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, size.to_string()),
            ],
            Body::from_stream(stream),
        )
            .into_response()),
        Ok(None) => Err(HttpError::new(
            ErrorCode::NotFound,
            format!("blob {digest} is not on this server"),
        )),
        Err(e) => {
            tracing::error!(%digest, error = %e, "cannot read a blob for a peer");
            Err(HttpError::new(ErrorCode::Internal, e.to_string()))
        }
    }
}

#[derive(serde::Serialize)]
struct Endpoint {
    server: String,
    addr: String,
}

async fn endpoints(State(state): State<RegistryApi>) -> Result<Json<Vec<Endpoint>>, HttpError> {
    let list = state
        .store
        .read(Consistency::Stale, |v| {
            v.range_prefix(&pier_registry::cluster::ENDPOINTS, "")
                .map(|(k, e)| Endpoint {
                    server: k.to_string(),
                    addr: String::from_utf8_lossy(&e.value).into_owned(),
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(list))
}
