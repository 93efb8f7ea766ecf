//! Server side of the peer RPC port (axum): openraft RPCs plus the store's leader-directed calls.

use std::io::Cursor;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::Snapshot;

use crate::store::Inner;
use crate::wire::{
    InfoReply, InfoRequest, LeaderReply, MemberWire, NodeId, RemoveRequest, SnapshotWire,
    TxnResultWire, TxnWire, TypeConfig,
};

/// Snapshots and append batches can be large; a peer is trusted to send what Raft produced.
const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(write))
        .route("/raft/read-index", post(read_index))
        .route("/raft/join", post(join))
        .route("/raft/remove", post(remove))
        .route("/raft/info", post(info).get(info_get))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

async fn append(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    inner.note_leader_contact();
    Json(inner.raft.append_entries(req).await)
}

async fn vote(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(inner.raft.vote(req).await)
}

async fn snapshot(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<SnapshotWire>,
) -> Json<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>> {
    inner.note_leader_contact();
    let snapshot = Snapshot {
        meta: req.meta,
        snapshot: Box::new(Cursor::new(req.data)),
    };
    Json(inner.raft.install_full_snapshot(req.vote, snapshot).await)
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
    Json(inner.leader_remove(&req.name).await)
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
