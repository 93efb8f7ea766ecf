//! Server side of the peer RPC port (axum): openraft RPCs plus the store's leader-directed calls.

use std::io::Cursor;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest};
use openraft::Snapshot;

use crate::store::Inner;
use crate::wire::{
    InfoReply, InfoRequest, LeaderReply, MemberWire, NodeId, PreVoteReply, PreVoteRequest,
    RemoveRequest, SnapshotWire, TxnResultWire, TxnWire, TypeConfig, FROM_ADDR_HEADER,
    TARGET_NODE_HEADER,
};

/// Snapshots and append batches can be large; a peer is trusted to send what Raft produced.
const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;

/// The raft RPCs. With `secure`, every route answers only callers whose certificate names a
/// server of this cluster (the TLS handshake has already refused certificates of any other CA).
pub(crate) fn router(inner: Arc<Inner>, secure: bool) -> Router {
    let router = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(write))
        .route("/raft/read-index", post(read_index))
        .route("/raft/join", post(join))
        .route("/raft/remove", post(remove))
        .route("/raft/prevote", post(prevote))
        .route("/raft/info", post(info).get(info_get))
        .layer(middleware::from_fn_with_state(inner.clone(), check_target));
    let router = if secure {
        router.layer(middleware::from_fn(servers_only))
    } else {
        router
    };
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

/// Refuses every caller that is not a server of the cluster, before anything is read.
async fn servers_only(req: Request, next: Next) -> Response {
    let caller = req
        .extensions()
        .get::<pier_net::Caller>()
        .and_then(|c| c.0.clone());
    match caller {
        Some(id) if id.role == pier_security::ca::Role::Server => next.run(req).await,
        Some(id) => (
            StatusCode::FORBIDDEN,
            format!("raft RPCs are for servers; this certificate names {id}"),
        )
            .into_response(),
        None => (
            StatusCode::FORBIDDEN,
            "raft RPCs need a server certificate of this cluster",
        )
            .into_response(),
    }
}

/// Every call but discovery (`/raft/info`) names the node it is meant for; a call meant for
/// another node (the old member whose address this process now has, after a wipe) is refused
/// before it reaches Raft, so it can neither change this server nor count toward a quorum.
async fn check_target(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let named = req
        .headers()
        .get(TARGET_NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    match named {
        Some(id) if id == inner.node_id() => next.run(req).await,
        None if req.uri().path() == "/raft/info" => next.run(req).await,
        Some(id) => {
            if let Some(from) = req
                .headers()
                .get(FROM_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                inner.hint_peer_addr(from);
            }
            (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this is node {} ({}), not node {id}: its data directory was replaced; remove the old member and let this server join",
                inner.node_id(),
                inner.self_member().name
            ),
        )
            .into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            format!("peer calls must name their target node in {TARGET_NODE_HEADER}"),
        )
            .into_response(),
    }
}

async fn append(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    let res = inner.raft.append_entries(req).await;
    // Only an append this server accepted is contact with its leader (a deposed leader's
    // appends are answered "higher vote" and prove nothing).
    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        inner.note_leader_contact();
    }
    Json(res)
}

async fn vote(State(inner): State<Arc<Inner>>, Json(req): Json<VoteRequest<NodeId>>) -> Response {
    if inner.votes_refused_now() {
        // A restarted server may have promised a leader not to vote (its lease); it keeps that
        // promise by not answering at all until the lease has surely run out.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "restarted moments ago: not voting until any lease given before the restart has expired",
        )
            .into_response();
    }
    Json(inner.raft.vote(req).await).into_response()
}

async fn prevote(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<PreVoteRequest>,
) -> Json<PreVoteReply> {
    Json(crate::liveness::grant_prevote(&inner, &req))
}

async fn snapshot(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<SnapshotWire>,
) -> Json<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>> {
    let snapshot = Snapshot {
        meta: req.meta,
        snapshot: Box::new(Cursor::new(req.data)),
    };
    let res = inner.raft.install_full_snapshot(req.vote, snapshot).await;
    if res.is_ok() {
        inner.note_leader_contact();
    }
    Json(res)
}

async fn write(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<TxnWire>,
) -> Json<LeaderReply<TxnResultWire>> {
    Json(inner.leader_write(req).await)
}

async fn read_index(State(inner): State<Arc<Inner>>) -> Json<LeaderReply<u64>> {
    Json(inner.leader_read_index().await)
}

async fn join(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<MemberWire>,
) -> Json<LeaderReply<()>> {
    Json(inner.leader_join(req).await)
}

async fn remove(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<RemoveRequest>,
) -> Json<LeaderReply<()>> {
    Json(inner.leader_remove(&req.name, req.force).await)
}

async fn info(State(inner): State<Arc<Inner>>, Json(req): Json<InfoRequest>) -> Json<InfoReply> {
    if let Some(caller) = req.caller {
        inner.note_peer(caller);
    }
    Json(inner.info().await)
}

async fn info_get(State(inner): State<Arc<Inner>>) -> Json<InfoReply> {
    Json(inner.info().await)
}
