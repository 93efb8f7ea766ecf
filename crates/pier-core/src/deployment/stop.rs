//! The task-stop state machine that gives zero-downtime stops.
//!
//! ```text
//! Active --deregister--> Draining{since} --(drain_delay elapsed)--> Stopping{since} --exit--> Stopped
//!                           |                                                      ^
//!                           +----------------- task already dead ------------------+
//! ```
//!
//! The task leaves the catalog first, so the gateway stops sending it requests; only after
//! `drain_delay_ms` does it get the stop signal (SIGTERM, then SIGKILL from the agent after
//! the stop timeout). This is the ordering ECS and Nomad get wrong (SIGTERM before the load
//! balancer stops routing, hence 502s during deploys). Two shortcuts keep it fast without
//! breaking the ordering: a task that never ran or never passed a health check was never
//! routed to (the gateway routes only to passing instances), so it skips the drain wait; a
//! task that is already dead skips the stop signal.

use super::action::{Action, StopReason};
use super::task::{StopPhase, TaskSnapshot};

/// Advances `task` through the stop sequence. `stop_reason` is `Some` when the controller
/// decided (now) that an `Active` task must stop; it is ignored for tasks already stopping.
/// Returns the actions, in order, and the phase the task ends in.
pub fn advance_stop(
    task: &TaskSnapshot,
    stop_reason: Option<StopReason>,
    drain_delay_ms: u64,
    now_ms: u64,
) -> (StopPhase, Vec<Action>) {
    let mut phase = task.stop_phase;
    let mut actions = Vec::new();
    // At most three transitions (Active → Draining → Stopping/Stopped); the bound documents
    // that this loop cannot spin.
    for _ in 0..3 {
        let next = match phase {
            StopPhase::Active => match stop_reason {
                Some(reason) => {
                    actions.push(Action::DeregisterTask {
                        task: task.id.clone(),
                        reason,
                    });
                    StopPhase::Draining { since_ms: now_ms }
                }
                None => break,
            },
            StopPhase::Draining { since_ms } => {
                if task.is_terminal() {
                    actions.push(Action::MarkTaskStopped {
                        task: task.id.clone(),
                    });
                    StopPhase::Stopped
                } else if !task.was_routable() || now_ms >= since_ms.saturating_add(drain_delay_ms)
                {
                    actions.push(Action::StopTask {
                        task: task.id.clone(),
                    });
                    StopPhase::Stopping { since_ms: now_ms }
                } else {
                    break;
                }
            }
            StopPhase::Stopping { .. } => {
                if task.is_terminal() {
                    actions.push(Action::MarkTaskStopped {
                        task: task.id.clone(),
                    });
                    StopPhase::Stopped
                } else {
                    break;
                }
            }
            StopPhase::Stopped => break,
        };
        phase = next;
    }
    (phase, actions)
}

/// When a task in `Draining` will get its stop signal, for display and for scheduling the
/// next step.
pub fn stop_signal_due_ms(task: &TaskSnapshot, drain_delay_ms: u64) -> Option<u64> {
    match task.stop_phase {
        StopPhase::Draining { since_ms } if task.was_routable() => {
            Some(since_ms.saturating_add(drain_delay_ms))
        }
        _ => None,
    }
}
