//! What the orchestrator stores (as JSON, one value per key) and serves under
//! `/api/v1/services`, `/api/v1/deployments`, `/api/v1/tasks` and `/api/v1/nodes`.
//! The desired half of a task (written by the controller) and its observed half (written
//! by the agent) are separate records so the two writers never contend, and an agent's
//! blocking watch on its tasks wakes only when what it must do changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::ServiceSpec;

/// A service: its desired count and which revision should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub count: u32,
    /// The revision tasks should run now (a rollback points this back at an older one).
    pub revision: u64,
    /// Highest revision number handed out (revisions are never reused).
    pub latest_revision: u64,
    /// Last revision whose deployment succeeded: where an automatic rollback goes.
    pub stable_revision: Option<u64>,
    /// The newest deployment of this service.
    pub deployment: Option<String>,
    /// Why tasks could not be placed, from the scheduler; cleared once they are.
    pub placement_error: Option<String>,
    /// Crash-loop back-off in words ("restarting in 8s (exited 1, 4 times)"), if waiting.
    pub restart_status: Option<String>,
    /// `pier service rm`: tasks are being stopped, then the service is deleted.
    pub deleting: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An immutable revision of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub service: String,
    pub revision: u64,
    pub spec: ServiceSpec,
    pub created_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
    /// A newer deployment of the service replaced this one before it finished.
    Superseded,
}

impl DeploymentStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, DeploymentStatus::InProgress)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled_back",
            DeploymentStatus::Superseded => "superseded",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub at_ms: u64,
    pub message: String,
}

/// A rollout of one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub service: String,
    pub revision: u64,
    /// What was running before (absent for a first deploy).
    pub from_revision: Option<u64>,
    pub status: DeploymentStatus,
    pub desired: u32,
    /// Tasks of `revision` placed so far (running or not).
    pub placed: u32,
    /// Tasks of `revision` healthy for at least the minimum healthy time.
    pub healthy: u32,
    /// Tasks of `revision` that failed (before or after reaching running).
    pub failed: u32,
    /// Tasks of older revisions still running.
    pub old_running: u32,
    pub failure_threshold: u32,
    pub auto_rollback: bool,
    /// Set on the automatic rollback deployment: the deployment that failed.
    pub rollback_of: Option<String>,
    /// Set on a failed deployment that was rolled back: the rollback deployment.
    pub rolled_back_by: Option<String>,
    pub reason: Option<String>,
    pub events: Vec<DeploymentEvent>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
}

/// Where a task is in the zero-downtime stop sequence: out of the catalog first
/// (`draining`), stop signal after the drain delay (`stopping`), then `stopped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum StopPhase {
    #[default]
    Active,
    Draining {
        since_ms: u64,
    },
    Stopping {
        since_ms: u64,
    },
    Stopped,
}

/// The desired half of a task, written by the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service: String,
    pub revision: u64,
    pub node: String,
    pub zone: String,
    pub desired: DesiredState,
    pub stop_phase: StopPhase,
    pub stop_reason: Option<String>,
    pub created_at_ms: u64,
}

/// What the agent reports about a task's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created by the controller, the agent has not acted yet.
    Pending,
    Pulling,
    Starting,
    Running,
    /// The container exited (on its own or after a stop); see `exit_code`.
    Exited,
    /// Could not be run (pull, create or start failed); see `message`.
    Failed,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Exited | TaskState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Pulling => "pulling",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskHealth {
    /// No check has decided yet.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

/// The observed half of a task, written by its agent (`PUT /api/v1/tasks/:id/status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub health: TaskHealth,
    /// Agent wall clock when health last became `Healthy`.
    pub healthy_since_ms: Option<u64>,
    pub container_id: Option<String>,
    /// Address the host ports are bound on.
    pub host_ip: Option<String>,
    /// Container port → host port.
    pub host_ports: BTreeMap<u16, u16>,
    pub exit_code: Option<i64>,
    /// Why it failed or what it is doing, in words.
    pub message: Option<String>,
    pub started_at_ms: Option<u64>,
    /// When the task's checks first passed; kept by the server once known. A task that never
    /// passed was never routed to, so stopping it needs no drain.
    #[serde(default)]
    pub first_passed_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// The last lines the container wrote before it exited on its own (for `pier logs` and
    /// `pier service ps` once the container is gone).
    #[serde(default)]
    pub last_output: Option<String>,
    pub updated_at_ms: u64,
}

impl Default for TaskStatus {
    fn default() -> Self {
        TaskStatus {
            state: TaskState::Pending,
            health: TaskHealth::Unknown,
            healthy_since_ms: None,
            container_id: None,
            host_ip: None,
            host_ports: BTreeMap::new(),
            exit_code: None,
            message: None,
            started_at_ms: None,
            first_passed_at_ms: None,
            finished_at_ms: None,
            last_output: None,
            updated_at_ms: 0,
        }
    }
}

/// A task as the API shows it: desired and observed halves together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub task: TaskRecord,
    pub status: TaskStatus,
    /// One word for people: pending, pulling, starting, running, healthy, unhealthy,
    /// draining, stopping, stopped, exited, failed.
    pub display_state: String,
}

impl TaskView {
    pub fn new(task: TaskRecord, status: TaskStatus) -> TaskView {
        let display_state = match task.stop_phase {
            StopPhase::Draining { .. } => "draining",
            StopPhase::Stopping { .. } => "stopping",
            StopPhase::Stopped if status.state == TaskState::Failed => "failed",
            StopPhase::Stopped
                if status.exit_code.is_some_and(|c| c != 0)
                    && task.stop_reason.as_deref() == Some("task exited") =>
            {
                "exited"
            }
            StopPhase::Stopped => "stopped",
            StopPhase::Active => match (status.state, status.health) {
                (TaskState::Running, TaskHealth::Healthy) => "healthy",
                (TaskState::Running, TaskHealth::Unhealthy) => "unhealthy",
                (state, _) => state.as_str(),
            },
        }
        .to_string();
        TaskView {
            task,
            status,
            display_state,
        }
    }
}

/// A task with the spec of its revision: what an agent needs to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTask {
    pub task: TaskRecord,
    pub spec: ServiceSpec,
}

/// `GET /api/v1/nodes/:node/tasks`: every task assigned to the node that is not stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTasks {
    pub index: u64,
    pub tasks: Vec<AgentTask>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Draining,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

/// A node agent as registered (`PUT /api/v1/nodes/:name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub zone: String,
    /// The agent's own HTTP listener (logs), e.g. "127.0.0.1:7070".
    pub agent_addr: String,
    /// Address containers' host ports are bound on.
    pub host_ip: String,
    pub attributes: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    /// Set by `pier node drain`: no new tasks, existing ones moved away.
    pub draining: bool,
    /// Set by the controller on the leader after missed heartbeats.
    pub down: bool,
    pub registered_at_ms: u64,
}

impl NodeRecord {
    pub fn state(&self) -> NodeState {
        if self.down {
            NodeState::Down
        } else if self.draining {
            NodeState::Draining
        } else {
            NodeState::Ready
        }
    }
}

/// Body of `PUT /api/v1/nodes/:name` (agent registration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    pub zone: String,
    pub agent_addr: String,
    pub host_ip: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// A node with its allocation, for `pier node ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRecord,
    pub state: NodeState,
    pub tasks: u32,
    pub allocated_cpu_millis: u64,
    pub allocated_memory_mb: u64,
    /// Milliseconds since the leader last heard from the agent (absent on followers).
    pub last_heartbeat_age_ms: Option<u64>,
}

/// Body of `PUT /api/v1/nodes/:name/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// false undoes a drain.
    pub draining: bool,
}

/// Body of `POST /api/v1/services` (`pier deploy`): the service file's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub file: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResponse {
    pub service: String,
    pub revision: u64,
    /// The deployment rolling it out; absent when nothing changed.
    pub deployment: Option<String>,
    /// `created`, `updated`, `scaled` or `unchanged`.
    pub outcome: String,
}

/// `pier service ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub image: String,
    pub revision: u64,
    pub desired: u32,
    pub running: u32,
    pub healthy: u32,
    pub deployment_status: Option<DeploymentStatus>,
    pub route: String,
    pub placement_error: Option<String>,
}

/// `pier service inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDetail {
    pub service: ServiceRecord,
    pub spec: ServiceSpec,
    pub deployment: Option<DeploymentRecord>,
    pub revisions: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub count: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Default: the revision before the current one.
    pub revision: Option<u64>,
}
