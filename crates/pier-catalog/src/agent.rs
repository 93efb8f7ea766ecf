//! [`Agent`]: what runs next to the workload on every machine (and inside every server for
//! its own node): keeps its node registered, heartbeats to the leader, runs the node's checks,
//! and serves the `/v1/agent/*` endpoints of the HTTP API.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_store::{Consistency, Table};
use tokio::task::JoinHandle;

use crate::catalog::Catalog;
use crate::checks::{CheckRunner, CheckRunnerConfig};
use crate::error::CatalogError;
use crate::model::{CheckStatus, InstanceRegistration, NodeRegistration};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This machine's node name in the catalog.
    pub node_name: String,
    /// The address other machines reach this node at (instances without an address use it).
    pub address: String,
    pub zone: Option<String>,
    pub meta: BTreeMap<String, String>,
    /// How often to heartbeat; the leader's `node_dead_after_ms` must be a few times this.
    pub heartbeat_interval_ms: u64,
    pub checks: CheckRunnerConfig,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>, address: impl Into<String>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            address: address.into(),
            zone: None,
            meta: BTreeMap::new(),
            heartbeat_interval_ms: 500,
            checks: CheckRunnerConfig::default(),
        }
    }
}

struct Inner {
    catalog: Catalog,
    config: AgentConfig,
    runner: CheckRunner,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

/// The local agent of one node. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// Starts the heartbeat loop (which also registers the node, retrying until a leader
    /// accepts it) and the check runner. Call inside a tokio runtime.
    pub fn start(catalog: Catalog, config: AgentConfig) -> Agent {
        let runner = CheckRunner::start(
            catalog.clone(),
            config.node_name.clone(),
            config.checks.clone(),
        );
        let inner = Arc::new(Inner {
            catalog,
            config,
            runner,
            heartbeat: Mutex::new(None),
        });
        let handle = tokio::spawn(heartbeat_loop(Arc::downgrade(&inner)));
        *inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Agent { inner }
    }

    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    pub fn address(&self) -> &str {
        &self.inner.config.address
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn runner(&self) -> &CheckRunner {
        &self.inner.runner
    }

    pub fn script_checks_enabled(&self) -> bool {
        self.inner.config.checks.enable_script_checks
    }

    /// The node's UUID as stored (empty before the node is registered).
    pub async fn node_id(&self) -> String {
        let node = self.node_name().to_string();
        self.inner
            .catalog
            .store()
            .read(Consistency::Stale, |v| {
                v.get(Table::NODES, &node)
                    .and_then(|e| crate::records::decode_node_record(&node, e).ok())
                    .map(|r| r.id)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn registration(&self) -> NodeRegistration {
        let c = &self.inner.config;
        NodeRegistration {
            name: c.node_name.clone(),
            address: c.address.clone(),
            zone: c.zone.clone(),
            meta: c.meta.clone(),
            tagged_addresses: BTreeMap::new(),
            monitored: true,
        }
    }

    /// Registers the node if it is missing or changed (a read otherwise).
    pub async fn ensure_node(&self) -> Result<(), CatalogError> {
        self.inner
            .catalog
            .register_node(&self.registration())
            .await
            .map(|_| ())
    }

    /// Registers a service instance on this node; its checks start running here.
    pub async fn register_service(&self, reg: &InstanceRegistration) -> Result<u64, CatalogError> {
        for check in &reg.checks {
            crate::checks::allow::vet_check(
                self.inner.runner.check_allow(),
                &check.definition.kind,
            )
            .await?;
        }
        self.ensure_node().await?;
        let mut reg = reg.clone();
        reg.node = self.node_name().to_string();
        self.inner.catalog.register_instance(&reg).await
    }

    /// Removes a service instance of this node. `Ok(false)` when unknown.
    pub async fn deregister_service(&self, id: &str) -> Result<bool, CatalogError> {
        self.inner
            .catalog
            .deregister_instance(self.node_name(), id)
            .await
    }

    /// `/v1/agent/check/pass|warn|fail|update/:id`.
    pub async fn update_ttl(
        &self,
        check_id: &str,
        status: CheckStatus,
        note: Option<String>,
    ) -> Result<(), CatalogError> {
        crate::names::validate_check_id(check_id)?;
        self.inner.runner.ttl_update(check_id, status, note).await
    }

    /// Stops heartbeating and running checks, as if the machine died: the leader marks the
    /// node critical once `node_dead_after_ms` passes.
    pub fn shutdown(&self) {
        if let Some(h) = self
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        self.inner.runner.shutdown();
    }
}

async fn heartbeat_loop(weak: std::sync::Weak<Inner>) {
    let mut registered = false;
    let mut failures: u64 = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let agent = Agent { inner };
        let interval = Duration::from_millis(agent.inner.config.heartbeat_interval_ms.max(10));
        if !registered {
            match agent.ensure_node().await {
                Ok(()) => registered = true,
                Err(e) => {
                    tracing::debug!(node = %agent.node_name(), error = %e, "node registration failed; retrying")
                }
            }
        }
        if registered {
            match agent.inner.catalog.heartbeat(agent.node_name()).await {
                Ok(()) => failures = 0,
                Err(CatalogError::NotFound(_)) => registered = false,
                Err(e) => {
                    failures += 1;
                    // Elections and restarts cause a few failures; only persistent ones matter.
                    if failures % 20 == 1 {
                        tracing::warn!(node = %agent.node_name(), error = %e, "heartbeat failed");
                    }
                }
            }
        }
        drop(agent);
        tokio::time::sleep(interval).await;
    }
}
