use std::collections::BTreeSet;

use crate::placement::NodeId;

use super::action::Action;
use super::breaker::{default_failure_threshold, FailureRecord};
use super::task::{Revision, TaskSnapshot};

/// Rolling-update settings, in absolute task counts (the spec layer converts percentages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentSettings {
    /// Tasks allowed above the desired count while replacing (ECS `maximumPercent` − 100%).
    /// Tasks still draining or stopping count: they hold resources until they exit.
    pub max_surge: u32,
    /// Healthy tasks allowed below the desired count while replacing.
    pub max_unavailable: u32,
    /// A new task counts as healthy only after passing continuously this long (Nomad).
    pub min_healthy_time_ms: u64,
    /// The deployment fails when, for this long, no new task became healthy and no old task
    /// finished stopping (0: no deadline). Keep it above `drain_delay_ms` plus the agent's stop
    /// timeout, or a wave of stops that all finish together looks like a stall.
    pub healthy_deadline_ms: u64,
    /// Failures of new-revision tasks that trip the breaker; `None` for ECS's default.
    pub failure_threshold: Option<u32>,
    /// On failure, roll back to the previous stable revision.
    pub auto_rollback: bool,
    /// Time between removing a task from the catalog and sending it the stop signal.
    pub drain_delay_ms: u64,
}

impl Default for DeploymentSettings {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
            min_healthy_time_ms: 10_000,
            healthy_deadline_ms: 300_000,
            failure_threshold: None,
            auto_rollback: true,
            drain_delay_ms: 5_000,
        }
    }
}

/// Settings that make a deployment impossible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("max_surge and max_unavailable are both 0: no task could ever be replaced")]
    NoRoomToReplace,
    #[error("failure_threshold must be at least 1")]
    ZeroFailureThreshold,
}

impl DeploymentSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_surge == 0 && self.max_unavailable == 0 {
            return Err(SettingsError::NoRoomToReplace);
        }
        if self.failure_threshold == Some(0) {
            return Err(SettingsError::ZeroFailureThreshold);
        }
        Ok(())
    }

    /// The breaker threshold for `desired_count` tasks.
    pub fn failure_threshold_for(&self, desired_count: u32) -> u32 {
        self.failure_threshold
            .unwrap_or_else(|| default_failure_threshold(desired_count))
    }
}

/// Whether a deployment is a normal update or the automatic return to a stable revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeploymentKind {
    #[default]
    Update,
    /// Rolling back from the failed `from_revision`. The target revision is proven, so its
    /// tasks count as healthy as soon as they pass (no `min_healthy_time`), tasks of the
    /// failed revision are not counted against the surge cap, and a failing rollback is marked
    /// `Failed` without rolling back again.
    Rollback { from_revision: Revision },
}

/// A deployment as stored: what it wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub target_revision: Revision,
    /// The last revision whose deployment succeeded: the rollback target.
    pub previous_stable_revision: Option<Revision>,
    pub desired_count: u32,
    pub settings: DeploymentSettings,
    pub kind: DeploymentKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeploymentStatus {
    #[default]
    InProgress,
    Succeeded,
    Failed,
    /// Failed, and a rollback deployment was started.
    RolledBack,
}

impl DeploymentStatus {
    pub fn is_terminal(self) -> bool {
        self != DeploymentStatus::InProgress
    }
}

/// Counts of the target revision's tasks, refreshed by every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeploymentCounts {
    pub desired: u32,
    /// Tasks of the target revision that are starting or running and not being stopped.
    pub placed: u32,
    /// Placed tasks that have passed their checks for at least `min_healthy_time_ms`.
    pub healthy: u32,
    /// Placed tasks not (yet) healthy.
    pub unhealthy: u32,
    /// Tasks of the target revision counted by the circuit breaker.
    pub failed: u32,
}

/// A deployment's progress, persisted between steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentState {
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub started_at_ms: u64,
    /// Last time the number of healthy new tasks grew or the number of old tasks still
    /// running shrank (for `healthy_deadline_ms`).
    pub last_progress_ms: u64,
    /// Highest number of healthy new tasks seen so far.
    pub best_healthy: u32,
    /// Fewest old-revision tasks still running seen so far (`None` before the first step).
    pub fewest_old_left: Option<u32>,
    /// Failures counted by the circuit breaker, one per task.
    pub failures: Vec<FailureRecord>,
    pub counts: DeploymentCounts,
}

impl DeploymentState {
    /// The state of a deployment that starts at `now_ms`.
    pub fn started(now_ms: u64) -> Self {
        Self {
            started_at_ms: now_ms,
            last_progress_ms: now_ms,
            ..Default::default()
        }
    }
}

/// How long a task may stay lost on a down node before it is given up (marked stopped):
/// five minutes, the time Kubernetes gives a pod on an unreachable node by default. A longer
/// wait costs only a record shown as lost (its replacement already runs elsewhere); a shorter
/// one turns a longer partition back into the outage this avoids when the service has no
/// capacity elsewhere: the returning agent kills the task and a new one has to start.
pub const DEFAULT_LOST_TASK_TIMEOUT_MS: u64 = 300_000;

/// Everything [`super::step`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentSnapshot {
    pub deployment: Deployment,
    pub state: DeploymentState,
    /// Every task of the service, of every revision, in any phase.
    pub tasks: Vec<TaskSnapshot>,
    /// Nodes marked down (see [`super::node_liveness`]); their tasks are lost: replaced but
    /// not stopped (see `lost.rs`).
    pub down_nodes: BTreeSet<NodeId>,
    /// Nodes being drained; their tasks are stopped and replaced.
    pub draining_nodes: BTreeSet<NodeId>,
    /// Nodes no longer in the cluster; their tasks are given up at once.
    pub removed_nodes: BTreeSet<NodeId>,
    /// A task lost for this long is given up.
    pub lost_task_timeout_ms: u64,
}

impl Default for DeploymentSnapshot {
    fn default() -> Self {
        Self {
            deployment: Deployment::default(),
            state: DeploymentState::default(),
            tasks: Vec::new(),
            down_nodes: BTreeSet::new(),
            draining_nodes: BTreeSet::new(),
            removed_nodes: BTreeSet::new(),
            lost_task_timeout_ms: DEFAULT_LOST_TASK_TIMEOUT_MS,
        }
    }
}

/// What one step decided: actions to apply and the state to persist, in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentPlan {
    pub actions: Vec<Action>,
    pub state: DeploymentState,
}
