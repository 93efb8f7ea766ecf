//! One consistent read of everything the controller and the API look at, and the
//! conversions from stored records to pier-core's snapshot types.

use std::collections::BTreeMap;

use pier_api::service::{
    DesiredState, NodeRecord, RevisionRecord, ServiceSpec, StopPhase, TaskHealth, TaskRecord,
    TaskState, TaskStatus,
};
use pier_core::deployment as core;
use pier_store::{Consistency, Store, Versioned};

use crate::catalog_sync::CatalogView;
use crate::error::OrchestratorError;
use crate::tables::{self, DeploymentDoc, ServiceDoc};

pub struct World {
    pub index: u64,
    pub services: BTreeMap<String, Versioned<ServiceDoc>>,
    /// (service, revision) → record.
    pub revisions: BTreeMap<(String, u64), RevisionRecord>,
    pub deployments: BTreeMap<String, Versioned<DeploymentDoc>>,
    /// task id → desired half.
    pub tasks: BTreeMap<String, Versioned<TaskRecord>>,
    /// task id → observed half.
    pub statuses: BTreeMap<String, Versioned<TaskStatus>>,
    pub nodes: BTreeMap<String, Versioned<NodeRecord>>,
    /// The catalog's pier-owned entries, read in the same view; only the controller's loads
    /// ([`World::load_with_catalog`]) read them.
    pub catalog: Option<CatalogView>,
}

impl World {
    pub async fn load(store: &Store, consistency: Consistency) -> Result<World, OrchestratorError> {
        Self::load_inner(store, consistency, false).await
    }

    /// The world with the catalog's pier-owned entries, for the controller's catalog pass.
    pub async fn load_with_catalog(
        store: &Store,
        consistency: Consistency,
    ) -> Result<World, OrchestratorError> {
        Self::load_inner(store, consistency, true).await
    }

    async fn load_inner(
        store: &Store,
        consistency: Consistency,
        with_catalog: bool,
    ) -> Result<World, OrchestratorError> {
        let world = store
            .read(consistency, |view| -> Result<World, OrchestratorError> {
                let services = tables::services().list(view, "")?.into_iter().collect();
                let revisions = tables::revisions()
                    .list(view, "")?
                    .into_iter()
                    .map(|(_, v)| ((v.value.service.clone(), v.value.revision), v.value))
                    .collect();
                let deployments = tables::deployments().list(view, "")?.into_iter().collect();
                let tasks = tables::tasks()
                    .list(view, "")?
                    .into_iter()
                    .map(|(_, v)| (v.value.id.clone(), v))
                    .collect();
                let statuses = tables::task_status().list(view, "")?.into_iter().collect();
                let nodes = tables::nodes().list(view, "")?.into_iter().collect();
                Ok(World {
                    index: view.applied_index(),
                    services,
                    revisions,
                    deployments,
                    tasks,
                    statuses,
                    nodes,
                    catalog: with_catalog.then(|| CatalogView::read(view)),
                })
            })
            .await??;
        Ok(world)
    }

    pub fn spec(&self, service: &str, revision: u64) -> Option<&ServiceSpec> {
        self.revisions
            .get(&(service.to_string(), revision))
            .map(|r| &r.spec)
    }

    pub fn status_of(&self, task_id: &str) -> TaskStatus {
        self.statuses
            .get(task_id)
            .map(|v| v.value.clone())
            .unwrap_or_default()
    }

    /// The task's node is down, or no longer known.
    pub fn node_down(&self, node: &str) -> bool {
        self.nodes.get(node).is_none_or(|n| n.value.down)
    }

    pub fn tasks_of<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = &'a Versioned<TaskRecord>> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.value.service == service)
    }

    /// The newest deployment of `service`.
    pub fn deployment_of(&self, service: &ServiceDoc) -> Option<&Versioned<DeploymentDoc>> {
        service
            .record
            .deployment
            .as_ref()
            .and_then(|id| self.deployments.get(id))
    }
}

/// Does the task still hold its node's resources (not stopped, not dead)?
pub fn holds_resources(task: &TaskRecord, status: &TaskStatus) -> bool {
    task.stop_phase != StopPhase::Stopped && !status.state.is_terminal()
}

pub fn task_snapshot(task: &TaskRecord, status: &TaskStatus) -> core::TaskSnapshot {
    let observed = match status.state {
        TaskState::Pending => core::ObservedState::Pending,
        TaskState::Pulling => core::ObservedState::Pulling,
        TaskState::Starting => core::ObservedState::Starting,
        TaskState::Running => core::ObservedState::Running,
        TaskState::Exited => core::ObservedState::Exited {
            code: status
                .exit_code
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(-1),
        },
        TaskState::Failed => core::ObservedState::Failed {
            reason: status.message.clone().unwrap_or_else(|| "failed".into()),
        },
    };
    let health = match status.health {
        TaskHealth::Unknown => core::TaskHealth::Unknown,
        TaskHealth::Healthy => core::TaskHealth::Passing,
        TaskHealth::Unhealthy => core::TaskHealth::Critical,
    };
    core::TaskSnapshot {
        id: task.id.clone(),
        revision: task.revision,
        desired: match task.desired {
            DesiredState::Running => core::DesiredState::Run,
            DesiredState::Stopped => core::DesiredState::Stop,
        },
        observed,
        health,
        healthy_since_ms: if status.health == TaskHealth::Healthy {
            status.healthy_since_ms
        } else {
            None
        },
        stop_phase: match task.stop_phase {
            StopPhase::Active => core::StopPhase::Active,
            StopPhase::Draining { since_ms } => core::StopPhase::Draining { since_ms },
            StopPhase::Stopping { since_ms } => core::StopPhase::Stopping { since_ms },
            StopPhase::Stopped => core::StopPhase::Stopped,
        },
        reached_running: status.started_at_ms.is_some(),
        // Statuses stored before `first_passed_at_ms` existed only know the current health.
        ever_passed: status.first_passed_at_ms.is_some() || status.health == TaskHealth::Healthy,
        created_at_ms: task.created_at_ms,
        lost_since_ms: task.lost_since_ms,
        node: Some(task.node.clone()),
        zone: Some(task.zone.clone()),
    }
}
