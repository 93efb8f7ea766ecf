//! pier's own HTTP API (`/api/v1/...`) and `/metrics`. Handlers are thin: they
//! validate input, call the store, and map errors to JSON with the right status.

mod error;
mod json;
pub mod kv;
pub(crate) mod params;
pub mod registry;
pub mod snapshot;
mod status;
mod txn;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use pier_store::Store;

use crate::metrics::Metrics;

pub use error::HttpError;

/// Request bodies above this are refused with 413 unless a route says otherwise.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/status", get(status::get_status))
        .route("/api/v1/members", get(status::list_members))
        .route(
            "/api/v1/members/{name}",
            axum::routing::delete(status::remove_member),
        )
        .route("/api/v1/kv", get(kv::list_root))
        .route(
            "/api/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/api/v1/txn", post(txn::post_txn))
        .route("/api/v1/snapshot", get(snapshot::save))
        .route(
            "/api/v1/snapshot/restore",
            post(snapshot::restore)
                .layer(DefaultBodyLimit::max(snapshot::RESTORE_BODY_LIMIT_BYTES)),
        )
        .route("/metrics", get(crate::metrics::render))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_requests,
        ))
        .with_state(state)
}
