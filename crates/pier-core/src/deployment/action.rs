use std::fmt;

use super::task::{Revision, StopPhase, TaskId};
use super::DeploymentStatus;

/// Why a task is being stopped (shown by `pier service ps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Replaced by a task of the deployment's target revision.
    Replaced,
    /// Its container exited or failed; it is only being cleaned up.
    Died,
    /// Its health check is critical.
    Critical,
    /// Its node has been down for longer than the lost-task timeout: it is given up.
    NodeDown,
    /// Its node is no longer known to the cluster.
    NodeRemoved,
    /// Its node is draining (during a deployment; outside one the IO loop replaces first).
    NodeDraining,
    /// It was lost while its node was down and replaced; its node is back and a replacement
    /// passes its checks.
    ReplacedWhileLost,
    /// The service has more tasks than desired.
    ScaledDown,
    /// Someone set the task's desired state to `Stop`.
    Requested,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Replaced => "replaced by the new revision",
            StopReason::Died => "task exited",
            StopReason::Critical => "health check critical",
            StopReason::NodeDown => "node down",
            StopReason::NodeRemoved => "node removed",
            StopReason::NodeDraining => "node draining",
            StopReason::ReplacedWhileLost => "replaced while its node was down",
            StopReason::ScaledDown => "scaled down",
            StopReason::Requested => "stop requested",
        })
    }
}

/// One thing for the IO loop to do. Each task action also says which [`StopPhase`] to persist
/// for the task (see [`Action::stop_phase_after`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create `count` new tasks of `revision`; the scheduler places them. Tasks that cannot be
    /// placed should not be created (the next step asks again; a stall trips the deadline).
    StartTask { revision: Revision, count: u32 },
    /// Remove the task from the service catalog now, so the gateway stops routing to it.
    /// Persist `desired = Stop`, `stop_phase = Draining { since_ms: now }`.
    DeregisterTask { task: TaskId, reason: StopReason },
    /// Send the stop signal (the agent kills after the stop timeout).
    /// Persist `stop_phase = Stopping { since_ms: now }`.
    StopTask { task: TaskId },
    /// The task is gone. Persist `stop_phase = Stopped`; the record may be garbage-collected.
    MarkTaskStopped { task: TaskId },
    /// The task's node is down: persist `lost_since_ms = now`. Nothing else changes: it keeps
    /// `desired = Run` (its agent may only be cut off from the servers, its container still
    /// serving) and stays in the catalog, where its node's liveness check keeps it out of
    /// rotation; it just no longer counts, so a replacement starts elsewhere.
    MarkTaskLost { task: TaskId },
    /// The task's node is back and the service needs it: persist `lost_since_ms = None`.
    MarkTaskFound { task: TaskId },
    /// Set the deployment's status (also in the returned state).
    MarkDeployment {
        status: DeploymentStatus,
        reason: String,
    },
    /// Create a rollback deployment to `to_revision` (kind `Rollback`), starting now.
    StartRollback { to_revision: Revision },
}

impl Action {
    /// The stop phase to persist for the task this action concerns, if any.
    pub fn stop_phase_after(&self, now_ms: u64) -> Option<(&str, StopPhase)> {
        match self {
            Action::DeregisterTask { task, .. } => {
                Some((task, StopPhase::Draining { since_ms: now_ms }))
            }
            Action::StopTask { task } => Some((task, StopPhase::Stopping { since_ms: now_ms })),
            Action::MarkTaskStopped { task } => Some((task, StopPhase::Stopped)),
            _ => None,
        }
    }
}
