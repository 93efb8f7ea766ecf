use crate::placement::NodeId;

/// A service revision (monotonic per service).
pub type Revision = u64;

/// Identifier of a task.
pub type TaskId = String;

/// What the orchestrator wants the task to be doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DesiredState {
    #[default]
    Run,
    Stop,
}

/// What the agent last reported about the task's container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ObservedState {
    /// Created in the store, not yet picked up by the agent.
    #[default]
    Pending,
    /// The agent is pulling the image.
    Pulling,
    /// Container created and starting.
    Starting,
    Running,
    /// The container exited.
    Exited {
        code: i32,
    },
    /// The task could not be run (pull, create or start failed).
    Failed {
        reason: String,
    },
}

impl ObservedState {
    /// Exited or failed: the task holds no resources and will not run again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ObservedState::Exited { .. } | ObservedState::Failed { .. }
        )
    }
}

/// Health as aggregated by the agent from the task's checks (see [`crate::health`]). Tasks
/// without checks are reported `Passing` once running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TaskHealth {
    #[default]
    Unknown,
    Passing,
    Critical,
}

/// Where a task is in the zero-downtime stop sequence (see [`super::stop`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StopPhase {
    /// Not being stopped.
    #[default]
    Active,
    /// Removed from the catalog at `since_ms`; the gateway stops routing to it while it drains.
    Draining { since_ms: u64 },
    /// Stop signal sent at `since_ms`; the agent kills it after the stop timeout.
    Stopping { since_ms: u64 },
    /// Gone: exited after being stopped, or dead and deregistered.
    Stopped,
}

/// One task of the service as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskSnapshot {
    pub id: TaskId,
    pub revision: Revision,
    pub desired: DesiredState,
    pub observed: ObservedState,
    pub health: TaskHealth,
    /// Start of the current uninterrupted `Passing` period, if passing now.
    pub healthy_since_ms: Option<u64>,
    pub stop_phase: StopPhase,
    /// The task reached `Running` at least once (separates "failed to start" from "crashed").
    pub reached_running: bool,
    /// The task's checks passed at least once. The gateway routes only to passing instances,
    /// so a task that never passed never received a request: it needs no drain and, while it
    /// stops, does not hold a place in the surge.
    pub ever_passed: bool,
    pub created_at_ms: u64,
    /// When the task was first seen on a down node (persisted by the IO loop on
    /// [`super::Action::MarkTaskLost`]). Kept after its node comes back, until the service no
    /// longer has more tasks than it needs ([`super::Action::MarkTaskFound`]), so the
    /// tasks that were lost are the ones stopped in favour of their replacements.
    pub lost_since_ms: Option<u64>,
    /// Node and zone, once placed.
    pub node: Option<NodeId>,
    pub zone: Option<String>,
}

impl TaskSnapshot {
    pub fn is_terminal(&self) -> bool {
        self.observed.is_terminal()
    }

    pub fn is_active(&self) -> bool {
        self.stop_phase == StopPhase::Active
    }

    /// Serving and passing, continuously for at least `min_healthy_time_ms`.
    pub fn is_healthy(&self, min_healthy_time_ms: u64, now_ms: u64) -> bool {
        self.observed == ObservedState::Running
            && self.health == TaskHealth::Passing
            && self
                .healthy_since_ms
                .is_some_and(|since| now_ms.saturating_sub(since) >= min_healthy_time_ms)
    }

    /// Could have received requests: it ran and its checks passed at some point.
    pub fn was_routable(&self) -> bool {
        self.reached_running && self.ever_passed
    }

    /// Running with a critical health check (checks only run once the task is running).
    pub fn is_critical(&self) -> bool {
        self.reached_running && self.health == TaskHealth::Critical && !self.is_terminal()
    }
}
