//! How the catalog is laid out in the store: tables, keys, and the JSON of each record.
//!
//! | table | key | value |
//! |---|---|---|
//! | `nodes` | `<node>` | [`NodeRecord`] |
//! | `services` | `<service>/<node>/<instance-id>` | [`InstanceRecord`] |
//! | `checks` | `<service>/<node>/<instance-id>/<check-id>` (service checks) | [`CheckRecord`] |
//! | `checks` | `_node/<node>/<check-id>` (node checks) | [`CheckRecord`] |
//! | `catalog_instance_ids` | `<node>/<instance-id>` | the service name (UTF-8) |
//! | `catalog_check_ids` | `<node>/<check-id>` | the `checks` key (UTF-8) |
//! | `kv` | the Consul key | raw bytes; flags in the entry |
//!
//! Why this layout: everything about one service sits under the prefix `<service>/` in two
//! tables, so `health/service/web` reads two prefix ranges and watches exactly those (plus the
//! `_node/<node>/` prefixes and node keys of the nodes it runs on). A write to service `api`
//! never touches a key under `web/`, so watchers of `web` stay asleep. The `_node/` prefix
//! cannot collide with a service because service names must start with a letter or digit.
//! The two `*_ids` tables resolve the IDs the agent API addresses (`/v1/agent/check/pass/:id`)
//! without a scan; they are written in the same transaction as what they point to. The check
//! runner watches `catalog_check_ids/<node>/` to learn which checks to run; status updates do
//! not touch that table, so they do not wake it.
//!
//! Records are JSON so that a human can read them with `pier kv`-like tools and so that new
//! optional fields stay compatible (`#[serde(default)]`).

use std::collections::BTreeMap;
use std::time::Duration;

use pier_store::{Entry, Table};
use serde::{Deserialize, Serialize};

use crate::error::CatalogError;
use crate::model::{Check, CheckDefinition, CheckKind, CheckStatus, Instance, Node, Weights};

pub const INSTANCE_IDS: Table = Table::from_static("catalog_instance_ids");
pub const CHECK_IDS: Table = Table::from_static("catalog_check_ids");

/// Prefix of node-level checks in the `checks` table.
pub const NODE_CHECK_PREFIX: &str = "_node/";

/// The node liveness check written by the leader's node monitor.
pub const NODE_HEALTH_CHECK_ID: &str = "serfHealth";
pub const NODE_HEALTH_CHECK_NAME: &str = "Serf Health Status";

pub fn node_key(node: &str) -> String {
    node.to_string()
}

pub fn instance_key(service: &str, node: &str, id: &str) -> String {
    format!("{service}/{node}/{id}")
}

pub fn service_prefix(service: &str) -> String {
    format!("{service}/")
}

pub fn instance_checks_prefix(service: &str, node: &str, id: &str) -> String {
    format!("{service}/{node}/{id}/")
}

pub fn service_check_key(service: &str, node: &str, id: &str, check: &str) -> String {
    format!("{service}/{node}/{id}/{check}")
}

pub fn node_checks_prefix(node: &str) -> String {
    format!("{NODE_CHECK_PREFIX}{node}/")
}

pub fn node_check_key(node: &str, check: &str) -> String {
    format!("{NODE_CHECK_PREFIX}{node}/{check}")
}

pub fn id_key(node: &str, id: &str) -> String {
    format!("{node}/{id}")
}

pub fn node_ids_prefix(node: &str) -> String {
    format!("{node}/")
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default)]
    pub monitored: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub weight_passing: u32,
    #[serde(default = "one")]
    pub weight_warning: u32,
    #[serde(default)]
    pub enable_tag_override: bool,
}

fn one() -> u32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckKindRecord {
    Http {
        url: String,
        #[serde(default)]
        method: String,
        #[serde(default)]
        headers: BTreeMap<String, Vec<String>>,
        #[serde(default)]
        tls_skip_verify: bool,
        #[serde(default)]
        body: String,
    },
    Tcp {
        address: String,
    },
    Ttl {
        ttl_ms: u64,
    },
    Script {
        args: Vec<String>,
    },
    Heartbeat,
    Manual,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckDefinitionRecord {
    pub kind: CheckKindRecord,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub deregister_critical_after_ms: Option<u64>,
    #[serde(default)]
    pub success_before_passing: u32,
    #[serde(default)]
    pub failures_before_critical: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CheckRecord {
    pub id: String,
    pub name: String,
    pub node: String,
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub service_tags: Vec<String>,
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub notes: String,
    pub definition: CheckDefinitionRecord,
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

impl From<&CheckDefinition> for CheckDefinitionRecord {
    fn from(d: &CheckDefinition) -> Self {
        let kind = match &d.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                body,
            } => CheckKindRecord::Http {
                url: url.clone(),
                method: method.clone(),
                headers: headers.clone(),
                tls_skip_verify: *tls_skip_verify,
                body: body.clone(),
            },
            CheckKind::Tcp { address } => CheckKindRecord::Tcp {
                address: address.clone(),
            },
            CheckKind::Ttl { ttl } => CheckKindRecord::Ttl {
                ttl_ms: ttl.as_millis() as u64,
            },
            CheckKind::Script { args } => CheckKindRecord::Script { args: args.clone() },
            CheckKind::Heartbeat => CheckKindRecord::Heartbeat,
            CheckKind::Manual => CheckKindRecord::Manual,
        };
        CheckDefinitionRecord {
            kind,
            interval_ms: ms(d.interval),
            timeout_ms: ms(d.timeout),
            deregister_critical_after_ms: ms(d.deregister_critical_after),
            success_before_passing: d.success_before_passing,
            failures_before_critical: d.failures_before_critical,
        }
    }
}

impl From<&CheckDefinitionRecord> for CheckDefinition {
    fn from(r: &CheckDefinitionRecord) -> Self {
        let kind = match &r.kind {
            CheckKindRecord::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                body,
            } => CheckKind::Http {
                url: url.clone(),
                method: method.clone(),
                headers: headers.clone(),
                tls_skip_verify: *tls_skip_verify,
                body: body.clone(),
            },
            CheckKindRecord::Tcp { address } => CheckKind::Tcp {
                address: address.clone(),
            },
            CheckKindRecord::Ttl { ttl_ms } => CheckKind::Ttl {
                ttl: Duration::from_millis(*ttl_ms),
            },
            CheckKindRecord::Script { args } => CheckKind::Script { args: args.clone() },
            CheckKindRecord::Heartbeat => CheckKind::Heartbeat,
            CheckKindRecord::Manual => CheckKind::Manual,
        };
        CheckDefinition {
            kind,
            interval: r.interval_ms.map(Duration::from_millis),
            timeout: r.timeout_ms.map(Duration::from_millis),
            deregister_critical_after: r.deregister_critical_after_ms.map(Duration::from_millis),
            success_before_passing: r.success_before_passing,
            failures_before_critical: r.failures_before_critical,
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(
    table: &Table,
    key: &str,
    bytes: &'a [u8],
) -> Result<T, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| CatalogError::CorruptRecord {
        table: table.to_string(),
        key: key.to_string(),
        detail: e.to_string(),
    })
}

pub fn decode_node_record(key: &str, entry: &Entry) -> Result<NodeRecord, CatalogError> {
    decode(&Table::NODES, key, &entry.value)
}

pub fn decode_node(key: &str, entry: &Entry) -> Result<Node, CatalogError> {
    let r = decode_node_record(key, entry)?;
    Ok(Node {
        id: r.id,
        name: r.name,
        address: r.address,
        datacenter: r.datacenter,
        zone: r.zone,
        meta: r.meta,
        tagged_addresses: r.tagged_addresses,
        monitored: r.monitored,
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    })
}

pub fn instance_record(i: &Instance) -> InstanceRecord {
    InstanceRecord {
        id: i.id.clone(),
        service: i.service.clone(),
        node: i.node.clone(),
        address: i.address.clone(),
        port: i.port,
        tags: i.tags.clone(),
        meta: i.meta.clone(),
        weight_passing: i.weights.passing,
        weight_warning: i.weights.warning,
        enable_tag_override: i.enable_tag_override,
    }
}

pub fn decode_instance(key: &str, entry: &Entry) -> Result<Instance, CatalogError> {
    let r: InstanceRecord = decode(&Table::SERVICES, key, &entry.value)?;
    Ok(Instance {
        id: r.id,
        service: r.service,
        node: r.node,
        address: r.address,
        port: r.port,
        tags: r.tags,
        meta: r.meta,
        weights: Weights {
            passing: r.weight_passing,
            warning: r.weight_warning,
        },
        enable_tag_override: r.enable_tag_override,
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    })
}

pub fn check_record(c: &Check) -> CheckRecord {
    CheckRecord {
        id: c.id.clone(),
        name: c.name.clone(),
        node: c.node.clone(),
        service_id: c.service_id.clone(),
        service_name: c.service_name.clone(),
        service_tags: c.service_tags.clone(),
        status: c.status.as_str().to_string(),
        output: c.output.clone(),
        notes: c.notes.clone(),
        definition: (&c.definition).into(),
    }
}

pub fn decode_check(key: &str, entry: &Entry) -> Result<Check, CatalogError> {
    let r: CheckRecord = decode(&Table::CHECKS, key, &entry.value)?;
    let status = CheckStatus::parse(&r.status).ok_or_else(|| CatalogError::CorruptRecord {
        table: Table::CHECKS.to_string(),
        key: key.to_string(),
        detail: format!("unknown status {:?}", r.status),
    })?;
    Ok(Check {
        id: r.id,
        name: r.name,
        node: r.node,
        service_id: r.service_id,
        service_name: r.service_name,
        service_tags: r.service_tags,
        status,
        output: r.output,
        notes: r.notes,
        definition: (&r.definition).into(),
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    })
}

/// The `checks` key a check lives under.
pub fn check_key(c: &Check) -> String {
    if c.service_id.is_empty() {
        node_check_key(&c.node, &c.id)
    } else {
        service_check_key(&c.service_name, &c.node, &c.service_id, &c.id)
    }
}
