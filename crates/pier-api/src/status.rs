//! `GET /api/v1/status`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
    /// False for a learner still catching up.
    #[serde(default)]
    pub voter: bool,
}

/// `GET /api/v1/members`: the raft configuration as this server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    pub leader: Option<u64>,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub node_name: String,
    pub node_id: u64,
    pub is_leader: bool,
    pub leader: Option<Member>,
    pub members: Vec<Member>,
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    pub commit_index: u64,
    pub last_contact_ms: Option<u64>,
    pub version: String,
}
