//! Serialisable types: what goes into the Raft log, over the peer RPC port and into snapshots.
//! Public model types convert to and from these at the boundary.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::model::{Op, Table, Txn, TxnResult};

openraft::declare_raft_types!(
    /// openraft type configuration of the store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type RaftEntry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Node info kept in Raft membership, so every server can name every member's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}

/// A command in the Raft log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Txn(TxnWire),
    /// Concurrent transactions grouped into one entry by the leader (group commit). They touch
    /// disjoint keys, so each key changes at most once per entry and indexes stay unique per
    /// version.
    Batch(Vec<TxnWire>),
    /// Drop tombstones whose delete index is <= `up_to_index`; issued by the leader periodically.
    ReapTombstones {
        up_to_index: u64,
    },
}

/// What applying a log entry produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Txn(TxnResultWire),
    Batch(Vec<TxnResultWire>),
    Done,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxnWire {
    pub ops: Vec<OpWire>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OpWire {
    Put {
        table: String,
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    },
    Delete {
        table: String,
        key: String,
        cas: Option<u64>,
    },
    DeletePrefix {
        table: String,
        prefix: String,
    },
    Check {
        table: String,
        key: String,
        modify_index: u64,
    },
    LeaderTerm {
        term: u64,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TxnResultWire {
    pub index: u64,
    pub applied: bool,
    pub failed_op: Option<usize>,
}

impl From<TxnResultWire> for TxnResult {
    fn from(w: TxnResultWire) -> Self {
        TxnResult {
            index: w.index,
            applied: w.applied,
            failed_op: w.failed_op,
        }
    }
}

impl From<Txn> for TxnWire {
    fn from(txn: Txn) -> Self {
        let ops = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put {
                    table,
                    key,
                    value,
                    flags,
                    cas,
                } => OpWire::Put {
                    table: table_string(table),
                    key,
                    value,
                    flags,
                    cas,
                },
                Op::Delete { table, key, cas } => OpWire::Delete {
                    table: table_string(table),
                    key,
                    cas,
                },
                Op::DeletePrefix { table, prefix } => OpWire::DeletePrefix {
                    table: table_string(table),
                    prefix,
                },
                Op::Check {
                    table,
                    key,
                    modify_index,
                } => OpWire::Check {
                    table: table_string(table),
                    key,
                    modify_index,
                },
                Op::LeaderTerm { term } => OpWire::LeaderTerm { term },
            })
            .collect();
        TxnWire { ops }
    }
}

impl TxnWire {
    /// Forwarded writes arrive from the network: check them as `Store::write` does.
    pub fn into_txn(self) -> Result<Txn, crate::StoreError> {
        let mut ops = Vec::with_capacity(self.ops.len());
        for op in self.ops {
            ops.push(match op {
                OpWire::Put {
                    table,
                    key,
                    value,
                    flags,
                    cas,
                } => Op::Put {
                    table: Table::new(table)?,
                    key,
                    value,
                    flags,
                    cas,
                },
                OpWire::Delete { table, key, cas } => Op::Delete {
                    table: Table::new(table)?,
                    key,
                    cas,
                },
                OpWire::DeletePrefix { table, prefix } => Op::DeletePrefix {
                    table: Table::new(table)?,
                    prefix,
                },
                OpWire::Check {
                    table,
                    key,
                    modify_index,
                } => Op::Check {
                    table: Table::new(table)?,
                    key,
                    modify_index,
                },
                OpWire::LeaderTerm { term } => Op::LeaderTerm { term },
            });
        }
        Ok(Txn { ops })
    }
}

fn table_string(t: Table) -> String {
    t.as_str().to_string()
}

/// Member info as the peer RPC port reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberWire {
    pub id: u64,
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
}

/// `/raft/info` request body: who is asking (so discovery works in both directions).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InfoRequest {
    pub caller: Option<MemberWire>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InfoReply {
    pub id: u64,
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub initialized: bool,
    pub leader: Option<MemberWire>,
    /// Servers this one has heard of while forming a cluster.
    pub known: Vec<MemberWire>,
    /// Ids of every member (voters and learners) of the configuration this server follows, so
    /// a server that was removed can tell and ask to join again.
    #[serde(default)]
    pub members: Vec<u64>,
}

/// `/raft/prevote`: would the receiver vote for this candidate if it started an election now?
/// Asked before a server lets openraft campaign, so a server that cannot win (cut off, or
/// behind) never raises its term and never deposes a healthy leader when it comes back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's current term; the election would be for a higher one.
    pub term: u64,
    pub last_log: Option<LogId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreVoteReply {
    pub granted: bool,
}

/// The header every peer call carries with the node id it is meant for. A server refuses a
/// call meant for another id: after a data directory is wiped, the new process at the old
/// address must not answer (and be counted) as the old member.
pub const TARGET_NODE_HEADER: &str = "x-pier-target-node";

/// The raft address of the server making a peer call.
pub const FROM_ADDR_HEADER: &str = "x-pier-from";

/// Reply of the leader-only RPCs (`/raft/write`, `/raft/read-index`, `/raft/join`, `/raft/remove`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderReply<T> {
    Ok(T),
    /// This server is not the leader; `leader` is the one it knows of.
    NotLeader {
        leader: Option<MemberWire>,
    },
    /// The request itself is bad; retrying will not help.
    Invalid(String),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub name: String,
    /// Remove even when the voters left would have no reachable quorum.
    #[serde(default)]
    pub force: bool,
}

/// `/raft/snapshot` body: a whole snapshot in one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotWire {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// Bytes as base64 strings: JSON arrays of numbers would triple the size of every value.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
