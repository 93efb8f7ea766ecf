//! Self-healing outside deployments: keep `desired_count` healthy tasks of the service's
//! current revision, with crash-loop back-off, and move work off nodes that are down.

use std::collections::{BTreeMap, BTreeSet};

use crate::placement::{choose_tasks_to_stop, NodeId};

use super::action::{Action, StopReason};
use super::breaker::FailureKind;
use super::controller::{stop_actions, stop_candidates};
use super::liveness::{node_liveness, NodeLiveness};
use super::task::{DesiredState, Revision, TaskId, TaskSnapshot};

/// Settings of the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileSettings {
    pub drain_delay_ms: u64,
    /// Heartbeat silence after which a node is down and its tasks are replaced elsewhere.
    pub node_down_after_ms: u64,
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
            node_down_after_ms: 30_000,
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
    /// treated as lost (the node was removed).
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
    let lost = |t: &TaskSnapshot| {
        t.node
            .as_deref()
            .is_some_and(|n| !matches!(liveness.get(n), Some(NodeLiveness::Alive { .. })))
    };

    let mut tasks: Vec<&TaskSnapshot> = snapshot.tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));

    let mut stopping: BTreeMap<TaskId, StopReason> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let reason = if t.desired == DesiredState::Stop {
            StopReason::Requested
        } else if lost(t) {
            StopReason::NodeDown
        } else if t.is_terminal() {
            StopReason::Died
        } else if t.is_critical() {
            StopReason::Critical
        } else {
            continue;
        };
        if matches!(reason, StopReason::Died | StopReason::Critical) {
            if let Some(kind) = FailureKind::of(t) {
                restart.record(t, kind, settings, now_ms);
            }
        }
        stopping.insert(t.id.clone(), reason);
    }

    let mut live: Vec<&TaskSnapshot> = tasks
        .iter()
        .filter(|t| t.is_active() && !stopping.contains_key(&t.id))
        .copied()
        .collect();
    let desired = snapshot.desired_count as usize;
    if live.len() > desired {
        let candidates = stop_candidates(&live, |t| {
            t.revision != snapshot.revision || !t.is_healthy(0, now_ms)
        });
        for id in choose_tasks_to_stop(&candidates, live.len() - desired) {
            stopping.insert(id, StopReason::ScaledDown);
        }
        live.retain(|t| !stopping.contains_key(&t.id));
    }

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
    actions.extend(stop_actions(
        &tasks,
        &stopping,
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
