//! The catalog's own types, as the orchestrator, the agent and the gateway see them. Not
//! serialisable: the stored form is in [`crate::records`], the Consul JSON in [`crate::wire`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Health of a check. Ordered from best to worst, so the health of an instance is the `max`
/// of its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// Case-insensitive, as Consul clients send `Status` in any case.
    pub fn parse(s: &str) -> Option<CheckStatus> {
        match s.to_ascii_lowercase().as_str() {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Stable UUID, chosen at first registration.
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub zone: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, String>,
    /// Whether the leader's node monitor expects heartbeats from this node.
    pub monitored: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a caller supplies to register (or update) a node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeRegistration {
    pub name: String,
    pub address: String,
    pub zone: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, String>,
    /// True for nodes that run an agent which heartbeats (`Catalog::heartbeat`); their
    /// instances go critical when the heartbeats stop. False for external nodes.
    pub monitored: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One instance of a service on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub node: String,
    /// Empty when the instance uses its node's address.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a caller supplies to register an instance with its checks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InstanceRegistration {
    /// Defaults to the service name when empty.
    pub id: String,
    pub service: String,
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weights: Option<Weights>,
    pub enable_tag_override: bool,
    pub checks: Vec<CheckRegistration>,
}

/// How a check is evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// GET (or `method`) `url`: 2xx passing, 429 warning, anything else critical.
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, Vec<String>>,
        tls_skip_verify: bool,
        body: String,
    },
    /// A TCP connect to `address` (`host:port`).
    Tcp { address: String },
    /// Critical unless updated through the API within `ttl`.
    Ttl { ttl: Duration },
    /// Runs `args`: exit 0 passing, 1 warning, anything else critical.
    Script { args: Vec<String> },
    /// The node liveness check kept by the leader's node monitor.
    Heartbeat,
    /// Set only through the API; nothing runs it.
    Manual,
}

impl CheckKind {
    /// Consul's `Type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Script { .. } => "script",
            CheckKind::Heartbeat => "",
            CheckKind::Manual => "",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckDefinition {
    pub kind: CheckKind,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub deregister_critical_after: Option<Duration>,
    /// Consul's `SuccessBeforePassing`: consecutive passing results before the status turns
    /// passing (0, the default, behaves as 1: one result decides).
    pub success_before_passing: u32,
    /// Consul's `FailuresBeforeCritical`: consecutive critical results before the status turns
    /// critical (0, the default, behaves as 1).
    pub failures_before_critical: u32,
}

impl CheckDefinition {
    pub fn manual() -> CheckDefinition {
        CheckDefinition {
            kind: CheckKind::Manual,
            interval: None,
            timeout: None,
            deregister_critical_after: None,
            success_before_passing: 0,
            failures_before_critical: 0,
        }
    }
}

/// A check as stored: a node check when `service_id` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub node: String,
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub status: CheckStatus,
    pub output: String,
    pub notes: String,
    pub definition: CheckDefinition,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a caller supplies for a check of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRegistration {
    /// Defaults to `service:<instance-id>` (`service:<id>:<n>` when there are several).
    pub id: Option<String>,
    /// Defaults to `Service '<name>' check`.
    pub name: Option<String>,
    pub notes: String,
    /// Initial status; a new check starts critical unless given.
    pub status: Option<CheckStatus>,
    pub definition: CheckDefinition,
}

/// An instance with its node and every check that bears on it (its own and its node's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceHealth {
    pub node: Node,
    pub instance: Instance,
    pub checks: Vec<Check>,
}

impl InstanceHealth {
    /// The worst status of its checks; passing when it has none (as in Consul).
    pub fn status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }

    /// The address clients should use: the instance's, else its node's.
    pub fn address(&self) -> &str {
        if self.instance.address.is_empty() {
            &self.node.address
        } else {
            &self.instance.address
        }
    }
}

/// A KV entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A result with the index clients pass back to block for the next change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub index: u64,
    pub value: T,
}
