//! `GET /api/v1/status`: the health of this server and its view of the cluster.

use axum::extract::{Path, Query, State};
use axum::Json;
use pier_api::status::{Member, MembersResponse, StatusResponse};
use serde::Deserialize;

use super::{AppState, HttpError};

fn member(m: &pier_store::MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        raft_addr: m.raft_addr.to_string(),
        http_addr: m.http_addr.clone(),
        voter: m.voter,
    }
}

/// `GET /api/v1/members`.
pub async fn list_members(State(state): State<AppState>) -> Json<MembersResponse> {
    let s = state.store.status();
    Json(MembersResponse {
        leader: s.leader.as_ref().map(|l| l.id),
        members: s.members.iter().map(member).collect(),
    })
}

#[derive(Deserialize)]
pub struct RemoveParams {
    #[serde(default)]
    force: bool,
}

/// `DELETE /api/v1/members/{name}[?force=true]`: removes a server from the raft configuration
/// (forwarded to the leader). Refused when the voters left would have no reachable quorum,
/// unless forced.
pub async fn remove_member(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<RemoveParams>,
) -> Result<Json<MembersResponse>, HttpError> {
    state.store.remove_member(&name, params.force).await?;
    Ok(list_members(State(state)).await)
}

pub async fn get_status(State(state): State<AppState>) -> Json<StatusResponse> {
    let s = state.store.status();
    Json(StatusResponse {
        node_name: s.node_name.clone(),
        node_id: s.node_id,
        is_leader: s.is_leader,
        leader: s.leader.as_ref().map(member),
        members: s.members.iter().map(member).collect(),
        term: s.term,
        last_log_index: s.last_log_index,
        last_applied_index: s.last_applied_index,
        commit_index: s.commit_index,
        last_contact_ms: s.last_contact_ms,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
