//! `/v1/status/leader`, `/v1/status/peers`, and pier's heartbeat endpoint.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use super::{json_response, ApiResult, ApiState, FORWARDED_HEADER};
use crate::error::CatalogError;

/// The leader's raft address as `"host:port"`, or `""` when there is none (as Consul).
pub async fn leader(State(s): State<ApiState>) -> ApiResult {
    let status = s.catalog.store().status();
    let addr = status.leader.map(|l| l.raft_addr).unwrap_or_default();
    Ok(json_response(&s.catalog, 1, StatusCode::OK, &addr))
}

/// The raft addresses of the voting members.
pub async fn peers(State(s): State<ApiState>) -> ApiResult {
    let status = s.catalog.store().status();
    let peers: Vec<String> = status
        .members
        .into_iter()
        .filter(|m| m.voter)
        .map(|m| m.raft_addr)
        .collect();
    Ok(json_response(&s.catalog, 1, StatusCode::OK, &peers))
}

/// `PUT /api/v1/catalog/nodes/:node/heartbeat`: 200 when recorded by the leader (forwarded there from
/// a follower), 404 for an unknown node (register it first), 503 without a leader.
pub async fn heartbeat(
    State(s): State<ApiState>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let is_leader = s.catalog.store().status().is_leader;
    if !is_leader && headers.contains_key(FORWARDED_HEADER) {
        return Err(CatalogError::Forward {
            addr: String::new(),
            detail: "this server is not the leader (stale leader information); retry".into(),
        }
        .into());
    }
    s.catalog.heartbeat(&node).await?;
    Ok(StatusCode::OK.into_response())
}
