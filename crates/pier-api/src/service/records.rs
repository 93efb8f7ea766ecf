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
    /// Set by the controller when the task's node went down: the task is replaced elsewhere
    /// but keeps running where it is, in case its node was only cut off; when the node is back
    /// it is stopped once its replacement passes (or kept, if the service needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_since_ms: Option<u64>,
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
    /// The container's address on the node's pier network (reachable from the node's other
    /// containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_ip: Option<String>,
    /// Services of `needs` with no healthy instance yet: the task waits for them to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
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
            network_ip: None,
            waiting_for: Vec::new(),
            updated_at_ms: 0,
        }
    }
}

/// A task as the API shows it: desired and observed halves together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub task: TaskRecord,
    pub status: TaskStatus,
    /// One word for people: pending, pulling, starting, running, healthy, unhealthy, lost,
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
                (TaskState::Pending, _) if !status.waiting_for.is_empty() => "waiting",
                (state, _) => state.as_str(),
            },
        }
        .to_string();
        let display_state = if display_state == "waiting" {
            format!("waiting for {}", status.waiting_for.join(", "))
        } else {
            display_state
        };
        TaskView {
            task,
            status,
            display_state,
        }
    }

    /// Shows an active task on a node that is down as "lost": whatever its agent last
    /// reported, nobody can tell what it is doing now.
    pub fn on_node(mut self, node_down: bool) -> TaskView {
        if node_down && self.task.stop_phase == StopPhase::Active {
            self.display_state = "lost".to_string();
        }
        self
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
    /// Named volumes the agent holds (reported by it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Host directories under which services may mount host paths (`--volume-root`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_roots: Vec<String>,
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
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub volume_roots: Vec<String>,
}

/// A named volume as `pier volume ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub node: String,
    /// Services whose current revision mounts it.
    pub used_by: Vec<String>,
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
    /// The variables of the file's `env_file`, read by the CLI on its machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<BTreeMap<String, String>>,
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
    /// The digest-pinned image agents run (`image@sha256:…`), when the image is in pier's
    /// registry: the console's registry page tells from it which services run a digest.
    #[serde(default)]
    pub pinned_image: Option<String>,
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

/// Whether the cluster's quorum acknowledges an agent's heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterContact {
    /// Started, no heartbeat acknowledged yet (within the cut-off time).
    Connecting,
    /// The last heartbeat was acknowledged by a leader that a quorum follows.
    Connected,
    /// No heartbeat acknowledged for longer than the cut-off time: the cluster may have marked
    /// this node down and replaced its tasks elsewhere. Its containers keep running.
    CutOff,
}

/// `GET /v1/agent/health` on the agent's own listener (200 unless cut off, then 503).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    pub node: String,
    /// The server the agent talks to.
    pub server: String,
    pub cluster: ClusterContact,
    /// Wall clock (ms since the epoch) of the last acknowledged heartbeat.
    pub last_ack_ms: Option<u64>,
    /// Since when the agent has been cut off: its last acknowledged heartbeat (or its start).
    pub cut_off_since_ms: Option<u64>,
    /// Why the last heartbeat was not acknowledged, if it was not.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod waiting_tests {
    use super::*;

    fn task() -> TaskRecord {
        TaskRecord {
            id: "t1".into(),
            service: "web".into(),
            revision: 1,
            node: "n".into(),
            zone: "z".into(),
            desired: DesiredState::Running,
            stop_phase: StopPhase::Active,
            stop_reason: None,
            created_at_ms: 0,
            lost_since_ms: None,
        }
    }

    #[test]
    fn a_task_waiting_for_its_needs_says_so() {
        let status = TaskStatus {
            waiting_for: vec!["api".into(), "db".into()],
            ..Default::default()
        };
        assert_eq!(
            TaskView::new(task(), status).display_state,
            "waiting for api, db"
        );
        assert_eq!(
            TaskView::new(task(), TaskStatus::default()).display_state,
            "pending"
        );
    }
}
