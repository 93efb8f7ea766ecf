//! Client side of the peer RPC port: openraft's network over HTTP/JSON, and the store's own
//! leader-directed calls. Every request has a timeout so a dead peer never blocks anything.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use crate::liveness::QuorumAcks;
use crate::wire::{
    NodeId, NodeInfo, SnapshotWire, TypeConfig, Vote, FROM_ADDR_HEADER, TARGET_NODE_HEADER,
};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest append request (approximate encoded bytes) sent at once. openraft gives every
/// append one heartbeat interval to be sent, stored (fsync) and answered; a follower far
/// behind is caught up in pieces small enough for that, never with a request that times out
/// and is retried unchanged forever.
const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Keeps the longest prefix of `rpc.entries` (at least one entry) within `budget` encoded
/// bytes. Returns the log id of the last entry kept when entries were dropped.
fn cap_payload(
    mut rpc: AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> (AppendEntriesRequest<TypeConfig>, Option<crate::wire::LogId>) {
    let mut used = 0usize;
    let mut keep = 0usize;
    for e in &rpc.entries {
        used = used.saturating_add(approx_encoded_bytes(e));
        if keep > 0 && used > budget {
            break;
        }
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    debug_assert!(last.is_some(), "a capped append keeps at least one entry");
    (rpc, last)
}

/// Encoded size of an entry, close enough for budgeting (values travel base64: 4/3).
fn approx_encoded_bytes(e: &crate::wire::RaftEntry) -> usize {
    use crate::wire::{OpWire, Request};
    use openraft::EntryPayload;
    let txn_bytes = |t: &crate::wire::TxnWire| -> usize {
        t.ops
            .iter()
            .map(|op| match op {
                OpWire::Put { key, value, .. } => 96 + key.len() + value.len() * 4 / 3,
                OpWire::Delete { key, .. } | OpWire::Check { key, .. } => 80 + key.len(),
                OpWire::DeletePrefix { prefix, .. } => 80 + prefix.len(),
                OpWire::LeaderTerm { .. } => 32,
            })
            .sum()
    };
    128 + match &e.payload {
        EntryPayload::Normal(Request::Txn(t)) => txn_bytes(t),
        EntryPayload::Normal(Request::Batch(ts)) => ts.iter().map(txn_bytes).sum(),
        EntryPayload::Normal(Request::ReapTombstones { .. }) | EntryPayload::Blank => 0,
        EntryPayload::Membership(m) => 256 * m.nodes().count(),
    }
}

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
    http: pier_net::HttpClient,
    /// This server's advertised raft address, sent with every call so that a server that has
    /// lost its state (and is refused as the old member) can find the cluster again.
    self_addr: String,
}

impl PeerClient {
    /// With `tls`, every call is HTTPS and presents this server's certificate (mTLS).
    pub fn new(
        self_addr: String,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<PeerClient, reqwest::Error> {
        let http = pier_net::HttpClient::new(
            |b| {
                b.connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(30))
            },
            tls,
        )?;
        Ok(PeerClient { http, self_addr })
    }

    /// Replaces the TLS identity of later calls (a renewed certificate, a rotated CA).
    pub fn set_tls(&self, tls: rustls::ClientConfig) -> Result<(), reqwest::Error> {
        self.http.set_tls(tls)
    }

    /// POSTs `body` to `path` on the peer at `addr`. `target` is the node id the call is meant
    /// for (None only for discovery, when the id is not known yet); the peer refuses the call
    /// if it is not that node.
    pub async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
        target: Option<NodeId>,
    ) -> Result<Resp, CallError> {
        let url = format!("{}://{addr}{path}", self.http.scheme());
        let bytes = serde_json::to_vec(body)
            .map_err(|e| CallError::Other(format!("encode {path}: {e}")))?;
        let mut req = self
            .http
            .get()
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(FROM_ADDR_HEADER, &self.self_addr);
        if let Some(id) = target {
            req = req.header(TARGET_NODE_HEADER, id.to_string());
        }
        let resp = req
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
    pub acks: Arc<QuorumAcks>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConn {
        PeerConn {
            client: self.client.clone(),
            self_id: self.self_id,
            target,
            addr: node.raft_addr.clone(),
            acks: self.acks.clone(),
        }
    }
}

pub(crate) struct PeerConn {
    client: PeerClient,
    self_id: NodeId,
    target: NodeId,
    addr: String,
    acks: Arc<QuorumAcks>,
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
        let sent = Instant::now();
        let (term, leader_vote) = (rpc.vote.leader_id().term, rpc.vote.is_committed());
        self.acks
            .record_commit_sent(rpc.leader_commit.map(|l| l.index));
        let (rpc, truncated_at) = cap_payload(rpc, MAX_APPEND_BYTES);
        let res: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .client
            .call(&self.addr, "/raft/append", &rpc, ttl, Some(self.target))
            .await
            .map_err(|e| self.rpc_err(RPCTypes::AppendEntries, ttl, e))?;
        let mut resp = res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        if let (AppendEntriesResponse::Success, Some(last_sent)) = (&resp, truncated_at) {
            // Only a prefix went out: tell openraft how far the follower now matches.
            resp = AppendEntriesResponse::PartialSuccess(Some(last_sent));
        }
        // Any answer but "higher vote" means the follower accepted this leader at `sent`.
        if leader_vote && !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.acks.record(self.target, term, sent);
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let ttl = option.hard_ttl();
        let res: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .client
            .call(&self.addr, "/raft/vote", &rpc, ttl, Some(self.target))
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
        self.acks
            .record_commit_sent(snapshot.meta.last_log_id.map(|l| l.index));
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
                Some(self.target),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{OpWire, RaftEntry, Request, TxnWire};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn put_entry(index: u64, value_bytes: usize) -> RaftEntry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Request::Txn(TxnWire {
                ops: vec![OpWire::Put {
                    table: "kv".into(),
                    key: format!("k{index}"),
                    value: vec![b'x'; value_bytes],
                    flags: 0,
                    cas: None,
                }],
            })),
        }
    }

    fn request(entries: Vec<RaftEntry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 0),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn large_appends_are_sent_in_pieces_and_small_ones_whole() {
        // 20 entries of 100 KB: about 2.7 MB encoded, over the 1 MiB budget.
        let big = request((1..=20).map(|i| put_entry(i, 100_000)).collect());
        let (sent, last) = cap_payload(big, MAX_APPEND_BYTES);
        assert!(sent.entries.len() < 20 && !sent.entries.is_empty());
        assert_eq!(last, sent.entries.last().map(|e| e.log_id));
        let encoded = serde_json::to_vec(&sent).unwrap().len();
        assert!(encoded <= MAX_APPEND_BYTES + 200_000, "{encoded} bytes");

        let small = request((1..=300).map(|i| put_entry(i, 100)).collect());
        let (sent, last) = cap_payload(small, MAX_APPEND_BYTES);
        assert_eq!((sent.entries.len(), last), (300, None));

        // A single entry over the budget still goes (alone).
        let huge = request(vec![put_entry(1, 2_000_000), put_entry(2, 10)]);
        let (sent, last) = cap_payload(huge, MAX_APPEND_BYTES);
        assert_eq!(sent.entries.len(), 1);
        assert_eq!(last.map(|l| l.index), Some(1));
    }
}
