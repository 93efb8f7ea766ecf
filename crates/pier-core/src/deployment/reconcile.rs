//! Self-healing outside deployments: keep `desired_count` healthy tasks of the service's
//! current revision, with crash-loop back-off, and replace the tasks lost on nodes that are
//! down (stopping them only once their node is back and their replacements pass).

use std::collections::{BTreeMap, BTreeSet};

use crate::placement::NodeId;

use super::action::{Action, StopReason};
use super::breaker::FailureKind;
use super::controller::stop_actions;
use super::liveness::{node_liveness, NodeLiveness};
use super::lost::{fate, give_up_unwanted, trim, Fate, Floor, NodeState};
use super::model::DEFAULT_LOST_TASK_TIMEOUT_MS;
use super::task::{Revision, TaskId, TaskSnapshot};

/// Settings of the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileSettings {
    pub drain_delay_ms: u64,
    /// The service's `max_unavailable`: tasks back from a down node next to their
    /// replacements are stopped only while `desired − max_unavailable` tasks stay healthy.
    pub max_unavailable: u32,
    /// Heartbeat silence after which a node is down and its tasks are replaced elsewhere.
    pub node_down_after_ms: u64,
    /// A task lost on a down node for this long is given up (marked stopped).
    pub lost_task_timeout_ms: u64,
    /// Delay before the first restart after a crash; doubles with each consecutive crash.
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// Consecutive-crash count resets once no task failed for this long and a task is healthy.
    pub restart_backoff_reset_after_ms: u64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            drain_delay_ms: 5_000,
            max_unavailable: 0,
            node_down_after_ms: 30_000,
            lost_task_timeout_ms: DEFAULT_LOST_TASK_TIMEOUT_MS,
            restart_backoff_initial_ms: 1_000,
            restart_backoff_max_ms: 300_000,
            restart_backoff_reset_after_ms: 600_000,
        }
    }
}

/// A node's last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeHeartbeat {
    pub id: NodeId,
    pub last_heartbeat_ms: u64,
}

/// Crash-loop back-off of a service, persisted between reconciles.
///
/// Failures are grouped in generations: the first failure of a task started since the last
/// restart opens a back-off of `initial × 2^(n−1)` (capped) and bumps the consecutive count
/// `n`; more tasks failing before that restart happens belong to the same generation and do
/// not bump it again (ten replicas crashing together are one crash, not ten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartState {
    pub consecutive_failures: u32,
    pub total_failures: u64,
    pub last_failure: Option<FailureKind>,
    pub last_failure_ms: Option<u64>,
    /// No replacement starts before this time.
    pub next_restart_at_ms: Option<u64>,
    /// Failures of tasks created at or after this time bump the count; `None` while waiting
    /// for the back-off to pass.
    pub counting_since_ms: Option<u64>,
    /// Tasks already counted (pruned to the tasks still in the snapshot).
    pub counted: BTreeSet<TaskId>,
}

impl Default for RestartState {
    fn default() -> Self {
        Self {
            consecutive_failures: 0,
            total_failures: 0,
            last_failure: None,
            last_failure_ms: None,
            next_restart_at_ms: None,
            counting_since_ms: Some(0),
            counted: BTreeSet::new(),
        }
    }
}

impl RestartState {
    /// "restarting in 8s (exited 1, 4 times)" while waiting, for `pier service ps`.
    pub fn status_line(&self, now_ms: u64) -> Option<String> {
        let at = self.next_restart_at_ms.filter(|&at| at > now_ms)?;
        let wait_s = (at - now_ms).div_ceil(1_000);
        let what = self
            .last_failure
            .as_ref()
            .map(FailureKind::short)
            .unwrap_or_else(|| "failed".to_owned());
        let n = self.consecutive_failures;
        let times = if n == 1 {
            "once".to_owned()
        } else {
            format!("{n} times")
        };
        Some(format!("restarting in {wait_s}s ({what}, {times})"))
    }

    fn record(
        &mut self,
        task: &TaskSnapshot,
        kind: FailureKind,
        settings: &ReconcileSettings,
        now_ms: u64,
    ) {
        if !self.counted.insert(task.id.clone()) {
            return;
        }
        self.total_failures += 1;
        self.last_failure = Some(kind);
        self.last_failure_ms = Some(now_ms);
        if let Some(since) = self.counting_since_ms {
            if task.created_at_ms >= since {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.counting_since_ms = None;
                self.next_restart_at_ms = Some(
                    now_ms.saturating_add(backoff_delay_ms(self.consecutive_failures, settings)),
                );
            }
        }
    }
}

/// Sorts the active tasks: those that begin their stop sequence now (recording crashes for the
/// back-off), those lost on down nodes, and the `MarkTaskLost` flags to persist.
fn sort_out(
    tasks: &[&TaskSnapshot],
    node_state: impl Fn(&TaskSnapshot) -> NodeState,
    restart: &mut RestartState,
    settings: &ReconcileSettings,
    now_ms: u64,
) -> (BTreeMap<TaskId, StopReason>, BTreeSet<TaskId>, Vec<Action>) {
    let mut stopping = BTreeMap::new();
    let mut lost = BTreeSet::new();
    let mut marks = Vec::new();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let reason = match fate(t, node_state(t), settings.lost_task_timeout_ms, now_ms) {
            Fate::Stop(reason) => reason,
            Fate::Lost { newly } => {
                if newly {
                    marks.push(Action::MarkTaskLost { task: t.id.clone() });
                }
                lost.insert(t.id.clone());
                continue;
            }
            Fate::Live => continue,
        };
        if matches!(reason, StopReason::Died | StopReason::Critical) {
            if let Some(kind) = FailureKind::of(t) {
                restart.record(t, kind, settings, now_ms);
            }
        }
        stopping.insert(t.id.clone(), reason);
    }
    (stopping, lost, marks)
}

/// `initial × 2^(n−1)`, capped at `max`.
pub fn backoff_delay_ms(consecutive_failures: u32, settings: &ReconcileSettings) -> u64 {
    let shift = consecutive_failures.saturating_sub(1).min(63);
    settings
        .restart_backoff_initial_ms
        .saturating_mul(1u64 << shift)
        .min(settings.restart_backoff_max_ms)
}

/// Everything [`reconcile`] looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    /// The revision replacements are started with.
    pub revision: Revision,
    pub desired_count: u32,
    /// Every task of the service.
    pub tasks: Vec<TaskSnapshot>,
    /// Heartbeats of every node the service's tasks are on. A task on a node missing here is
    /// given up (the node was removed).
    pub nodes: Vec<NodeHeartbeat>,
    pub settings: ReconcileSettings,
    pub restart: RestartState,
}

/// What one reconcile decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    pub actions: Vec<Action>,
    /// Persist with the actions.
    pub restart: RestartState,
    /// Nodes found down, in id order (the IO loop marks them `Down` for the scheduler).
    pub down_nodes: Vec<NodeId>,
    /// Why nothing was started although tasks are missing, if so.
    pub waiting: Option<String>,
}

/// One self-healing pass. Called by the IO loop when no deployment of the service is in
/// progress (the deployment controller heals while it runs); it also carries any stop sequence
/// a finished deployment left behind to its end.
pub fn reconcile(snapshot: &ServiceSnapshot, now_ms: u64) -> ReconcilePlan {
    let settings = &snapshot.settings;
    let mut restart = snapshot.restart.clone();
    let present: BTreeSet<&str> = snapshot.tasks.iter().map(|t| t.id.as_str()).collect();
    restart.counted.retain(|id| present.contains(id.as_str()));

    let mut liveness: BTreeMap<&str, NodeLiveness> = BTreeMap::new();
    for n in &snapshot.nodes {
        liveness.insert(
            n.id.as_str(),
            node_liveness(n.last_heartbeat_ms, now_ms, settings.node_down_after_ms),
        );
    }
    let down_nodes: Vec<NodeId> = liveness
        .iter()
        .filter(|(_, l)| matches!(l, NodeLiveness::Down { .. }))
        .map(|(id, _)| (*id).to_owned())
        .collect();
    let node_state = |t: &TaskSnapshot| match t.node.as_deref() {
        None => NodeState::Up,
        Some(n) => match liveness.get(n) {
            Some(NodeLiveness::Alive { .. }) => NodeState::Up,
            Some(NodeLiveness::Down { .. }) => NodeState::Down,
            None => NodeState::Removed,
        },
    };

    let mut tasks: Vec<&TaskSnapshot> = snapshot.tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));

    let desired = snapshot.desired_count as usize;
    let (mut stopping, mut lost, mut marks) =
        sort_out(&tasks, node_state, &mut restart, settings, now_ms);
    give_up_unwanted(desired, &mut lost, &mut stopping, &mut marks);
    let mut live: Vec<&TaskSnapshot> = tasks
        .iter()
        .filter(|t| t.is_active() && !stopping.contains_key(&t.id) && !lost.contains(&t.id))
        .copied()
        .collect();
    let healthy = |t: &TaskSnapshot| t.is_healthy(0, now_ms);
    let trimmed = trim(
        &live,
        desired,
        Floor {
            min_healthy: desired.saturating_sub(settings.max_unavailable as usize),
            healthy_elsewhere: 0,
        },
        healthy,
        |t| t.revision != snapshot.revision || !healthy(t),
    );
    stopping.extend(
        trimmed
            .scaled_down
            .into_iter()
            .map(|id| (id, StopReason::ScaledDown)),
    );
    stopping.extend(
        trimmed
            .returned
            .into_iter()
            .map(|id| (id, StopReason::ReplacedWhileLost)),
    );
    marks.extend(
        trimmed
            .found
            .into_iter()
            .map(|task| Action::MarkTaskFound { task }),
    );
    live.retain(|t| !stopping.contains_key(&t.id));

    // A service that has been healthy for a while since its last crash starts afresh.
    if let Some(last) = restart.last_failure_ms {
        let quiet = now_ms.saturating_sub(last) >= settings.restart_backoff_reset_after_ms;
        if restart.consecutive_failures > 0 && quiet && live.iter().any(|t| t.is_healthy(0, now_ms))
        {
            restart.consecutive_failures = 0;
            restart.next_restart_at_ms = None;
            restart.counting_since_ms = Some(0);
        }
    }

    let mut actions = Vec::new();
    let mut waiting = None;
    let missing = desired.saturating_sub(live.len());
    match restart.next_restart_at_ms {
        Some(at) if at > now_ms => {
            if missing > 0 {
                waiting = restart.status_line(now_ms);
            }
        }
        pending => {
            if pending.is_some() {
                // The back-off has passed: the tasks started from now on are a new generation.
                restart.next_restart_at_ms = None;
                restart.counting_since_ms = Some(now_ms);
            }
            if missing > 0 {
                actions.push(Action::StartTask {
                    revision: snapshot.revision,
                    count: missing as u32,
                });
            }
        }
    }
    actions.extend(marks);
    actions.extend(stop_actions(
        &tasks,
        &stopping,
        node_state,
        settings.drain_delay_ms,
        now_ms,
    ));
    ReconcilePlan {
        actions,
        restart,
        down_nodes,
        waiting,
    }
}
