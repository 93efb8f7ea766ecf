//! The rolling-update step function.

use std::collections::{BTreeMap, BTreeSet};

use crate::placement::{choose_tasks_to_stop, StopCandidate};

use super::action::{Action, StopReason};
use super::breaker::{summarize_failures, FailureKind, FailureRecord};
use super::lost::{fate, for_stop, give_up_unwanted, trim, Fate, Floor, NodeState};
use super::model::{
    DeploymentCounts, DeploymentKind, DeploymentPlan, DeploymentSnapshot, DeploymentState,
    DeploymentStatus,
};
use super::stop::advance_stop;
use super::task::{ObservedState, StopPhase, TaskId, TaskSnapshot};

/// Advances a deployment by one step. Level-triggered: the plan depends only on the snapshot
/// and `now_ms`, so the IO loop may call it as often as it likes (on every task event and on a
/// timer); a step whose plan was not applied is simply recomputed.
pub fn step(snapshot: &DeploymentSnapshot, now_ms: u64) -> DeploymentPlan {
    let mut state = snapshot.state.clone();
    if state.status.is_terminal() {
        return DeploymentPlan {
            actions: Vec::new(),
            state,
        };
    }
    let deployment = &snapshot.deployment;
    let settings = &deployment.settings;
    if let Err(e) = settings.validate() {
        return finish(state, DeploymentStatus::Failed, e.to_string(), Vec::new());
    }

    let target = deployment.target_revision;
    let desired = deployment.desired_count as usize;
    let rollback = matches!(deployment.kind, DeploymentKind::Rollback { .. });
    let min_healthy_ms = if rollback {
        0
    } else {
        settings.min_healthy_time_ms
    };

    let mut tasks: Vec<&TaskSnapshot> = snapshot.tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let node_state = |t: &TaskSnapshot| node_state_of(snapshot, t);
    // Tasks on nodes that are down, draining or gone hold no place in the surge and are not
    // old tasks left to replace: the scheduler does not count those nodes.
    let away = |t: &TaskSnapshot| node_state(t) != NodeState::Up;
    // Lost/found flags first, then the stop sequences, in task id order.
    let marks_and_stops = |stopping: &BTreeMap<TaskId, StopReason>, mut marks: Vec<Action>| {
        marks.extend(stop_actions(
            &tasks,
            stopping,
            node_state,
            settings.drain_delay_ms,
            now_ms,
        ));
        marks
    };

    // 1. Active tasks that must stop because of their own condition, lost tasks, and breaker
    //    counting.
    let Classified {
        mut stopping,
        mut lost,
        mut marks,
    } = classify(snapshot, &tasks, &mut state, now_ms);
    give_up_unwanted(desired, &mut lost, &mut stopping, &mut marks);

    // 2. Live tasks: active, not lost and not about to stop.
    let is_live = |t: &&&TaskSnapshot, stopping: &BTreeMap<TaskId, StopReason>| {
        t.is_active() && !stopping.contains_key(&t.id) && !lost.contains(&t.id)
    };
    let mut live_new: Vec<&TaskSnapshot> = tasks
        .iter()
        .filter(|t| t.revision == target && is_live(t, &stopping))
        .copied()
        .collect();
    let live_old: Vec<&TaskSnapshot> = tasks
        .iter()
        .filter(|t| t.revision != target && is_live(t, &stopping))
        .copied()
        .collect();

    let threshold = settings.failure_threshold_for(deployment.desired_count) as usize;
    let mut verdict: Option<String> = None;
    if state.failures.len() >= threshold {
        verdict = Some(summarize_failures(target, &state.failures));
    }

    let mut start = 0usize;
    if verdict.is_none() {
        // 3. Too many new tasks: the desired count went down mid-deployment, or tasks lost
        //    while their node was down are back next to their replacements.
        let (running_old, not_running_old): (Vec<&TaskSnapshot>, Vec<&TaskSnapshot>) = live_old
            .iter()
            .partition(|t| t.observed == ObservedState::Running);
        let healthy_old = running_old
            .iter()
            .filter(|t| t.is_healthy(0, now_ms))
            .count();
        let floor = desired.saturating_sub(settings.max_unavailable as usize);
        let healthy = |t: &TaskSnapshot| t.is_healthy(min_healthy_ms, now_ms);
        let trimmed = trim(
            &live_new,
            desired,
            Floor {
                min_healthy: floor,
                healthy_elsewhere: healthy_old,
            },
            healthy,
            |t| !healthy(t),
        );
        for id in trimmed.scaled_down {
            stopping.insert(id, StopReason::ScaledDown);
        }
        for id in trimmed.returned {
            stopping.insert(id, StopReason::ReplacedWhileLost);
        }
        marks.extend(
            trimmed
                .found
                .into_iter()
                .map(|task| Action::MarkTaskFound { task }),
        );
        live_new.retain(|t| !stopping.contains_key(&t.id));

        // 4. Replace old tasks without going under the healthy floor. Old tasks that are not
        //    running yet serve nothing, so stopping them costs nothing. Running ones go only
        //    while the healthy count stays at or above `desired - max_unavailable`, one budget
        //    unit each; running ones whose health is not known (yet) go first, as they do not
        //    lower the healthy count, but they still use the budget so that an agent that lost
        //    its check state cannot make a step stop every old task at once.
        let healthy_new = live_new.iter().filter(|t| healthy(t)).count();
        for t in &not_running_old {
            stopping.insert(t.id.clone(), StopReason::Replaced);
        }
        let may_stop = (healthy_new + healthy_old).saturating_sub(floor);
        let candidates = stop_candidates(&running_old, |t| !t.is_healthy(0, now_ms));
        for id in choose_tasks_to_stop(&candidates, may_stop) {
            stopping.insert(id, StopReason::Replaced);
        }

        // 5. Start new tasks within the surge cap. Draining and stopping tasks still hold
        //    resources, so they count, except in a rollback, where getting the proven revision
        //    back fast matters more, and except tasks that never passed a check: they served
        //    nothing and go straight to their stop signal, so making the next new task wait
        //    for their stop timeout would only slow down a rollout (and the breaker, which
        //    needs the next failure to trip). The scheduler still counts their resources
        //    against their node until they exit, so no node is over-committed.
        let occupying = tasks
            .iter()
            .filter(|t| !t.is_terminal() && !away(t))
            .filter(|t| {
                let leaving = !t.is_active() || stopping.contains_key(&t.id);
                if rollback {
                    !leaving
                } else {
                    t.stop_phase != StopPhase::Stopped && (!leaving || t.was_routable())
                }
            })
            .count();
        let cap = desired.saturating_add(settings.max_surge as usize);
        start = cap
            .saturating_sub(occupying)
            .min(desired.saturating_sub(live_new.len()));

        // 6. Progress and the healthy deadline.
        let healthy_new_u32 = healthy_new as u32;
        if healthy_new_u32 > state.best_healthy {
            state.best_healthy = healthy_new_u32;
            state.last_progress_ms = now_ms;
        }
        let old_left = tasks
            .iter()
            .filter(|t| t.revision != target)
            .filter(|t| !t.is_terminal() && t.stop_phase != StopPhase::Stopped && !away(t))
            .count();
        // Old tasks finishing their stop also count as progress (a scale-to-zero deployment
        // or a long drain never grows the healthy count).
        let old_left_u32 = old_left as u32;
        if state
            .fewest_old_left
            .is_none_or(|fewest| old_left_u32 < fewest)
        {
            if state.fewest_old_left.is_some() {
                state.last_progress_ms = now_ms;
            }
            state.fewest_old_left = Some(old_left_u32);
        }
        state.counts = DeploymentCounts {
            desired: deployment.desired_count,
            placed: live_new.len() as u32,
            healthy: healthy_new_u32,
            unhealthy: (live_new.len() - healthy_new) as u32,
            failed: state.failures.len() as u32,
        };
        // Old tasks stopped in this very step still run until they exit, so `old_left`
        // (counted before this step's decisions) is the right test.
        if healthy_new >= desired && live_new.len() == desired && old_left == 0 {
            let actions = marks_and_stops(&stopping, marks);
            let reason = format!("{desired} tasks of revision {target} healthy");
            return finish(state, DeploymentStatus::Succeeded, reason, actions);
        }
        let deadline = settings.healthy_deadline_ms;
        if deadline > 0 && now_ms.saturating_sub(state.last_progress_ms) > deadline {
            verdict = Some(format!(
                "no progress for {}: {healthy_new} of {desired} tasks of revision {target} healthy",
                format_duration(deadline)
            ));
        }
    }

    state.counts.failed = state.failures.len() as u32;
    let mut actions = Vec::new();
    if let Some(reason) = verdict {
        actions.extend(marks_and_stops(&stopping, marks));
        let rollback_to = deployment
            .previous_stable_revision
            .filter(|&r| r != target && settings.auto_rollback && !rollback);
        let (status, reason) = match rollback_to {
            Some(to) => (
                DeploymentStatus::RolledBack,
                format!("{reason}; rolling back to revision {to}"),
            ),
            None if rollback => (
                DeploymentStatus::Failed,
                format!("{reason}; rollback failed, not rolling back again"),
            ),
            None if settings.auto_rollback => (
                DeploymentStatus::Failed,
                format!("{reason}; no previous stable revision to roll back to"),
            ),
            None => (DeploymentStatus::Failed, reason),
        };
        let mut plan = finish(state, status, reason, actions);
        if let Some(to) = rollback_to {
            plan.actions.push(Action::StartRollback { to_revision: to });
        }
        return plan;
    }

    // New tasks first: in a rollback this brings the proven revision back before anything else
    // happens, and in an update it never hurts to ask for capacity early.
    if start > 0 {
        actions.push(Action::StartTask {
            revision: target,
            count: start as u32,
        });
    }
    actions.extend(marks_and_stops(&stopping, marks));
    DeploymentPlan { actions, state }
}

fn finish(
    mut state: DeploymentState,
    status: DeploymentStatus,
    reason: String,
    mut actions: Vec<Action>,
) -> DeploymentPlan {
    state.status = status;
    state.reason = Some(reason.clone());
    actions.push(Action::MarkDeployment { status, reason });
    DeploymentPlan { actions, state }
}

/// Stop-sequence actions for every task, in task id order.
pub(super) fn stop_actions(
    tasks: &[&TaskSnapshot],
    stopping: &BTreeMap<TaskId, StopReason>,
    node_state: impl Fn(&TaskSnapshot) -> NodeState,
    drain_delay_ms: u64,
    now_ms: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for t in tasks {
        let reason = if t.is_active() {
            stopping.get(&t.id).copied()
        } else {
            None
        };
        let seen = for_stop(t, node_state(t));
        let (_, mut steps) = advance_stop(&seen, reason, drain_delay_ms, now_ms);
        actions.append(&mut steps);
    }
    actions
}

/// The state of `task`'s node as the deployment snapshot has it.
fn node_state_of(snapshot: &DeploymentSnapshot, task: &TaskSnapshot) -> NodeState {
    match task.node.as_ref() {
        Some(n) if snapshot.removed_nodes.contains(n) => NodeState::Removed,
        Some(n) if snapshot.down_nodes.contains(n) => NodeState::Down,
        Some(n) if snapshot.draining_nodes.contains(n) => NodeState::Draining,
        _ => NodeState::Up,
    }
}

/// What step 1 found.
struct Classified {
    /// Active tasks to stop and why.
    stopping: BTreeMap<TaskId, StopReason>,
    /// Active tasks on a down node, kept but not counted.
    lost: BTreeSet<TaskId>,
    /// `MarkTaskLost` for lost tasks not flagged yet.
    marks: Vec<Action>,
}

/// Step 1: which active tasks must stop because of their own condition or their node's, which
/// are lost, and the circuit breaker's count (into `state.failures`).
fn classify(
    snapshot: &DeploymentSnapshot,
    tasks: &[&TaskSnapshot],
    state: &mut DeploymentState,
    now_ms: u64,
) -> Classified {
    let target = snapshot.deployment.target_revision;
    let mut out = Classified {
        stopping: BTreeMap::new(),
        lost: BTreeSet::new(),
        marks: Vec::new(),
    };
    let mut counted: BTreeSet<TaskId> = state.failures.iter().map(|f| f.task.clone()).collect();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let node = node_state_of(snapshot, t);
        let reason = match fate(t, node, snapshot.lost_task_timeout_ms, now_ms) {
            Fate::Stop(reason) => reason,
            Fate::Lost { newly } => {
                if newly {
                    out.marks.push(Action::MarkTaskLost { task: t.id.clone() });
                }
                out.lost.insert(t.id.clone());
                continue;
            }
            Fate::Live => continue,
        };
        out.stopping.insert(t.id.clone(), reason);
        // Only tasks of this deployment count: a task lost with its node is not the
        // revision's fault, and a task stopped on request is not a failure.
        let counts_for_breaker = t.revision == target
            && t.created_at_ms >= state.started_at_ms
            && matches!(reason, StopReason::Died | StopReason::Critical);
        if counts_for_breaker && !counted.contains(&t.id) {
            if let Some(kind) = FailureKind::of(t) {
                counted.insert(t.id.clone());
                state.failures.push(FailureRecord {
                    task: t.id.clone(),
                    kind,
                    at_ms: now_ms,
                });
            }
        }
    }
    out
}

pub(super) fn stop_candidates(
    tasks: &[&TaskSnapshot],
    preferred: impl Fn(&TaskSnapshot) -> bool,
) -> Vec<StopCandidate> {
    tasks
        .iter()
        .map(|t| StopCandidate {
            id: t.id.clone(),
            node: t.node.clone().unwrap_or_default(),
            zone: t.zone.clone().unwrap_or_default(),
            preferred: preferred(t),
        })
        .collect()
}

/// "5m", "90s", "1500ms": durations in reasons, short and exact.
pub(crate) fn format_duration(ms: u64) -> String {
    let (minutes, ms_in_minute) = (ms / 60_000, ms % 60_000);
    let (seconds, ms_in_second) = (ms / 1_000, ms % 1_000);
    if ms_in_minute == 0 && minutes > 0 {
        format!("{minutes}m")
    } else if ms_in_second == 0 {
        format!("{seconds}s")
    } else {
        format!("{ms}ms")
    }
}
