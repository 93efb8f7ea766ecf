//! The Consul-compatible HTTP API as an `axum::Router` ([`router`]), plus pier's node-scoped
//! endpoints for remote agents ([`nodes`]: register, report check status) and the heartbeat
//! endpoint `PUT /api/v1/catalog/nodes/:node/heartbeat`.
//!
//! Every read answers `X-Consul-Index` (also on 404), `X-Consul-KnownLeader` and
//! `X-Consul-LastContact`; blocking is done by [`crate::blocking`]. Errors are plain text like
//! Consul's (`400 Invalid wait time ...`), so Consul clients show them as they would Consul's.
//! ACL tokens (`X-Consul-Token`, `?token=`) are accepted and ignored: there are no ACLs yet.
//! `?dc=` is accepted and ignored: there is one datacenter.

mod agent;
mod health;
mod kv;
mod nodes;
mod params;
mod status;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use serde::Serialize;

use crate::agent::Agent;
use crate::catalog::Catalog;
use crate::error::CatalogError;

pub use params::{parse_query, Params};

/// Marks a heartbeat forwarded by a follower, so a server that is not the leader either
/// answers 503 instead of forwarding again.
pub const FORWARDED_HEADER: &str = "x-pier-forwarded";

/// Largest request body read (KV values above 512 KiB are refused with 400 after reading;
/// bodies above this get 413 without being read).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the handlers share: the catalog and the agent this server acts as for `/v1/agent/*`.
#[derive(Clone)]
pub struct ApiState {
    pub catalog: Catalog,
    pub agent: Agent,
}

/// The Consul-compatible API and the heartbeat endpoint. Merge it into the server's router.
pub fn router(catalog: Catalog, agent: Agent) -> Router {
    let state = ApiState { catalog, agent };
    Router::new()
        .route("/v1/catalog/services", get(health::catalog_services))
        .route("/v1/catalog/service/{name}", get(health::catalog_service))
        .route("/v1/catalog/nodes", get(health::catalog_nodes))
        .route("/v1/catalog/node/{node}", get(health::catalog_node))
        .route("/v1/catalog/datacenters", get(health::catalog_datacenters))
        .route("/v1/health/service/{name}", get(health::health_service))
        .route("/v1/health/state/{state}", get(health::health_state))
        .route("/v1/health/checks/{service}", get(health::health_checks))
        .route("/v1/health/node/{node}", get(health::health_node))
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/services", get(agent::agent_services))
        .route("/v1/agent/checks", get(agent::agent_checks))
        .route("/v1/agent/service/register", put(agent::service_register))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::service_deregister),
        )
        .route("/v1/agent/check/pass/{id}", put(agent::check_pass))
        .route("/v1/agent/check/warn/{id}", put(agent::check_warn))
        .route("/v1/agent/check/fail/{id}", put(agent::check_fail))
        .route("/v1/agent/check/update/{id}", put(agent::check_update))
        .route(
            "/v1/kv/{*key}",
            get(kv::kv_get).put(kv::kv_put).delete(kv::kv_delete),
        )
        .route("/v1/kv/", get(kv::kv_get_root).delete(kv::kv_delete_root))
        .route("/v1/kv", get(kv::kv_get_root).delete(kv::kv_delete_root))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route(
            "/api/v1/catalog/nodes/{node}/heartbeat",
            put(status::heartbeat),
        )
        .route("/api/v1/catalog/routes", get(health::route_claims))
        .route("/api/v1/catalog/nodes/{node}", put(nodes::register_node))
        .route(
            "/api/v1/catalog/nodes/{node}/services",
            put(nodes::register_service),
        )
        .route(
            "/api/v1/catalog/nodes/{node}/services/{id}",
            axum::routing::delete(nodes::deregister_service),
        )
        .route(
            "/api/v1/catalog/nodes/{node}/checks/{id}",
            put(nodes::update_check),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Maps a catalog error to Consul's plain-text error answers.
pub(crate) struct ApiError(pub CatalogError);

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use pier_store::StoreError;
        let status = match &self.0 {
            CatalogError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
            CatalogError::Conflict(_) => StatusCode::CONFLICT,
            CatalogError::Store(StoreError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
            CatalogError::Store(
                StoreError::NoLeader(_) | StoreError::Timeout(_) | StoreError::Shutdown,
            )
            | CatalogError::Forward { .. } => StatusCode::SERVICE_UNAVAILABLE,
            CatalogError::Store(_) | CatalogError::CorruptRecord { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "catalog API error");
        }
        let mut resp = (status, self.0.to_string()).into_response();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// The consistency headers every read carries.
pub(crate) fn consul_headers(catalog: &Catalog, index: u64) -> HeaderMap {
    // Not `status()`: that copies the membership, and a change answers thousands at once.
    let status = catalog.store().leader_contact();
    // Room for these three and the content type.
    let mut h = HeaderMap::with_capacity(4);
    let index = index.max(1);
    h.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index),
    );
    h.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static(if status.known_leader { "true" } else { "false" }),
    );
    let contact = if status.is_leader {
        0
    } else {
        status.last_contact_ms.unwrap_or(0)
    };
    h.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from(contact),
    );
    h
}

pub(crate) fn json_response<T: Serialize>(
    catalog: &Catalog,
    index: u64,
    status: StatusCode,
    body: &T,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    let mut headers = consul_headers(catalog, index);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, bytes).into_response()
}

/// A JSON answer from already encoded bytes (shared by every watcher of the same answer).
pub(crate) fn bytes_response(catalog: &Catalog, index: u64, body: Bytes) -> Response {
    let mut headers = consul_headers(catalog, index);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Built directly rather than through `IntoResponse` for a tuple, which would copy the
    // headers into a second map.
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.headers_mut() = headers;
    resp
}

/// A 404 with the index header, as Consul answers for a missing KV key or node.
pub(crate) fn not_found(catalog: &Catalog, index: u64) -> Response {
    (StatusCode::NOT_FOUND, consul_headers(catalog, index)).into_response()
}

/// Answers of writes: `true`/`false` as JSON.
pub(crate) fn bool_response(value: bool) -> Response {
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        if value { "true" } else { "false" },
    )
        .into_response()
}

/// Decodes a JSON body into a generic value; malformed JSON is a 400 like Consul's.
pub(crate) fn parse_json_body(body: &[u8]) -> Result<serde_json::Value, CatalogError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(body)
        .map_err(|e| CatalogError::bad(format!("Request decode failed: {e}")))
}
