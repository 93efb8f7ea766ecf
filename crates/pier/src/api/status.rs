//! `GET /api/v1/status`: the health of this server and its view of the cluster.

use axum::extract::State;
use axum::Json;
use pier_api::status::{Member, StatusResponse};

use super::AppState;

pub async fn get_status(State(state): State<AppState>) -> Json<StatusResponse> {
    let s = state.store.status();
    let member = |m: &pier_store::MemberInfo| Member {
        id: m.id,
        name: m.name.clone(),
        raft_addr: m.raft_addr.to_string(),
        http_addr: m.http_addr.clone(),
    };
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
