//! [`Catalog`]: the Rust API of service discovery over the store, used by the HTTP API, the
//! DNS server, the check runner, the node monitor, the agent and the gateway adapter.
//!
//! Invariants:
//! - Every write is one store transaction, guarded by the modify index of what it read
//!   (optimistic concurrency, retried a few times), so concurrent registrations never leave a
//!   dangling id index or an orphan check.
//! - Nothing is written when nothing changes: re-registering the same instance, reporting the
//!   same check status or registering an unchanged node costs a read and no Raft entry, and
//!   wakes no watcher.
//! - Reads are functions of one consistent `StateView` and report the exact keys they depend
//!   on (see [`crate::blocking`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pier_store::{Consistency, Entry, Op, StateView, Store, Table, Txn, WatchKey};
use tokio::time::Instant;

use crate::blocking::{blocking_query, QueryOptions};
use crate::error::CatalogError;
use crate::model::{
    Check, CheckDefinition, CheckKind, CheckStatus, Instance, InstanceHealth, InstanceRegistration,
    KvEntry, Node, NodeRegistration, Versioned,
};
use crate::names;
use crate::records::{self, CHECK_IDS, INSTANCE_IDS};
use crate::routes;

/// How many times a guarded write is retried when a concurrent write got there first.
const CAS_RETRIES: usize = 8;

/// Settings shared by every part of the catalog on one server.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    /// Consul datacenter name reported everywhere (`dc1` like Consul's default).
    pub datacenter: String,
    /// A monitored node whose heartbeats stop for this long is marked critical by the leader.
    pub node_dead_after_ms: u64,
    /// How often the leader's node monitor looks at heartbeat ages.
    pub node_monitor_tick_ms: u64,
    /// Timeout for forwarding a heartbeat from a follower to the leader.
    pub forward_timeout_ms: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            datacenter: "dc1".to_string(),
            node_dead_after_ms: 2_000,
            node_monitor_tick_ms: 100,
            forward_timeout_ms: 2_000,
        }
    }
}

/// Filters of `health/service` and `catalog/service`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceFilter {
    /// Only instances whose every check (node checks included) is passing.
    pub passing_only: bool,
    /// Instances must carry all of these tags.
    pub tags: Vec<String>,
    /// Nodes must carry all of these meta pairs.
    pub node_meta: Vec<(String, String)>,
}

impl ServiceFilter {
    pub fn passing() -> ServiceFilter {
        ServiceFilter {
            passing_only: true,
            ..ServiceFilter::default()
        }
    }

    fn node_matches(&self, node: &Node) -> bool {
        self.node_meta
            .iter()
            .all(|(k, v)| node.meta.get(k).is_some_and(|nv| nv == v))
    }

    fn instance_matches(&self, instance: &Instance) -> bool {
        self.tags.iter().all(|t| instance.tags.contains(t))
    }
}

/// What the leader knows of one node's heartbeats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeartbeatState {
    /// Last heartbeat, or the start of the grace period this leader gave the node.
    pub last_seen: Instant,
    /// Whether this leader has received a heartbeat at all (only then may it mark the node
    /// passing again).
    pub heard: bool,
}

/// The leader's in-memory heartbeat table: the one failure detector of the cluster. The
/// catalog's node monitor (node checks) and the orchestrator's controller (node `down`, task
/// rescheduling) both read it, with the same timeout (`node_dead_after_ms`).
#[derive(Default)]
pub(crate) struct Heartbeats {
    pub table: Mutex<HeartbeatTable>,
}

#[derive(Default)]
pub(crate) struct HeartbeatTable {
    pub nodes: HashMap<String, HeartbeatState>,
    /// The term whose leadership last reset the table (see [`Catalog::begin_leadership`]).
    pub term: Option<u64>,
}

impl Heartbeats {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HeartbeatTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fewest live nodes for the mass-silence guard to apply: with one or two nodes, one silent
/// node is as likely a dead machine as anything else.
pub const MASS_SILENCE_MIN_NODES: usize = 3;

/// More than half of the live nodes silent at once (and at least [`MASS_SILENCE_MIN_NODES`])
/// is far likelier a fault on the leader's side — its CPU starved, its own link cut — than
/// that many machines failing together. The detector then marks none dead, as Kubernetes'
/// node-lifecycle controller stops evicting in a full disruption: rescheduling everything
/// onto the few nodes left would do more harm than waiting.
pub fn mass_silence(live_nodes: usize, silent_nodes: usize) -> bool {
    debug_assert!(silent_nodes <= live_nodes);
    live_nodes >= MASS_SILENCE_MIN_NODES && silent_nodes * 2 > live_nodes
}

/// One node as the failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeBeat {
    /// Time since its last heartbeat (or since this leader's grace period began).
    pub silent_ms: u64,
    /// Whether this leader has heard from it itself.
    pub heard: bool,
}

/// The last result of one `health/service` query, shared by every watcher of it: when many
/// watchers wake for the same change, the first one decodes the records and the others reuse
/// the result after checking (`index_of` of the same keys) that nothing they cover changed.
pub(crate) struct HealthMemo {
    keys: Vec<WatchKey>,
    index: u64,
    /// Shared through the memo's own `Arc`.
    pub(crate) instances: Vec<InstanceHealth>,
    /// The HTTP answer's JSON, encoded once by the first watcher that sends it: the same query
    /// at the same index always has the same answer.
    pub(crate) encoded: OnceLock<Bytes>,
}

type HealthMemoKey = (String, ServiceFilter);

/// Most memoised queries kept; the table is cleared when it grows past this.
const MAX_MEMO_ENTRIES: usize = 4096;

/// The catalog over a store. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    store: Store,
    config: Arc<CatalogConfig>,
    pub(crate) heartbeats: Arc<Heartbeats>,
    /// How heartbeats are forwarded to the leader: TLS with this server's certificate in a
    /// secure cluster (see [`Catalog::with_internal_http`]).
    internal: pier_net::HttpClient,
    health_memo: Arc<Mutex<HashMap<HealthMemoKey, Arc<HealthMemo>>>>,
}

fn decode_err<T>(r: Result<T, CatalogError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "skipping undecodable catalog record");
            None
        }
    }
}

impl Catalog {
    pub fn new(store: Store, config: CatalogConfig) -> Catalog {
        let internal = pier_net::HttpClient::new(|b| b, None)
            .unwrap_or_else(|e| panic!("an HTTP client without TLS always builds: {e}"));
        Catalog {
            store,
            config: Arc::new(config),
            heartbeats: Arc::new(Heartbeats::default()),
            internal,
            health_memo: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Calls to other servers go through `client` (TLS with this server's certificate).
    pub fn with_internal_http(mut self, client: pier_net::HttpClient) -> Catalog {
        self.internal = client;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &CatalogConfig {
        &self.config
    }

    pub fn datacenter(&self) -> &str {
        &self.config.datacenter
    }

    // ---------------------------------------------------------------- nodes

    /// Registers or updates a node. Writes only if something changed; a monitored node gets a
    /// passing `serfHealth` check when it has none. Returns the node's modify index.
    pub async fn register_node(&self, reg: &NodeRegistration) -> Result<u64, CatalogError> {
        names::validate_node_name(&reg.name)?;
        names::validate_meta(&reg.meta)?;
        if reg.address.is_empty() {
            return Err(CatalogError::bad(format!(
                "Missing node address for {:?}",
                reg.name
            )));
        }
        let key = records::node_key(&reg.name);
        let health_key = records::node_check_key(&reg.name, records::NODE_HEALTH_CHECK_ID);
        for _ in 0..CAS_RETRIES {
            let (current, health) = self
                .store
                .read(Consistency::Default, |v| {
                    (
                        v.get(Table::NODES, &key).cloned(),
                        v.get(Table::CHECKS, &health_key).cloned(),
                    )
                })
                .await?;
            let (id, current_index, unchanged) = match &current {
                Some(entry) => {
                    let rec = records::decode_node_record(&key, entry)?;
                    let same = rec.address == reg.address
                        && rec.zone == reg.zone
                        && rec.meta == reg.meta
                        && rec.tagged_addresses == reg.tagged_addresses
                        && rec.monitored == reg.monitored
                        && rec.datacenter == self.config.datacenter;
                    (rec.id, entry.modify_index, same)
                }
                None => (uuid::Uuid::new_v4().to_string(), 0, false),
            };
            let needs_health = reg.monitored && health.is_none();
            if unchanged && !needs_health {
                return Ok(current_index);
            }
            let rec = records::NodeRecord {
                id,
                name: reg.name.clone(),
                address: reg.address.clone(),
                datacenter: self.config.datacenter.clone(),
                zone: reg.zone.clone(),
                meta: reg.meta.clone(),
                tagged_addresses: reg.tagged_addresses.clone(),
                monitored: reg.monitored,
            };
            let mut txn = Txn::new().with(Op::Put {
                table: Table::NODES,
                key: key.clone(),
                value: records::encode(&rec),
                flags: 0,
                cas: Some(current_index),
            });
            if needs_health {
                let check = node_health_check(&reg.name, CheckStatus::Passing);
                txn = txn.with(Op::Put {
                    table: Table::CHECKS,
                    key: health_key.clone(),
                    value: records::encode(&records::check_record(&check)),
                    flags: 0,
                    cas: Some(0),
                });
                txn = txn.with(Op::put(
                    CHECK_IDS,
                    records::id_key(&reg.name, records::NODE_HEALTH_CHECK_ID),
                    health_key.clone().into_bytes(),
                ));
            }
            let res = self.store.write(txn).await?;
            if res.applied {
                return Ok(res.index);
            }
        }
        Err(CatalogError::bad(format!(
            "node {:?} is being changed concurrently; retry",
            reg.name
        )))
    }

    /// Removes a node with all its instances and checks.
    pub async fn deregister_node(&self, node: &str) -> Result<u64, CatalogError> {
        names::validate_node_name(node)?;
        let key = records::node_key(node);
        let ids_prefix = records::node_ids_prefix(node);
        let (exists, instances) = self
            .store
            .read(Consistency::Default, |v| {
                let instances: Vec<(String, String)> = v
                    .range_prefix(INSTANCE_IDS, &ids_prefix)
                    .map(|(k, e)| {
                        (
                            k[ids_prefix.len()..].to_string(),
                            String::from_utf8_lossy(&e.value).into_owned(),
                        )
                    })
                    .collect();
                (v.get(Table::NODES, &key).is_some(), instances)
            })
            .await?;
        if !exists {
            return Err(CatalogError::NotFound(format!("Unknown node {node:?}")));
        }
        let mut txn = Txn::new().with(Op::delete(Table::NODES, key));
        for (id, service) in instances {
            txn = txn
                .with(Op::delete(
                    Table::SERVICES,
                    records::instance_key(&service, node, &id),
                ))
                .with(Op::delete_prefix(
                    Table::CHECKS,
                    records::instance_checks_prefix(&service, node, &id),
                ));
        }
        txn = txn
            .with(Op::delete_prefix(
                Table::CHECKS,
                records::node_checks_prefix(node),
            ))
            .with(Op::delete_prefix(INSTANCE_IDS, ids_prefix.clone()))
            .with(Op::delete_prefix(CHECK_IDS, ids_prefix));
        self.heartbeats.lock().nodes.remove(node);
        Ok(self.store.write(txn).await?.index)
    }

    /// Sets the node liveness check (used by the node monitor). Writes only on change.
    pub async fn set_node_health(
        &self,
        node: &str,
        status: CheckStatus,
    ) -> Result<bool, CatalogError> {
        let key = records::node_check_key(node, records::NODE_HEALTH_CHECK_ID);
        for _ in 0..CAS_RETRIES {
            let current = self
                .store
                .read(Consistency::Default, |v| {
                    (
                        v.get(Table::NODES, node).map(|e| e.modify_index),
                        v.get(Table::CHECKS, &key).cloned(),
                    )
                })
                .await?;
            let (node_index, entry) = current;
            let Some(node_index) = node_index else {
                return Ok(false);
            };
            let cas = match &entry {
                Some(e) => {
                    let check = records::decode_check(&key, e)?;
                    if check.status == status {
                        return Ok(false);
                    }
                    e.modify_index
                }
                None => 0,
            };
            let check = node_health_check(node, status);
            let txn = Txn::new()
                .with(Op::Put {
                    table: Table::CHECKS,
                    key: key.clone(),
                    value: records::encode(&records::check_record(&check)),
                    flags: 0,
                    cas: Some(cas),
                })
                .with(Op::check(Table::NODES, node, node_index));
            let txn = if cas == 0 {
                txn.with(Op::put(
                    CHECK_IDS,
                    records::id_key(node, records::NODE_HEALTH_CHECK_ID),
                    key.clone().into_bytes(),
                ))
            } else {
                txn
            };
            if self.store.write(txn).await?.applied {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a heartbeat of `node`. On the leader it is kept in memory (no Raft write); on a
    /// follower it is forwarded to the leader's HTTP API
    /// (`PUT /api/v1/catalog/nodes/:node/heartbeat`).
    pub async fn heartbeat(&self, node: &str) -> Result<(), CatalogError> {
        names::validate_node_name(node)?;
        let status = self.store.status();
        if status.is_leader {
            let known = self
                .store
                .read(Consistency::Stale, |v| v.get(Table::NODES, node).is_some())
                .await?;
            if !known {
                return Err(CatalogError::NotFound(format!(
                    "Unknown node {node:?}: register the node before heartbeating"
                )));
            }
            self.record_heartbeat(node);
            return Ok(());
        }
        let leader = status.leader.ok_or_else(|| {
            pier_store::StoreError::NoLeader("no leader known for a heartbeat".into())
        })?;
        self.forward_heartbeat(&leader.http_addr, node).await
    }

    /// Records a heartbeat of `node` heard by this server (the leader).
    pub fn record_heartbeat(&self, node: &str) {
        self.heartbeats.lock().nodes.insert(
            node.to_string(),
            HeartbeatState {
                last_seen: Instant::now(),
                heard: true,
            },
        );
    }

    /// Called by each user of the failure detector once this server leads `term` and has
    /// passed the leadership barrier. The first call of a term gives every node a fresh grace
    /// period and forgets who was heard (a new leader has no heartbeat history of its own);
    /// later calls of the same term change nothing, so the node monitor and the controller
    /// can both call it in any order. Returns whether it reset the table.
    pub fn begin_leadership(&self, term: u64) -> bool {
        let mut table = self.heartbeats.lock();
        if table.term.is_some_and(|t| t >= term) {
            return false;
        }
        let now = Instant::now();
        for state in table.nodes.values_mut() {
            *state = HeartbeatState {
                last_seen: now,
                heard: false,
            };
        }
        table.term = Some(term);
        true
    }

    /// How long `node` has been silent; a node never seen by this leader starts its grace
    /// period now.
    pub fn node_beat(&self, node: &str) -> NodeBeat {
        let now = Instant::now();
        let mut table = self.heartbeats.lock();
        let state = table
            .nodes
            .entry(node.to_string())
            .or_insert(HeartbeatState {
                last_seen: now,
                heard: false,
            });
        NodeBeat {
            silent_ms: u64::try_from(now.duration_since(state.last_seen).as_millis())
                .unwrap_or(u64::MAX),
            heard: state.heard,
        }
    }

    /// Time since this leader last heard from `node` itself; `None` when it has not.
    pub fn heard_ms_ago(&self, node: &str) -> Option<u64> {
        let table = self.heartbeats.lock();
        let state = table.nodes.get(node).filter(|s| s.heard)?;
        Some(u64::try_from(state.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The failure detector's verdict: silent for longer than `node_dead_after_ms`.
    pub fn is_silent(&self, beat: NodeBeat) -> bool {
        beat.silent_ms > self.config.node_dead_after_ms
    }

    /// Whether the detector must hold its verdicts this round: `nodes` are (name, already
    /// marked dead) pairs; see [`mass_silence`]. Both users of the detector ask the same
    /// question, so neither marks a node dead that the other keeps alive.
    pub fn mass_silence_held<'a>(&self, nodes: impl IntoIterator<Item = (&'a str, bool)>) -> bool {
        let (mut up, mut silent) = (0usize, 0usize);
        for (name, already_dead) in nodes {
            if already_dead {
                continue;
            }
            up += 1;
            // Counted once silent for half the timeout: nodes cut off together stop at
            // slightly different moments, and the first must not be judged alone.
            if self.node_beat(name).silent_ms.saturating_mul(2) > self.config.node_dead_after_ms {
                silent += 1;
            }
        }
        mass_silence(up, silent)
    }

    async fn forward_heartbeat(&self, http_addr: &str, node: &str) -> Result<(), CatalogError> {
        if http_addr.is_empty() {
            return Err(CatalogError::Forward {
                addr: String::new(),
                detail: "the leader advertises no HTTP address".into(),
            });
        }
        let base = if http_addr.contains("://") {
            http_addr.to_string()
        } else {
            format!("{}://{http_addr}", self.internal.scheme())
        };
        let url = format!(
            "{}/api/v1/catalog/nodes/{node}/heartbeat",
            base.trim_end_matches('/')
        );
        let resp = self
            .internal
            .get()
            .put(&url)
            .timeout(Duration::from_millis(self.config.forward_timeout_ms))
            .header(crate::http::FORWARDED_HEADER, "1")
            .send()
            .await
            .map_err(|e| CatalogError::Forward {
                addr: http_addr.to_string(),
                detail: e.to_string(),
            })?;
        if resp.status().is_success() {
            Ok(())
        } else if resp.status() == reqwest::StatusCode::NOT_FOUND {
            Err(CatalogError::NotFound(format!("Unknown node {node:?}")))
        } else {
            Err(CatalogError::Forward {
                addr: http_addr.to_string(),
                detail: format!("status {}", resp.status()),
            })
        }
    }

    // ---------------------------------------------------------------- instances

    /// Registers (or replaces) an instance with its checks, in one transaction. The node must
    /// be registered. Checks that exist already keep their status. Returns the write index, or
    /// the current index when nothing changed.
    pub async fn register_instance(&self, reg: &InstanceRegistration) -> Result<u64, CatalogError> {
        let mut reg = reg.clone();
        if reg.id.is_empty() {
            reg.id = reg.service.clone();
        }
        names::validate_service_name(&reg.service)?;
        names::validate_node_name(&reg.node)?;
        names::validate_instance_id(&reg.id)?;
        names::validate_tags(&reg.tags)?;
        names::validate_meta(&reg.meta)?;
        let checks = self.build_checks(&reg)?;
        let instance_key = records::instance_key(&reg.service, &reg.node, &reg.id);
        let checks_prefix = records::instance_checks_prefix(&reg.service, &reg.node, &reg.id);
        let id_key = records::id_key(&reg.node, &reg.id);
        let record = records::InstanceRecord {
            id: reg.id.clone(),
            service: reg.service.clone(),
            node: reg.node.clone(),
            address: reg.address.clone(),
            port: reg.port,
            tags: reg.tags.clone(),
            meta: reg.meta.clone(),
            weight_passing: reg.weights.unwrap_or_default().passing,
            weight_warning: reg.weights.unwrap_or_default().warning,
            enable_tag_override: reg.enable_tag_override,
        };
        let record_bytes = records::encode(&record);
        let route_keys = routes::route_keys(&reg.tags, &reg.meta);
        for _ in 0..CAS_RETRIES {
            let snapshot = self
                .store
                .read(Consistency::Default, |v| {
                    let node = v.get(Table::NODES, &reg.node).is_some();
                    let id_entry = v.get(INSTANCE_IDS, &id_key).cloned();
                    let old_service = id_entry
                        .as_ref()
                        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
                    let (old_instance, old_checks) = match &old_service {
                        Some(svc) => {
                            let ik = records::instance_key(svc, &reg.node, &reg.id);
                            let cp = records::instance_checks_prefix(svc, &reg.node, &reg.id);
                            (
                                v.get(Table::SERVICES, &ik).cloned(),
                                v.range_prefix(Table::CHECKS, &cp)
                                    .map(|(k, e)| (k.to_string(), e.clone()))
                                    .collect::<Vec<_>>(),
                            )
                        }
                        None => (None, Vec::new()),
                    };
                    // Check IDs of the new checks that some other instance of the node uses
                    // (this instance's own checks, under its new or old service, are fine).
                    let old_prefix = old_service
                        .as_ref()
                        .map(|svc| records::instance_checks_prefix(svc, &reg.node, &reg.id));
                    let clashes: Vec<String> = checks
                        .iter()
                        .filter_map(|c| {
                            let e = v.get(CHECK_IDS, &records::id_key(&reg.node, &c.id))?;
                            let target = String::from_utf8_lossy(&e.value);
                            let own = target.starts_with(&checks_prefix)
                                || old_prefix
                                    .as_ref()
                                    .is_some_and(|p| target.starts_with(p.as_str()));
                            (!own).then(|| c.id.clone())
                        })
                        .collect();
                    (
                        node,
                        id_entry.map(|e| e.modify_index).unwrap_or(0),
                        old_service,
                        old_instance,
                        old_checks,
                        clashes,
                        routes::read_claims(v, &route_keys),
                    )
                })
                .await?;
            let (node_exists, id_index, old_service, old_instance, old_checks, clashes, claims) =
                snapshot;
            if !node_exists {
                return Err(CatalogError::NotFound(format!(
                    "Unknown node {:?}: register the node first",
                    reg.node
                )));
            }
            if let Some(id) = clashes.first() {
                return Err(CatalogError::bad(format!(
                    "Check ID {id:?} is already used by another service on node {:?}",
                    reg.node
                )));
            }
            // Refused before anything is written when another service owns a route host.
            let (claim_ops, granted) = routes::claim_ops(&reg.service, &claims)?;
            let mut old_by_id: HashMap<String, Check> = HashMap::new();
            for (k, e) in &old_checks {
                if let Some(c) = decode_err(records::decode_check(k, e)) {
                    old_by_id.insert(c.id.clone(), c);
                }
            }
            let same_service = old_service.as_deref() == Some(reg.service.as_str());
            let mut txn = Txn::new().with(Op::check(INSTANCE_IDS, id_key.clone(), id_index));
            for op in claim_ops {
                txn = txn.with(op);
            }
            let mut changed = granted;
            if !same_service {
                if let Some(old) = &old_service {
                    txn = txn
                        .with(Op::delete(
                            Table::SERVICES,
                            records::instance_key(old, &reg.node, &reg.id),
                        ))
                        .with(Op::delete_prefix(
                            Table::CHECKS,
                            records::instance_checks_prefix(old, &reg.node, &reg.id),
                        ));
                }
                txn = txn.with(Op::put(
                    INSTANCE_IDS,
                    id_key.clone(),
                    reg.service.clone().into_bytes(),
                ));
                changed = true;
            }
            let instance_same = same_service
                && old_instance
                    .as_ref()
                    .is_some_and(|e| e.value == record_bytes);
            if !instance_same {
                txn = txn.with(Op::put(
                    Table::SERVICES,
                    instance_key.clone(),
                    record_bytes.clone(),
                ));
                changed = true;
            }
            let new_ids: BTreeSet<&str> = checks.iter().map(|c| c.id.as_str()).collect();
            for old in old_by_id.values() {
                if !new_ids.contains(old.id.as_str()) {
                    txn = txn.with(Op::delete(CHECK_IDS, records::id_key(&reg.node, &old.id)));
                    if same_service {
                        txn = txn.with(Op::delete(Table::CHECKS, records::check_key(old)));
                    }
                    changed = true;
                }
            }
            for check in &checks {
                let mut check = check.clone();
                let old = if same_service {
                    old_by_id.get(&check.id)
                } else {
                    None
                };
                if let Some(old) = old {
                    check.status = old.status;
                    check.output = old.output.clone();
                    let same = old.name == check.name
                        && old.notes == check.notes
                        && old.definition == check.definition
                        && old.service_tags == check.service_tags;
                    if same {
                        continue;
                    }
                }
                let key = records::check_key(&check);
                txn = txn
                    .with(Op::put(
                        Table::CHECKS,
                        key.clone(),
                        records::encode(&records::check_record(&check)),
                    ))
                    // Rewritten on every change of the definition, so the check runner (which
                    // watches this table) picks up new definitions.
                    .with(Op::put(
                        CHECK_IDS,
                        records::id_key(&reg.node, &check.id),
                        key.into_bytes(),
                    ));
                changed = true;
            }
            if !changed {
                return Ok(old_instance.map(|e| e.modify_index).unwrap_or(id_index));
            }
            let res = self.store.write(txn).await?;
            if res.applied {
                return Ok(res.index);
            }
        }
        Err(CatalogError::bad(format!(
            "service {:?} is being changed concurrently; retry",
            reg.id
        )))
    }

    fn build_checks(&self, reg: &InstanceRegistration) -> Result<Vec<Check>, CatalogError> {
        let many = reg.checks.len() > 1;
        let mut out: Vec<Check> = Vec::with_capacity(reg.checks.len());
        for (i, c) in reg.checks.iter().enumerate() {
            let id = match &c.id {
                Some(id) if !id.is_empty() => id.clone(),
                _ if many => format!("service:{}:{}", reg.id, i + 1),
                _ => format!("service:{}", reg.id),
            };
            names::validate_check_id(&id)?;
            if id == records::NODE_HEALTH_CHECK_ID {
                return Err(CatalogError::bad(format!("Check ID {id:?} is reserved")));
            }
            if out.iter().any(|o| o.id == id) {
                return Err(CatalogError::bad(format!("Duplicate check ID {id:?}")));
            }
            validate_definition(&c.definition)?;
            out.push(Check {
                id,
                name: c
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("Service '{}' check", reg.service)),
                node: reg.node.clone(),
                service_id: reg.id.clone(),
                service_name: reg.service.clone(),
                service_tags: reg.tags.clone(),
                status: c.status.unwrap_or(CheckStatus::Critical),
                output: String::new(),
                notes: c.notes.clone(),
                definition: c.definition.clone(),
                create_index: 0,
                modify_index: 0,
            });
        }
        Ok(out)
    }

    /// Removes an instance and its checks. `Ok(false)` when it did not exist.
    pub async fn deregister_instance(&self, node: &str, id: &str) -> Result<bool, CatalogError> {
        names::validate_node_name(node)?;
        names::validate_instance_id(id)?;
        let id_key = records::id_key(node, id);
        let found = self
            .store
            .read(Consistency::Default, |v| {
                let e = v.get(INSTANCE_IDS, &id_key)?;
                let service = String::from_utf8_lossy(&e.value).into_owned();
                let prefix = records::instance_checks_prefix(&service, node, id);
                let check_ids: Vec<String> = v
                    .range_prefix(Table::CHECKS, &prefix)
                    .map(|(k, _)| k[prefix.len()..].to_string())
                    .collect();
                Some((e.modify_index, service, check_ids))
            })
            .await?;
        let Some((id_index, service, check_ids)) = found else {
            return Ok(false);
        };
        let mut txn = Txn::new()
            .with(Op::Delete {
                table: INSTANCE_IDS,
                key: id_key,
                cas: Some(id_index),
            })
            .with(Op::delete(
                Table::SERVICES,
                records::instance_key(&service, node, id),
            ))
            .with(Op::delete_prefix(
                Table::CHECKS,
                records::instance_checks_prefix(&service, node, id),
            ));
        for check in check_ids {
            txn = txn.with(Op::delete(CHECK_IDS, records::id_key(node, &check)));
        }
        Ok(self.store.write(txn).await?.applied)
    }

    /// Looks up a check of `node` by ID.
    pub async fn get_check(
        &self,
        node: &str,
        check_id: &str,
    ) -> Result<Option<Check>, CatalogError> {
        let id_key = records::id_key(node, check_id);
        let found = self
            .store
            .read(Consistency::Default, |v| {
                let target = v.get(CHECK_IDS, &id_key)?;
                let key = String::from_utf8_lossy(&target.value).into_owned();
                v.get(Table::CHECKS, &key).map(|e| (key, e.clone()))
            })
            .await?;
        found
            .map(|(k, e)| records::decode_check(&k, &e))
            .transpose()
    }

    /// Sets a check's status (and output, if given, capped at 4 KiB). Writes only when either changes; returns
    /// whether it wrote. `NotFound` for an unknown check.
    pub async fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let id_key = records::id_key(node, check_id);
        for _ in 0..CAS_RETRIES {
            let found = self
                .store
                .read(Consistency::Default, |v| {
                    let target = v.get(CHECK_IDS, &id_key)?;
                    let key = String::from_utf8_lossy(&target.value).into_owned();
                    v.get(Table::CHECKS, &key).map(|e| (key, e.clone()))
                })
                .await?;
            let Some((key, entry)) = found else {
                return Err(CatalogError::NotFound(format!(
                    "Unknown check ID {check_id:?} on node {node:?}"
                )));
            };
            let mut check = records::decode_check(&key, &entry)?;
            // Reported outputs are capped like probe outputs (Consul keeps 4 KiB).
            let new_output = output
                .map(crate::checks::probes::cap_output)
                .unwrap_or_else(|| check.output.clone());
            if check.status == status && check.output == new_output {
                return Ok(false);
            }
            check.status = status;
            check.output = new_output;
            let res = self
                .store
                .write(Txn::single(Op::Put {
                    table: Table::CHECKS,
                    key,
                    value: records::encode(&records::check_record(&check)),
                    flags: 0,
                    cas: Some(entry.modify_index),
                }))
                .await?;
            if res.applied {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---------------------------------------------------------------- reads

    /// `health/service/:name`: instances with their node and checks, filtered.
    pub async fn health_service(
        &self,
        service: &str,
        filter: &ServiceFilter,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<InstanceHealth>>, CatalogError> {
        let shared = self.health_service_shared(service, filter, opts).await?;
        Ok(Versioned {
            index: shared.index,
            value: shared.value.instances.clone(),
        })
    }

    /// [`Catalog::health_service`] without copying the result out of the shared memo.
    pub(crate) async fn health_service_shared(
        &self,
        service: &str,
        filter: &ServiceFilter,
        opts: &QueryOptions,
    ) -> Result<Versioned<Arc<HealthMemo>>, CatalogError> {
        names::validate_service_name(service)?;
        let memo_key: HealthMemoKey = (service.to_string(), filter.clone());
        blocking_query(&self.store, opts, |v| {
            let memo = self
                .health_memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&memo_key)
                .cloned();
            if let Some(m) = memo {
                if v.index_of(&m.keys) == m.index {
                    let keys = m.keys.clone();
                    return Ok((m, keys));
                }
            }
            let (list, keys) = read_health_service(v, service, filter, true);
            let entry = Arc::new(HealthMemo {
                keys: keys.clone(),
                index: v.index_of(&keys),
                instances: list,
                encoded: OnceLock::new(),
            });
            let mut table = self.health_memo.lock().unwrap_or_else(|p| p.into_inner());
            if table.len() >= MAX_MEMO_ENTRIES {
                table.clear();
            }
            table.insert(memo_key.clone(), entry.clone());
            Ok((entry, keys))
        })
        .await
    }

    /// The passing instances of a service, now (for the gateway's adapter).
    pub async fn passing_instances(
        &self,
        service: &str,
    ) -> Result<Versioned<Vec<InstanceHealth>>, CatalogError> {
        self.health_service(
            service,
            &ServiceFilter::passing(),
            &QueryOptions::now(Consistency::Stale),
        )
        .await
    }

    /// Waits until the passing set of `service` has an index other than `after_index` (or
    /// `timeout` passes) and returns it. Pass the returned index back to wait for the next
    /// change; pass 0 to get the current set at once.
    pub async fn watch_passing(
        &self,
        service: &str,
        after_index: u64,
        timeout: Duration,
    ) -> Result<Versioned<Vec<InstanceHealth>>, CatalogError> {
        let opts = QueryOptions {
            consistency: Consistency::Stale,
            min_index: after_index,
            wait: timeout,
        };
        self.health_service(service, &ServiceFilter::passing(), &opts)
            .await
    }

    /// `catalog/service/:name`: instances with their node, no health filtering.
    pub async fn service_instances(
        &self,
        service: &str,
        filter: &ServiceFilter,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<(Node, Instance)>>, CatalogError> {
        names::validate_service_name(service)?;
        let filter = ServiceFilter {
            passing_only: false,
            ..filter.clone()
        };
        blocking_query(&self.store, opts, |v| {
            let (list, keys) = read_health_service(v, service, &filter, false);
            Ok((
                list.into_iter().map(|h| (h.node, h.instance)).collect(),
                keys,
            ))
        })
        .await
    }

    /// `catalog/services`: service name → union of tags.
    pub async fn services(
        &self,
        node_meta: &[(String, String)],
        opts: &QueryOptions,
    ) -> Result<Versioned<BTreeMap<String, BTreeSet<String>>>, CatalogError> {
        blocking_query(&self.store, opts, |v| {
            let mut keys = vec![WatchKey::prefix(Table::SERVICES, "")];
            let mut nodes: HashMap<String, Option<Node>> = HashMap::new();
            if !node_meta.is_empty() {
                keys.push(WatchKey::prefix(Table::NODES, ""));
            }
            let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (k, e) in v.range_prefix(Table::SERVICES, "") {
                let Some(inst) = decode_err(records::decode_instance(k, e)) else {
                    continue;
                };
                if !node_meta.is_empty() {
                    let node = nodes
                        .entry(inst.node.clone())
                        .or_insert_with(|| read_node(v, &inst.node));
                    let ok = node.as_ref().is_some_and(|n| {
                        node_meta
                            .iter()
                            .all(|(mk, mv)| n.meta.get(mk).is_some_and(|x| x == mv))
                    });
                    if !ok {
                        continue;
                    }
                }
                out.entry(inst.service).or_default().extend(inst.tags);
            }
            Ok((out, keys))
        })
        .await
    }

    /// `catalog/nodes`.
    pub async fn nodes(&self, opts: &QueryOptions) -> Result<Versioned<Vec<Node>>, CatalogError> {
        blocking_query(&self.store, opts, |v| {
            Ok((read_nodes(v), vec![WatchKey::prefix(Table::NODES, "")]))
        })
        .await
    }

    /// `catalog/node/:node`: the node and its instances; `None` when unknown.
    pub async fn node_services(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Versioned<Option<(Node, Vec<Instance>)>>, CatalogError> {
        names::validate_node_name(node)?;
        blocking_query(&self.store, opts, |v| {
            let (instances, mut keys) = read_node_instances(v, node);
            keys.push(WatchKey::key(Table::NODES, node));
            Ok((read_node(v, node).map(|n| (n, instances)), keys))
        })
        .await
    }

    /// Every check of a node: its node checks and the checks of its instances.
    pub async fn node_checks(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<Check>>, CatalogError> {
        names::validate_node_name(node)?;
        blocking_query(&self.store, opts, |v| {
            let prefix = records::node_ids_prefix(node);
            let mut keys = vec![WatchKey::prefix(CHECK_IDS, prefix.clone())];
            let mut checks = Vec::new();
            for (_, target) in v.range_prefix(CHECK_IDS, &prefix) {
                let key = String::from_utf8_lossy(&target.value).into_owned();
                if let Some(e) = v.get(Table::CHECKS, &key) {
                    if let Some(c) = decode_err(records::decode_check(&key, e)) {
                        checks.push(c);
                    }
                }
                keys.push(WatchKey::key(Table::CHECKS, key));
            }
            Ok((checks, keys))
        })
        .await
    }

    /// The instances registered on a node (for `/v1/agent/services`).
    pub async fn node_instances(&self, node: &str) -> Result<Vec<Instance>, CatalogError> {
        let (instances, _) = self
            .store
            .read(Consistency::Default, |v| read_node_instances(v, node))
            .await?;
        Ok(instances)
    }

    /// `health/state/:state`: every check in that state (`None` = any).
    pub async fn checks_in_state(
        &self,
        state: Option<CheckStatus>,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<Check>>, CatalogError> {
        blocking_query(&self.store, opts, |v| {
            let checks = v
                .range_prefix(Table::CHECKS, "")
                .filter_map(|(k, e)| decode_err(records::decode_check(k, e)))
                .filter(|c| state.is_none_or(|s| c.status == s))
                .collect();
            Ok((checks, vec![WatchKey::prefix(Table::CHECKS, "")]))
        })
        .await
    }

    /// `health/checks/:service`: the checks of a service's instances.
    pub async fn service_checks(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<Check>>, CatalogError> {
        names::validate_service_name(service)?;
        let prefix = records::service_prefix(service);
        blocking_query(&self.store, opts, |v| {
            let checks = v
                .range_prefix(Table::CHECKS, &prefix)
                .filter_map(|(k, e)| decode_err(records::decode_check(k, e)))
                .collect();
            Ok((
                checks,
                vec![WatchKey::prefix(Table::CHECKS, prefix.clone())],
            ))
        })
        .await
    }

    /// Every node with its liveness check status, for the node monitor.
    pub(crate) async fn monitored_nodes(
        &self,
    ) -> Result<Vec<(String, Option<CheckStatus>)>, CatalogError> {
        Ok(self
            .store
            .read(Consistency::Stale, |v| {
                v.range_prefix(Table::NODES, "")
                    .filter_map(|(k, e)| decode_err(records::decode_node(k, e)))
                    .filter(|n| n.monitored)
                    .map(|n| {
                        let key = records::node_check_key(&n.name, records::NODE_HEALTH_CHECK_ID);
                        let status = v
                            .get(Table::CHECKS, &key)
                            .and_then(|e| decode_err(records::decode_check(&key, e)))
                            .map(|c| c.status);
                        (n.name, status)
                    })
                    .collect()
            })
            .await?)
    }

    /// Every check of `node` as stored, with the instance it belongs to (for the check runner).
    pub(crate) async fn checks_of_node(&self, node: &str) -> Result<Vec<Check>, CatalogError> {
        let prefix = records::node_ids_prefix(node);
        Ok(self
            .store
            .read(Consistency::Stale, |v| {
                v.range_prefix(CHECK_IDS, &prefix)
                    .filter_map(|(_, target)| {
                        let key = String::from_utf8_lossy(&target.value).into_owned();
                        let e = v.get(Table::CHECKS, &key)?;
                        decode_err(records::decode_check(&key, e))
                    })
                    .collect()
            })
            .await?)
    }

    /// Subscription to the set of checks of a node (not their status).
    pub(crate) fn watch_node_check_set(&self, node: &str) -> pier_store::Watch {
        self.store
            .watch(&[WatchKey::prefix(CHECK_IDS, records::node_ids_prefix(node))])
    }

    // ---------------------------------------------------------------- KV

    /// One key; `None` when absent (the index is still meaningful).
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Versioned<Option<KvEntry>>, CatalogError> {
        names::validate_kv_key(key, false)?;
        blocking_query(&self.store, opts, |v| {
            let entry = v.get(Table::KV, key).map(|e| kv_entry(key, e));
            Ok((entry, vec![WatchKey::key(Table::KV, key)]))
        })
        .await
    }

    /// Every key under `prefix`, in key order.
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<Versioned<Vec<KvEntry>>, CatalogError> {
        names::validate_kv_key(prefix, true)?;
        blocking_query(&self.store, opts, |v| {
            let entries = v
                .range_prefix(Table::KV, prefix)
                .map(|(k, e)| kv_entry(k, e))
                .collect();
            Ok((entries, vec![WatchKey::prefix(Table::KV, prefix)]))
        })
        .await
    }

    /// Writes a key. With `cas`, only if its modify index is `cas` (0 = only if absent).
    /// Returns whether it was written.
    pub async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<bool, CatalogError> {
        names::validate_kv_key(key, false)?;
        names::validate_kv_value(&value)?;
        let res = self
            .store
            .write(Txn::single(Op::Put {
                table: Table::KV,
                key: key.to_string(),
                value,
                flags,
                cas,
            }))
            .await?;
        Ok(res.applied)
    }

    /// Deletes a key, or every key under it with `recurse`. With `cas` (single key only), only
    /// if its modify index matches; `cas=0` never deletes (Consul's rule).
    pub async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<bool, CatalogError> {
        names::validate_kv_key(key, recurse)?;
        if cas == Some(0) {
            return Ok(false);
        }
        let op = if recurse {
            Op::delete_prefix(Table::KV, key)
        } else {
            Op::Delete {
                table: Table::KV,
                key: key.to_string(),
                cas,
            }
        };
        Ok(self.store.write(Txn::single(op)).await?.applied)
    }
}

fn kv_entry(key: &str, e: &Entry) -> KvEntry {
    KvEntry {
        key: key.to_string(),
        value: e.value.clone(),
        flags: e.flags,
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

fn node_health_check(node: &str, status: CheckStatus) -> Check {
    Check {
        id: records::NODE_HEALTH_CHECK_ID.to_string(),
        name: records::NODE_HEALTH_CHECK_NAME.to_string(),
        node: node.to_string(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        status,
        output: match status {
            CheckStatus::Passing => "Agent alive and reachable".to_string(),
            _ => "Agent not live or unreachable (no heartbeat)".to_string(),
        },
        notes: String::new(),
        definition: CheckDefinition {
            kind: CheckKind::Heartbeat,
            interval: None,
            timeout: None,
            deregister_critical_after: None,
            success_before_passing: 0,
            failures_before_critical: 0,
        },
        create_index: 0,
        modify_index: 0,
    }
}

fn validate_definition(d: &CheckDefinition) -> Result<(), CatalogError> {
    let needs_interval = matches!(
        d.kind,
        CheckKind::Http { .. } | CheckKind::Tcp { .. } | CheckKind::Script { .. }
    );
    if needs_interval && d.interval.is_none_or(|i| i.is_zero()) {
        return Err(CatalogError::bad(
            "Invalid check: Interval is required for HTTP, TCP and script checks",
        ));
    }
    match &d.kind {
        CheckKind::Http { url, .. } => {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| CatalogError::bad(format!("Invalid check: HTTP {url:?}: {e}")))?;
            // The workspace's HTTP client is built without TLS, so an https check could only
            // ever fail; refuse it instead of registering a check that lies.
            if parsed.scheme() != "http" {
                return Err(CatalogError::bad(format!(
                    "Invalid check: HTTP {url:?}: only http:// URLs are supported (no TLS in health checks yet)"
                )));
            }
        }
        CheckKind::Tcp { address } => {
            if address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(CatalogError::bad(format!(
                    "Invalid check: TCP {address:?} must be host:port"
                )));
            }
        }
        CheckKind::Ttl { ttl } => {
            if ttl.is_zero() {
                return Err(CatalogError::bad("Invalid check: TTL must be positive"));
            }
        }
        CheckKind::Script { args } => {
            if args.is_empty() || args[0].is_empty() {
                return Err(CatalogError::bad("Invalid check: Args must name a program"));
            }
        }
        CheckKind::Heartbeat | CheckKind::Manual => {}
    }
    Ok(())
}

pub(crate) fn read_node(v: &StateView<'_>, node: &str) -> Option<Node> {
    v.get(Table::NODES, node)
        .and_then(|e| decode_err(records::decode_node(node, e)))
}

/// Every instance whose meta carries `meta_key`, with its own checks: what the orchestrator
/// compares with task state on each pass (it reads this in the same view as the tasks, so
/// the two cannot be from different moments).
pub fn read_instances_with_meta(v: &StateView<'_>, meta_key: &str) -> Vec<(Instance, Vec<Check>)> {
    let mut out = Vec::new();
    for (k, e) in v.range_prefix(Table::SERVICES, "") {
        let Some(inst) = decode_err(records::decode_instance(k, e)) else {
            continue;
        };
        if !inst.meta.contains_key(meta_key) {
            continue;
        }
        let prefix = records::instance_checks_prefix(&inst.service, &inst.node, &inst.id);
        let checks = v
            .range_prefix(Table::CHECKS, &prefix)
            .filter_map(|(ck, ce)| decode_err(records::decode_check(ck, ce)))
            .collect();
        out.push((inst, checks));
    }
    out
}

/// Every registered instance (the ACME manager reads their route tags).
pub fn read_instances(v: &StateView<'_>) -> Vec<Instance> {
    v.range_prefix(Table::SERVICES, "")
        .filter_map(|(k, e)| decode_err(records::decode_instance(k, e)))
        .collect()
}

/// Every registered node.
pub fn read_nodes(v: &StateView<'_>) -> Vec<Node> {
    v.range_prefix(Table::NODES, "")
        .filter_map(|(k, e)| decode_err(records::decode_node(k, e)))
        .collect()
}

fn read_node_instances(v: &StateView<'_>, node: &str) -> (Vec<Instance>, Vec<WatchKey>) {
    let prefix = records::node_ids_prefix(node);
    let mut keys = vec![WatchKey::prefix(INSTANCE_IDS, prefix.clone())];
    let mut instances = Vec::new();
    for (k, e) in v.range_prefix(INSTANCE_IDS, &prefix) {
        let id = &k[prefix.len()..];
        let service = String::from_utf8_lossy(&e.value);
        let key = records::instance_key(&service, node, id);
        if let Some(ie) = v.get(Table::SERVICES, &key) {
            if let Some(inst) = decode_err(records::decode_instance(&key, ie)) {
                instances.push(inst);
            }
        }
        keys.push(WatchKey::key(Table::SERVICES, key));
    }
    (instances, keys)
}

/// The core read of `health/service` and `catalog/service`: every instance of `service` with
/// its node and checks (service checks and node checks), and the keys this depends on.
pub(crate) fn read_health_service(
    v: &StateView<'_>,
    service: &str,
    filter: &ServiceFilter,
    with_checks: bool,
) -> (Vec<InstanceHealth>, Vec<WatchKey>) {
    let prefix = records::service_prefix(service);
    let mut keys = vec![WatchKey::prefix(Table::SERVICES, prefix.clone())];
    if with_checks {
        keys.push(WatchKey::prefix(Table::CHECKS, prefix.clone()));
    }
    let mut service_checks: HashMap<(String, String), Vec<Check>> = HashMap::new();
    if with_checks {
        for (k, e) in v.range_prefix(Table::CHECKS, &prefix) {
            if let Some(c) = decode_err(records::decode_check(k, e)) {
                service_checks
                    .entry((c.node.clone(), c.service_id.clone()))
                    .or_default()
                    .push(c);
            }
        }
    }
    let mut nodes: BTreeMap<String, Option<(Node, Vec<Check>)>> = BTreeMap::new();
    let mut out = Vec::new();
    for (k, e) in v.range_prefix(Table::SERVICES, &prefix) {
        let Some(instance) = decode_err(records::decode_instance(k, e)) else {
            continue;
        };
        let node_entry = nodes.entry(instance.node.clone()).or_insert_with(|| {
            let node = read_node(v, &instance.node)?;
            let np = records::node_checks_prefix(&instance.node);
            let checks = if with_checks {
                v.range_prefix(Table::CHECKS, &np)
                    .filter_map(|(k, e)| decode_err(records::decode_check(k, e)))
                    .collect()
            } else {
                Vec::new()
            };
            Some((node, checks))
        });
        let Some((node, node_checks)) = node_entry.as_ref() else {
            continue;
        };
        if !filter.node_matches(node) || !filter.instance_matches(&instance) {
            continue;
        }
        let mut checks = node_checks.clone();
        if let Some(sc) = service_checks.get(&(instance.node.clone(), instance.id.clone())) {
            checks.extend(sc.iter().cloned());
        }
        let health = InstanceHealth {
            node: node.clone(),
            instance,
            checks,
        };
        if filter.passing_only && health.status() != CheckStatus::Passing {
            continue;
        }
        out.push(health);
    }
    for node in nodes.keys() {
        keys.push(WatchKey::key(Table::NODES, node.clone()));
        if with_checks {
            keys.push(WatchKey::prefix(
                Table::CHECKS,
                records::node_checks_prefix(node),
            ));
        }
    }
    (out, keys)
}
