//! The orchestrator's tables in the store and the JSON documents kept in them.
//!
//! | table            | key                         | value                         | writer            |
//! |------------------|-----------------------------|-------------------------------|-------------------|
//! | `orch.services`  | service name                | [`ServiceDoc`]                | API + controller  |
//! | `orch.revisions` | `<service>/<revision:010>`  | `RevisionRecord`              | API               |
//! | `orch.deployments` | deployment id             | [`DeploymentDoc`]             | API + controller  |
//! | `orch.tasks`     | `<node>/<task id>`          | `TaskRecord` (desired half)   | controller        |
//! | `orch.task_status` | task id                   | `TaskStatus` (observed half)  | agents (via API)  |
//! | `orch.nodes`     | node name                   | `NodeRecord`                  | agents, API, controller |
//! | `orch.secrets`   | secret name                 | `secrets::SecretDoc` (sealed) | API               |
//!
//! Tasks are keyed by node so an agent's blocking watch covers exactly its own tasks; a task
//! never moves between nodes (a replacement is a new task). The persisted state of pier-core's
//! deployment controller and crash-loop back-off is mirrored here in serde types because
//! pier-core itself stays free of serde.

use std::collections::BTreeSet;

use pier_api::service::{
    DeploymentRecord, NodeRecord, RevisionRecord, ServiceRecord, TaskRecord, TaskStatus,
};
use pier_core::deployment::{
    DeploymentCounts, DeploymentKind, DeploymentSettings, DeploymentState, DeploymentStatus,
    FailureKind, FailureRecord, RestartState,
};
use pier_store::{Table, TypedTable};
use serde::{Deserialize, Serialize};

pub const SERVICES: Table = Table::from_static("orch.services");
pub const REVISIONS: Table = Table::from_static("orch.revisions");
pub const DEPLOYMENTS: Table = Table::from_static("orch.deployments");
pub const TASKS: Table = Table::from_static("orch.tasks");
pub const TASK_STATUS: Table = Table::from_static("orch.task_status");
pub const NODES: Table = Table::from_static("orch.nodes");

pub fn services() -> TypedTable<ServiceDoc> {
    TypedTable::new(SERVICES)
}
pub fn revisions() -> TypedTable<RevisionRecord> {
    TypedTable::new(REVISIONS)
}
pub fn deployments() -> TypedTable<DeploymentDoc> {
    TypedTable::new(DEPLOYMENTS)
}
pub fn tasks() -> TypedTable<TaskRecord> {
    TypedTable::new(TASKS)
}
pub fn task_status() -> TypedTable<TaskStatus> {
    TypedTable::new(TASK_STATUS)
}
pub fn nodes() -> TypedTable<NodeRecord> {
    TypedTable::new(NODES)
}

pub fn revision_key(service: &str, revision: u64) -> String {
    format!("{service}/{revision:010}")
}

pub fn task_key(node: &str, task_id: &str) -> String {
    format!("{node}/{task_id}")
}

/// A service as stored: the wire record plus the controller's crash-loop state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub record: ServiceRecord,
    #[serde(default)]
    pub restart: StoredRestart,
}

/// A deployment as stored: the wire record plus what pier-core's controller persists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploymentDoc {
    pub record: DeploymentRecord,
    pub settings: StoredSettings,
    /// Set on a rollback deployment: the revision that failed.
    pub rollback_from: Option<u64>,
    pub previous_stable: Option<u64>,
    pub state: StoredState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSettings {
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub min_healthy_time_ms: u64,
    pub healthy_deadline_ms: u64,
    pub failure_threshold: Option<u32>,
    pub auto_rollback: bool,
    pub drain_delay_ms: u64,
}

impl From<&StoredSettings> for DeploymentSettings {
    fn from(s: &StoredSettings) -> Self {
        DeploymentSettings {
            max_surge: s.max_surge,
            max_unavailable: s.max_unavailable,
            min_healthy_time_ms: s.min_healthy_time_ms,
            healthy_deadline_ms: s.healthy_deadline_ms,
            failure_threshold: s.failure_threshold,
            auto_rollback: s.auto_rollback,
            drain_delay_ms: s.drain_delay_ms,
        }
    }
}

impl DeploymentDoc {
    pub fn kind(&self) -> DeploymentKind {
        match self.rollback_from {
            Some(from_revision) => DeploymentKind::Rollback { from_revision },
            None => DeploymentKind::Update,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredState {
    pub status: StoredStatus,
    pub reason: Option<String>,
    pub started_at_ms: u64,
    pub last_progress_ms: u64,
    pub best_healthy: u32,
    #[serde(default)]
    pub fewest_old_left: Option<u32>,
    pub failures: Vec<StoredFailure>,
    pub counts: StoredCounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredStatus {
    #[default]
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct StoredCounts {
    pub desired: u32,
    pub placed: u32,
    pub healthy: u32,
    pub unhealthy: u32,
    pub failed: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredFailure {
    pub task: String,
    pub kind: StoredFailureKind,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredFailureKind {
    FailedToStart { reason: String },
    ExitedDuringStart { code: i32 },
    Exited { code: i32 },
    Crashed { reason: String },
    HealthCritical,
}

impl From<&FailureKind> for StoredFailureKind {
    fn from(k: &FailureKind) -> Self {
        match k {
            FailureKind::FailedToStart { reason } => StoredFailureKind::FailedToStart {
                reason: reason.clone(),
            },
            FailureKind::ExitedDuringStart { code } => {
                StoredFailureKind::ExitedDuringStart { code: *code }
            }
            FailureKind::Exited { code } => StoredFailureKind::Exited { code: *code },
            FailureKind::Crashed { reason } => StoredFailureKind::Crashed {
                reason: reason.clone(),
            },
            FailureKind::HealthCritical => StoredFailureKind::HealthCritical,
        }
    }
}

impl From<&StoredFailureKind> for FailureKind {
    fn from(k: &StoredFailureKind) -> Self {
        match k {
            StoredFailureKind::FailedToStart { reason } => FailureKind::FailedToStart {
                reason: reason.clone(),
            },
            StoredFailureKind::ExitedDuringStart { code } => {
                FailureKind::ExitedDuringStart { code: *code }
            }
            StoredFailureKind::Exited { code } => FailureKind::Exited { code: *code },
            StoredFailureKind::Crashed { reason } => FailureKind::Crashed {
                reason: reason.clone(),
            },
            StoredFailureKind::HealthCritical => FailureKind::HealthCritical,
        }
    }
}

pub fn status_to_core(s: StoredStatus) -> DeploymentStatus {
    match s {
        StoredStatus::InProgress => DeploymentStatus::InProgress,
        StoredStatus::Succeeded => DeploymentStatus::Succeeded,
        StoredStatus::Failed => DeploymentStatus::Failed,
        StoredStatus::RolledBack => DeploymentStatus::RolledBack,
    }
}

pub fn status_from_core(s: DeploymentStatus) -> StoredStatus {
    match s {
        DeploymentStatus::InProgress => StoredStatus::InProgress,
        DeploymentStatus::Succeeded => StoredStatus::Succeeded,
        DeploymentStatus::Failed => StoredStatus::Failed,
        DeploymentStatus::RolledBack => StoredStatus::RolledBack,
    }
}

impl From<&StoredState> for DeploymentState {
    fn from(s: &StoredState) -> Self {
        DeploymentState {
            status: status_to_core(s.status),
            reason: s.reason.clone(),
            started_at_ms: s.started_at_ms,
            last_progress_ms: s.last_progress_ms,
            best_healthy: s.best_healthy,
            fewest_old_left: s.fewest_old_left,
            failures: s
                .failures
                .iter()
                .map(|f| FailureRecord {
                    task: f.task.clone(),
                    kind: (&f.kind).into(),
                    at_ms: f.at_ms,
                })
                .collect(),
            counts: DeploymentCounts {
                desired: s.counts.desired,
                placed: s.counts.placed,
                healthy: s.counts.healthy,
                unhealthy: s.counts.unhealthy,
                failed: s.counts.failed,
            },
        }
    }
}

impl From<&DeploymentState> for StoredState {
    fn from(s: &DeploymentState) -> Self {
        StoredState {
            status: status_from_core(s.status),
            reason: s.reason.clone(),
            started_at_ms: s.started_at_ms,
            last_progress_ms: s.last_progress_ms,
            best_healthy: s.best_healthy,
            fewest_old_left: s.fewest_old_left,
            failures: s
                .failures
                .iter()
                .map(|f| StoredFailure {
                    task: f.task.clone(),
                    kind: (&f.kind).into(),
                    at_ms: f.at_ms,
                })
                .collect(),
            counts: StoredCounts {
                desired: s.counts.desired,
                placed: s.counts.placed,
                healthy: s.counts.healthy,
                unhealthy: s.counts.unhealthy,
                failed: s.counts.failed,
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredRestart {
    pub consecutive_failures: u32,
    pub total_failures: u64,
    pub last_failure: Option<StoredFailureKind>,
    pub last_failure_ms: Option<u64>,
    pub next_restart_at_ms: Option<u64>,
    pub counting_since_ms: Option<u64>,
    pub counted: BTreeSet<String>,
}

impl Default for StoredRestart {
    fn default() -> Self {
        (&RestartState::default()).into()
    }
}

impl From<&RestartState> for StoredRestart {
    fn from(r: &RestartState) -> Self {
        StoredRestart {
            consecutive_failures: r.consecutive_failures,
            total_failures: r.total_failures,
            last_failure: r.last_failure.as_ref().map(Into::into),
            last_failure_ms: r.last_failure_ms,
            next_restart_at_ms: r.next_restart_at_ms,
            counting_since_ms: r.counting_since_ms,
            counted: r.counted.clone(),
        }
    }
}

impl From<&StoredRestart> for RestartState {
    fn from(r: &StoredRestart) -> Self {
        RestartState {
            consecutive_failures: r.consecutive_failures,
            total_failures: r.total_failures,
            last_failure: r.last_failure.as_ref().map(Into::into),
            last_failure_ms: r.last_failure_ms,
            next_restart_at_ms: r.next_restart_at_ms,
            counting_since_ms: r.counting_since_ms,
            counted: r.counted.clone(),
        }
    }
}
