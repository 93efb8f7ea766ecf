//! Tasks on nodes that stopped heartbeating: lost, not stopped.
//!
//! A node that misses its heartbeats is often only cut off from the servers (a partition, a
//! frozen agent) while its containers keep serving. Stopping its tasks would have its agent
//! kill every one of them the moment it is back, all at once, whatever `max_unavailable`
//! says. So a task on a down node is *lost*: it leaves the live count (replacements start
//! elsewhere at once, no back-off, nothing counted as a failure) but keeps `desired = Run`,
//! and the IO loop records when it was lost ([`Action::MarkTaskLost`]).
//!
//! When its node comes back, the task is live again. If that leaves the service with more
//! tasks than it needs, [`trim`] stops the returned tasks — never their replacements that are
//! still starting — and a healthy one only while the service keeps `desired −
//! max_unavailable` healthy tasks, so the old tasks go as their replacements pass. Once the
//! service has no surplus, the flags are cleared ([`Action::MarkTaskFound`]).
//!
//! A lost task whose node stays down for longer than the lost-task timeout, or whose node was
//! removed, is given up: deregistered and marked stopped in one step, since no agent will
//! report its exit (if the node ever comes back, its agent removes the container of a stopped
//! task).
//!
//! [`Action::MarkTaskLost`]: super::Action::MarkTaskLost
//! [`Action::MarkTaskFound`]: super::Action::MarkTaskFound

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::placement::choose_tasks_to_stop;

use super::action::{Action, StopReason};
use super::controller::stop_candidates;
use super::task::{DesiredState, ObservedState, TaskId, TaskSnapshot};

/// How the cluster sees a task's node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeState {
    /// Heartbeating (or the task is not placed yet).
    Up,
    /// Missed its heartbeats for longer than the down timeout.
    Down,
    /// Draining: its tasks move elsewhere.
    Draining,
    /// Not a member of the cluster any more.
    Removed,
}

impl NodeState {
    /// Nobody will report what happens to the node's tasks.
    pub(super) fn unreachable(self) -> bool {
        matches!(self, NodeState::Down | NodeState::Removed)
    }
}

/// Where an active task stands with respect to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whereabouts {
    /// On a node that is up; never lost, or lost and already found again.
    Present,
    /// On a node that is up again after the task was lost (its flag is still set).
    Returned,
    /// On a down node within the lost-task timeout. `newly`: not flagged yet.
    Lost { newly: bool },
    /// Stop it now, without waiting for its agent.
    GivenUp(StopReason),
    /// On a draining node.
    Draining,
}

/// Where `task` stands, its node being in `node` state.
fn whereabouts(
    task: &TaskSnapshot,
    node: NodeState,
    lost_timeout_ms: u64,
    now_ms: u64,
) -> Whereabouts {
    match node {
        NodeState::Up if task.lost_since_ms.is_some() => Whereabouts::Returned,
        NodeState::Up => Whereabouts::Present,
        NodeState::Draining => Whereabouts::Draining,
        NodeState::Removed => Whereabouts::GivenUp(StopReason::NodeRemoved),
        // It exited before its node went silent: nothing will come back.
        NodeState::Down if task.is_terminal() => Whereabouts::GivenUp(StopReason::NodeDown),
        NodeState::Down => {
            let since = task.lost_since_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(since) >= lost_timeout_ms {
                Whereabouts::GivenUp(StopReason::NodeDown)
            } else {
                Whereabouts::Lost {
                    newly: task.lost_since_ms.is_none(),
                }
            }
        }
    }
}

/// What becomes of an active task in this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// Counts toward the desired count.
    Live,
    /// On a down node: neither counted nor stopped. `newly`: to be flagged now.
    Lost { newly: bool },
    /// Begins its stop sequence.
    Stop(StopReason),
}

/// The fate of active `task` from its own condition and its node's: asked to stop, given up
/// with its node, moved off a draining node, lost, dead, critical, or live.
pub(super) fn fate(
    task: &TaskSnapshot,
    node: NodeState,
    lost_timeout_ms: u64,
    now_ms: u64,
) -> Fate {
    if task.desired == DesiredState::Stop {
        return Fate::Stop(StopReason::Requested);
    }
    match whereabouts(task, node, lost_timeout_ms, now_ms) {
        Whereabouts::GivenUp(reason) => Fate::Stop(reason),
        Whereabouts::Draining => Fate::Stop(StopReason::NodeDraining),
        Whereabouts::Lost { newly } => Fate::Lost { newly },
        Whereabouts::Present | Whereabouts::Returned if task.is_terminal() => {
            Fate::Stop(StopReason::Died)
        }
        Whereabouts::Present | Whereabouts::Returned if task.is_critical() => {
            Fate::Stop(StopReason::Critical)
        }
        Whereabouts::Present | Whereabouts::Returned => Fate::Live,
    }
}

/// The task as the stop sequence must see it: on a node that nobody hears from, a task whose
/// stop has begun counts as gone, so the sequence can finish.
pub(super) fn for_stop(task: &TaskSnapshot, node: NodeState) -> Cow<'_, TaskSnapshot> {
    if node.unreachable() && !task.is_terminal() {
        let mut gone = task.clone();
        gone.observed = ObservedState::Failed {
            reason: "node down".into(),
        };
        Cow::Owned(gone)
    } else {
        Cow::Borrowed(task)
    }
}

/// A service that wants no task at all (scaled to zero, being removed) has no use for lost
/// ones: they are given up at once instead of holding up its removal until their node
/// returns or the lost-task timeout passes. Their `MarkTaskLost` flags are dropped.
pub(super) fn give_up_unwanted(
    desired: usize,
    lost: &mut BTreeSet<TaskId>,
    stopping: &mut BTreeMap<TaskId, StopReason>,
    marks: &mut Vec<Action>,
) {
    if desired > 0 {
        return;
    }
    marks.retain(|a| !matches!(a, Action::MarkTaskLost { task } if lost.contains(task)));
    for id in std::mem::take(lost) {
        stopping.insert(id, StopReason::ScaledDown);
    }
}

/// What [`trim`] decided for a group of live tasks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Trim {
    /// Surplus among tasks that were never lost: an ordinary scale-down.
    pub scaled_down: Vec<TaskId>,
    /// Returned tasks to stop now.
    pub returned: Vec<TaskId>,
    /// Returned tasks to keep for good (no surplus left): clear their flag.
    pub found: Vec<TaskId>,
}

/// The floor a group of tasks is trimmed under.
#[derive(Clone, Copy, Debug)]
pub(super) struct Floor {
    /// Healthy tasks the service keeps at least: `desired − max_unavailable`.
    pub min_healthy: usize,
    /// Healthy tasks outside the group that count toward it (old revisions in a deployment).
    pub healthy_elsewhere: usize,
}

/// Brings `live` (interchangeable tasks of which `desired` should run) down to `desired`.
///
/// Tasks never lost beyond `desired` are an ordinary scale-down: `scale_down_first` ones
/// first, healthy or not (they are beyond what the service asked for). The rest of the
/// surplus comes from returned tasks and only they are stopped: the replacements were
/// placed while the node was away and are kept, even while still starting, until they pass
/// or fail. Returned tasks that are not healthy go first (stopping them costs nothing);
/// healthy ones only while the group plus `healthy_elsewhere` keeps `min_healthy` healthy.
pub(super) fn trim(
    live: &[&TaskSnapshot],
    desired: usize,
    floor: Floor,
    healthy: impl Fn(&TaskSnapshot) -> bool,
    scale_down_first: impl Fn(&TaskSnapshot) -> bool,
) -> Trim {
    let (returned, mut others): (Vec<&TaskSnapshot>, Vec<&TaskSnapshot>) =
        live.iter().partition(|t| t.lost_since_ms.is_some());
    let mut out = Trim::default();
    if others.len() > desired {
        let candidates = stop_candidates(&others, &scale_down_first);
        out.scaled_down = choose_tasks_to_stop(&candidates, others.len() - desired);
        others.retain(|t| !out.scaled_down.contains(&t.id));
    }
    let surplus = (returned.len() + others.len()).saturating_sub(desired);
    if surplus == 0 {
        out.found = returned.iter().map(|t| t.id.clone()).collect();
        return out;
    }
    let healthy_now = others
        .iter()
        .chain(returned.iter())
        .filter(|t| healthy(t))
        .count()
        + floor.healthy_elsewhere;
    let budget = healthy_now.saturating_sub(floor.min_healthy);
    let (ok, not_ok): (Vec<&TaskSnapshot>, Vec<&TaskSnapshot>) =
        returned.iter().partition(|t| healthy(t));
    let free = stop_candidates(&not_ok, &scale_down_first);
    out.returned = choose_tasks_to_stop(&free, surplus);
    let paid = stop_candidates(&ok, &scale_down_first);
    let left = (surplus - out.returned.len()).min(budget);
    out.returned.extend(choose_tasks_to_stop(&paid, left));
    out
}
