//! Consul's JSON, field for field, at the HTTP boundary only.
//!
//! Requests: Consul decodes field names case-insensitively and accepts snake_case aliases
//! (python-consul sends `name`, `id`, `checks`, `http`, `DeregisterCriticalServiceAfter`,
//! `tls_skip_verify`). [`canonicalize_service`] rewrites the keys of the known objects (the
//! service, its `Check`/`Checks`, `Weights`) to their canonical spelling before typed
//! decoding; maps whose keys are user data (`Meta`, `TaggedAddresses`, `Header`) are left
//! untouched. Durations arrive as Go duration strings or as integers of nanoseconds.
//!
//! Responses: the exact field names of Consul's API, so that Prometheus, fabio,
//! consul-template, Traefik and the official clients decode them.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::{format_go_duration, parse_go_duration};
use crate::error::CatalogError;
use crate::model::{
    Check, CheckDefinition, CheckKind, CheckRegistration, CheckStatus, Instance,
    InstanceRegistration, KvEntry, Node, Weights,
};

// ------------------------------------------------------------------ key canonicalisation

#[derive(Clone, Copy)]
enum Child {
    /// Leave the value as it is (scalars, lists, and maps of user data).
    Opaque,
    Check,
    Checks,
    Weights,
}

const SERVICE_FIELDS: &[(&str, Child)] = &[
    ("ID", Child::Opaque),
    ("Name", Child::Opaque),
    ("Tags", Child::Opaque),
    ("Address", Child::Opaque),
    ("Port", Child::Opaque),
    ("Meta", Child::Opaque),
    ("Check", Child::Check),
    ("Checks", Child::Checks),
    ("Weights", Child::Weights),
    ("EnableTagOverride", Child::Opaque),
    ("TaggedAddresses", Child::Opaque),
    ("Kind", Child::Opaque),
    ("Proxy", Child::Opaque),
    ("Connect", Child::Opaque),
    ("Namespace", Child::Opaque),
];

const CHECK_FIELDS: &[&str] = &[
    "CheckID",
    "ID",
    "Name",
    "Notes",
    "Status",
    "Output",
    "ServiceID",
    "HTTP",
    "Method",
    "Header",
    "Body",
    "TLSSkipVerify",
    "TLSServerName",
    "TCP",
    "TTL",
    "Args",
    "ScriptArgs",
    "Script",
    "Interval",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "GRPC",
    "GRPCUseTLS",
    "DockerContainerID",
    "Shell",
    "H2PING",
    "H2PingUseTLS",
    "UDP",
    "OSService",
    "AliasNode",
    "AliasService",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
];

const WEIGHTS_FIELDS: &[&str] = &["Passing", "Warning"];

fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn canonical<'a>(key: &str, fields: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let folded = fold(key);
    fields.into_iter().find(|f| fold(f) == folded)
}

fn canonicalize_object(value: &mut Value, fields: &[(&str, Child)]) {
    let Value::Object(map) = value else { return };
    let old = std::mem::take(map);
    for (key, mut v) in old {
        match canonical(&key, fields.iter().map(|(f, _)| *f)) {
            Some(name) => {
                let child = fields
                    .iter()
                    .find(|(f, _)| *f == name)
                    .map(|(_, c)| *c)
                    .unwrap_or(Child::Opaque);
                match child {
                    Child::Opaque => {}
                    Child::Check => canonicalize_check(&mut v),
                    Child::Checks => {
                        if let Value::Array(items) = &mut v {
                            items.iter_mut().for_each(canonicalize_check);
                        }
                    }
                    Child::Weights => {
                        let wf: Vec<(&str, Child)> =
                            WEIGHTS_FIELDS.iter().map(|f| (*f, Child::Opaque)).collect();
                        canonicalize_object(&mut v, &wf);
                    }
                }
                map.insert(name.to_string(), v);
            }
            None => {
                map.insert(key, v);
            }
        }
    }
}

fn canonicalize_check(value: &mut Value) {
    let fields: Vec<(&str, Child)> = CHECK_FIELDS.iter().map(|f| (*f, Child::Opaque)).collect();
    canonicalize_object(value, &fields);
}

/// Rewrites the keys of a service registration body to Consul's canonical spelling.
pub fn canonicalize_service(value: &mut Value) {
    canonicalize_object(value, SERVICE_FIELDS);
}

/// Rewrites the keys of a check update body (`{Status, Output}`).
pub fn canonicalize_check_update(value: &mut Value) {
    let fields = [("Status", Child::Opaque), ("Output", Child::Opaque)];
    canonicalize_object(value, &fields);
}

// ------------------------------------------------------------------ requests

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegisterIn {
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub check: Option<CheckIn>,
    #[serde(default)]
    pub checks: Option<Vec<CheckIn>>,
    #[serde(default)]
    pub weights: Option<WeightsIn>,
    #[serde(default)]
    pub enable_tag_override: Option<bool>,
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsIn {
    #[serde(default)]
    pub passing: Option<u32>,
    #[serde(default)]
    pub warning: Option<u32>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct CheckIn {
    #[serde(rename = "CheckID", default)]
    pub check_id: Option<String>,
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(rename = "HTTP", default)]
    pub http: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(rename = "TLSSkipVerify", default)]
    pub tls_skip_verify: Option<bool>,
    #[serde(rename = "TCP", default)]
    pub tcp: Option<String>,
    #[serde(rename = "TTL", default)]
    pub ttl: Option<Value>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub script_args: Option<Vec<String>>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub interval: Option<Value>,
    #[serde(default)]
    pub timeout: Option<Value>,
    #[serde(default)]
    pub deregister_critical_service_after: Option<Value>,
    #[serde(default)]
    pub success_before_passing: Option<u32>,
    #[serde(default)]
    pub failures_before_critical: Option<u32>,
    #[serde(rename = "GRPC", default)]
    pub grpc: Option<Value>,
    #[serde(rename = "DockerContainerID", default)]
    pub docker_container_id: Option<Value>,
    #[serde(rename = "H2PING", default)]
    pub h2ping: Option<Value>,
    #[serde(rename = "UDP", default)]
    pub udp: Option<Value>,
    #[serde(rename = "OSService", default)]
    pub os_service: Option<Value>,
    #[serde(default)]
    pub alias_service: Option<Value>,
    #[serde(default)]
    pub alias_node: Option<Value>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CheckUpdateIn {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

fn duration_field(name: &str, v: &Option<Value>) -> Result<Option<Duration>, CatalogError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .map_err(|e| CatalogError::bad(format!("Invalid {name}: {e}"))),
        // Go's encoding of time.Duration: integer nanoseconds.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ns| Some(Duration::from_nanos(ns)))
            .ok_or_else(|| {
                CatalogError::bad(format!("Invalid {name}: {n} is not a non-negative integer"))
            }),
        Some(other) => Err(CatalogError::bad(format!(
            "Invalid {name}: {other} is not a duration"
        ))),
    }
}

impl CheckIn {
    /// The check registration this describes, or a 400 for an unknown or missing type.
    pub fn to_registration(&self) -> Result<CheckRegistration, CatalogError> {
        let unsupported = [
            ("GRPC", self.grpc.is_some()),
            ("DockerContainerID", self.docker_container_id.is_some()),
            ("H2PING", self.h2ping.is_some()),
            ("UDP", self.udp.is_some()),
            ("OSService", self.os_service.is_some()),
            (
                "AliasService",
                self.alias_service.is_some() || self.alias_node.is_some(),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, present)| *present) {
            return Err(CatalogError::bad(format!(
                "Invalid check: {name} checks are not supported (use HTTP, TCP, TTL or Args)"
            )));
        }
        let interval = duration_field("Interval", &self.interval)?;
        let timeout = duration_field("Timeout", &self.timeout)?;
        let deregister = duration_field(
            "DeregisterCriticalServiceAfter",
            &self.deregister_critical_service_after,
        )?;
        let ttl = duration_field("TTL", &self.ttl)?;
        let args = self
            .args
            .clone()
            .or_else(|| self.script_args.clone())
            .or_else(|| {
                self.script
                    .as_ref()
                    .map(|s| vec!["sh".into(), "-c".into(), s.clone()])
            });
        let kinds = [
            self.http.is_some(),
            self.tcp.is_some(),
            ttl.is_some(),
            args.is_some(),
        ];
        let count = kinds.iter().filter(|k| **k).count();
        if count == 0 {
            return Err(CatalogError::bad(
                "Invalid check: one of HTTP, TCP, TTL or Args (script) is required",
            ));
        }
        if count > 1 {
            return Err(CatalogError::bad(
                "Invalid check: give only one of HTTP, TCP, TTL or Args (script)",
            ));
        }
        let kind = if let Some(url) = &self.http {
            CheckKind::Http {
                url: url.clone(),
                method: self
                    .method
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "GET".into()),
                headers: self.header.clone().unwrap_or_default(),
                tls_skip_verify: self.tls_skip_verify.unwrap_or(false),
                body: self.body.clone().unwrap_or_default(),
            }
        } else if let Some(address) = &self.tcp {
            CheckKind::Tcp {
                address: address.clone(),
            }
        } else if let Some(ttl) = ttl {
            CheckKind::Ttl { ttl }
        } else {
            CheckKind::Script {
                args: args.unwrap_or_default(),
            }
        };
        let status = match &self.status {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(
                CheckStatus::parse(s)
                    .ok_or_else(|| CatalogError::bad(format!("Invalid check status {s:?}")))?,
            ),
        };
        Ok(CheckRegistration {
            id: self
                .check_id
                .clone()
                .or_else(|| self.id.clone())
                .filter(|s| !s.is_empty()),
            name: self.name.clone(),
            notes: self.notes.clone().unwrap_or_default(),
            status,
            definition: CheckDefinition {
                kind,
                interval,
                timeout,
                deregister_critical_after: deregister,
                success_before_passing: self.success_before_passing.unwrap_or(0),
                failures_before_critical: self.failures_before_critical.unwrap_or(0),
            },
        })
    }
}

impl ServiceRegisterIn {
    pub fn to_registration(&self, node: &str) -> Result<InstanceRegistration, CatalogError> {
        let name = self
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CatalogError::bad("Missing service name"))?;
        if let Some(kind) = self.kind.as_deref().filter(|k| !k.is_empty()) {
            return Err(CatalogError::bad(format!(
                "Invalid service Kind {kind:?}: only typical services are supported"
            )));
        }
        let mut checks = Vec::new();
        if let Some(c) = &self.check {
            checks.push(c.to_registration()?);
        }
        for c in self.checks.iter().flatten() {
            checks.push(c.to_registration()?);
        }
        Ok(InstanceRegistration {
            id: self
                .id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| name.clone()),
            service: name,
            node: node.to_string(),
            address: self.address.clone().unwrap_or_default(),
            port: self.port.unwrap_or(0),
            tags: self.tags.clone().unwrap_or_default(),
            meta: self.meta.clone().unwrap_or_default(),
            weights: self.weights.map(|w| Weights {
                passing: w.passing.unwrap_or(1),
                warning: w.warning.unwrap_or(1),
            }),
            enable_tag_override: self.enable_tag_override.unwrap_or(false),
            checks,
        })
    }
}

// ------------------------------------------------------------------ responses

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsOut {
    pub passing: u32,
    pub warning: u32,
}

impl From<Weights> for WeightsOut {
    fn from(w: Weights) -> Self {
        WeightsOut {
            passing: w.passing,
            warning: w.warning,
        }
    }
}

fn tagged_addresses(node: &Node) -> BTreeMap<String, String> {
    let mut out = node.tagged_addresses.clone();
    for k in ["lan", "lan_ipv4", "wan", "wan_ipv4"] {
        out.entry(k.to_string())
            .or_insert_with(|| node.address.clone());
    }
    out
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct NodeOut {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl From<&Node> for NodeOut {
    fn from(n: &Node) -> Self {
        let mut meta = n.meta.clone();
        if let Some(zone) = &n.zone {
            meta.entry("zone".into()).or_insert_with(|| zone.clone());
        }
        NodeOut {
            id: n.id.clone(),
            node: n.name.clone(),
            address: n.address.clone(),
            datacenter: n.datacenter.clone(),
            tagged_addresses: tagged_addresses(n),
            meta,
            create_index: n.create_index,
            modify_index: n.modify_index,
        }
    }
}

/// `Service` in health answers and the values of `/v1/agent/services`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceOut {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: WeightsOut,
    pub enable_tag_override: bool,
    pub datacenter: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl ServiceOut {
    pub fn new(i: &Instance, datacenter: &str) -> Self {
        ServiceOut {
            id: i.id.clone(),
            service: i.service.clone(),
            tags: i.tags.clone(),
            address: i.address.clone(),
            port: i.port,
            meta: i.meta.clone(),
            weights: i.weights.into(),
            enable_tag_override: i.enable_tag_override,
            datacenter: datacenter.to_string(),
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinitionOut {
    #[serde(rename = "HTTP", skip_serializing_if = "String::is_empty")]
    pub http: String,
    #[serde(rename = "TCP", skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script_args: Vec<String>,
    #[serde(rename = "TTL", skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    pub interval: String,
    pub timeout: String,
    pub deregister_critical_service_after: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CheckOut {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub r#type: String,
    pub interval: String,
    pub timeout: String,
    pub definition: CheckDefinitionOut,
    pub create_index: u64,
    pub modify_index: u64,
}

fn dur(d: Option<Duration>) -> String {
    d.map(format_go_duration).unwrap_or_else(|| "0s".into())
}

impl From<&Check> for CheckOut {
    fn from(c: &Check) -> Self {
        let d = &c.definition;
        let (http, tcp, script_args, ttl) = match &d.kind {
            CheckKind::Http { url, .. } => (url.clone(), String::new(), Vec::new(), String::new()),
            CheckKind::Tcp { address } => {
                (String::new(), address.clone(), Vec::new(), String::new())
            }
            CheckKind::Script { args } => {
                (String::new(), String::new(), args.clone(), String::new())
            }
            CheckKind::Ttl { ttl } => (
                String::new(),
                String::new(),
                Vec::new(),
                format_go_duration(*ttl),
            ),
            CheckKind::Heartbeat | CheckKind::Manual => Default::default(),
        };
        CheckOut {
            node: c.node.clone(),
            check_id: c.id.clone(),
            name: c.name.clone(),
            status: c.status.as_str().to_string(),
            notes: c.notes.clone(),
            output: c.output.clone(),
            service_id: c.service_id.clone(),
            service_name: c.service_name.clone(),
            service_tags: c.service_tags.clone(),
            r#type: d.kind.type_name().to_string(),
            interval: if d.interval.is_some() {
                dur(d.interval)
            } else {
                String::new()
            },
            timeout: if d.timeout.is_some() {
                dur(d.timeout)
            } else {
                String::new()
            },
            definition: CheckDefinitionOut {
                http,
                tcp,
                script_args,
                ttl,
                interval: dur(d.interval),
                timeout: dur(d.timeout),
                deregister_critical_service_after: dur(d.deregister_critical_after),
            },
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct HealthServiceOut {
    pub node: NodeOut,
    pub service: ServiceOut,
    pub checks: Vec<CheckOut>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogServiceOut {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_kind: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub service_address: String,
    pub service_port: u16,
    pub service_meta: BTreeMap<String, String>,
    pub service_weights: WeightsOut,
    pub service_enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

impl CatalogServiceOut {
    pub fn new(node: &Node, i: &Instance) -> Self {
        let n = NodeOut::from(node);
        CatalogServiceOut {
            id: n.id,
            node: n.node,
            address: n.address,
            datacenter: n.datacenter,
            tagged_addresses: n.tagged_addresses,
            node_meta: n.meta,
            service_kind: String::new(),
            service_id: i.id.clone(),
            service_name: i.service.clone(),
            service_tags: i.tags.clone(),
            service_address: i.address.clone(),
            service_port: i.port,
            service_meta: i.meta.clone(),
            service_weights: i.weights.into(),
            service_enable_tag_override: i.enable_tag_override,
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServicesOut {
    pub node: NodeOut,
    pub services: BTreeMap<String, ServiceOut>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct KvOut {
    pub key: String,
    pub value: Option<String>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
}

impl From<&KvEntry> for KvOut {
    fn from(e: &KvEntry) -> Self {
        KvOut {
            key: e.key.clone(),
            // Consul stores an empty PUT as nil and answers null.
            value: (!e.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
            flags: e.flags,
            create_index: e.create_index,
            modify_index: e.modify_index,
            lock_index: 0,
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct AgentConfigOut {
    pub datacenter: String,
    pub node_name: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub server: bool,
    pub revision: String,
    pub version: String,
    pub primary_datacenter: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMemberOut {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    pub status: u8,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelfOut {
    pub config: AgentConfigOut,
    pub member: AgentMemberOut,
    pub meta: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_python_consul_body_decodes() {
        let mut v: Value = serde_json::from_str(
            r#"{"name":"web","id":"web-1","port":8080,"tags":["a"],"meta":{"lower_key":"x","Name":"y"},
                "checks":[{"http":"http://127.0.0.1:1/health","interval":"1s","timeout":"500ms",
                           "DeregisterCriticalServiceAfter":"1m","tls_skip_verify":true,
                           "header":{"x-foo":["bar"]}}]}"#,
        )
        .unwrap();
        canonicalize_service(&mut v);
        let reg: ServiceRegisterIn = serde_json::from_value(v).unwrap();
        let meta = reg.meta.clone().unwrap();
        assert!(
            meta.contains_key("lower_key") && meta.contains_key("Name"),
            "Meta keys untouched"
        );
        let r = reg.to_registration("n1").unwrap();
        assert_eq!(r.id, "web-1");
        assert_eq!(r.port, 8080);
        let c = &r.checks[0];
        assert_eq!(c.definition.interval, Some(Duration::from_secs(1)));
        assert_eq!(
            c.definition.deregister_critical_after,
            Some(Duration::from_secs(60))
        );
        match &c.definition.kind {
            CheckKind::Http {
                headers,
                tls_skip_verify,
                ..
            } => {
                assert!(headers.contains_key("x-foo"));
                assert!(tls_skip_verify);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_and_missing_check_types_are_refused() {
        let c = CheckIn {
            grpc: Some(Value::String("x".into())),
            ..CheckIn::default()
        };
        assert!(c.to_registration().is_err());
        assert!(CheckIn::default().to_registration().is_err());
    }
}

/// `GET /api/v1/catalog/routes`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteClaimsOut {
    /// Route key (host, or path of a host-less route) → owning service.
    pub owners: BTreeMap<String, String>,
    pub conflicts: Vec<RouteConflictOut>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteConflictOut {
    pub route: String,
    pub owner: String,
    /// Services whose instances ask for the route too and get no traffic for it.
    pub refused: Vec<String>,
}

impl From<&crate::routes::RouteClaims> for RouteClaimsOut {
    fn from(c: &crate::routes::RouteClaims) -> Self {
        RouteClaimsOut {
            owners: c.owners.clone(),
            conflicts: c
                .conflicts
                .iter()
                .map(|x| RouteConflictOut {
                    route: x.key.clone(),
                    owner: x.owner.clone(),
                    refused: x.others.clone(),
                })
                .collect(),
        }
    }
}
