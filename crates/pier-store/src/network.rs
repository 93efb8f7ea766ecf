//! Client side of the peer RPC port: openraft's network over HTTP/JSON, and the store's own
//! leader-directed calls. Every request has a timeout so a dead peer never blocks anything.

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes, RaftNetwork, RaftNetworkFactory, Snapshot};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{NodeId, NodeInfo, SnapshotWire, TypeConfig, Vote};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a peer call failed, in the terms callers decide on.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing reached the peer (connect failed): safe to retry anywhere.
    Unreachable(String),
    /// The call timed out; it may or may not have taken effect.
    Timeout(String),
    /// Any other failure after the request was sent.
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(s) | CallError::Timeout(s) | CallError::Other(s) => {
                f.write_str(s)
            }
        }
    }
}

impl std::error::Error for CallError {}

#[derive(Clone)]
pub(crate) struct PeerClient {
    http: reqwest::Client,
}

impl PeerClient {
    pub fn new() -> Result<PeerClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(PeerClient { http })
    }

    pub async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let url = format!("http://{addr}{path}");
        let bytes = serde_json::to_vec(body)
            .map_err(|e| CallError::Other(format!("encode {path}: {e}")))?;
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(&url, e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| classify(&url, e))?;
        if !status.is_success() {
            return Err(CallError::Other(format!(
                "{url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Other(format!("{url}: bad reply: {e}")))
    }
}

fn classify(url: &str, e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Unreachable(format!("{url}: {e}"))
    } else if e.is_timeout() {
        CallError::Timeout(format!("{url}: {e}"))
    } else {
        CallError::Other(format!("{url}: {e}"))
    }
}

pub(crate) struct NetworkFactory {
    pub client: PeerClient,
    pub self_id: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConn {
        PeerConn {
            client: self.client.clone(),
            self_id: self.self_id,
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

pub(crate) struct PeerConn {
    client: PeerClient,
    self_id: NodeId,
    target: NodeId,
    addr: String,
}

impl PeerConn {
    fn rpc_err<E: std::error::Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        e: CallError,
    ) -> RPCError<NodeId, NodeInfo, E> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.self_id,
                target: self.target,
                timeout,
            }),
            CallError::Other(_) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        let res: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .client
            .call(&self.addr, "/raft/append", &rpc, ttl)
            .await
            .map_err(|e| self.rpc_err(RPCTypes::AppendEntries, ttl, e))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        let res: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .client
            .call(&self.addr, "/raft/vote", &rpc, ttl)
            .await
            .map_err(|e| self.rpc_err(RPCTypes::Vote, ttl, e))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let ttl = option.hard_ttl();
        let body = SnapshotWire {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let call = self
            .client
            .call::<_, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(
                &self.addr,
                "/raft/snapshot",
                &body,
                ttl,
            );
        let res = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            res = call => res,
        };
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(e @ CallError::Unreachable(_)) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(CallError::Timeout(_)) => Err(StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: self.self_id,
                target: self.target,
                timeout: ttl,
            })),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> Backoff {
        // A dead peer is retried every 200 ms: quick to notice its return, cheap while it is gone.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
