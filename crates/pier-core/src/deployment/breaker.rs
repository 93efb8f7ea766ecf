//! Task failures as the circuit breaker and the crash-loop back-off count them.

use std::collections::BTreeMap;
use std::fmt;

use super::task::{ObservedState, Revision, TaskId, TaskSnapshot};

/// How a task failed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Could not be run at all: image pull, container create or start failed.
    FailedToStart { reason: String },
    /// Exited before it ever reached `Running`.
    ExitedDuringStart { code: i32 },
    /// Exited after having been running (possibly healthy) — the case ECS's breaker misses.
    Exited { code: i32 },
    /// Reported failed by the agent after having been running (e.g. killed for memory).
    Crashed { reason: String },
    /// Running, but its health check turned critical.
    HealthCritical,
}

impl FailureKind {
    /// The failure `task` shows right now, if any.
    pub fn of(task: &TaskSnapshot) -> Option<FailureKind> {
        match &task.observed {
            ObservedState::Failed { reason } if task.reached_running => {
                Some(FailureKind::Crashed {
                    reason: reason.clone(),
                })
            }
            ObservedState::Failed { reason } => Some(FailureKind::FailedToStart {
                reason: reason.clone(),
            }),
            ObservedState::Exited { code } if task.reached_running => {
                Some(FailureKind::Exited { code: *code })
            }
            ObservedState::Exited { code } => Some(FailureKind::ExitedDuringStart { code: *code }),
            _ if task.is_critical() => Some(FailureKind::HealthCritical),
            _ => None,
        }
    }

    /// Short form for status lines: "exited 1", "health check critical".
    pub fn short(&self) -> String {
        match self {
            FailureKind::FailedToStart { reason } => format!("failed to start: {reason}"),
            FailureKind::ExitedDuringStart { code } => format!("exited {code} while starting"),
            FailureKind::Exited { code } => format!("exited {code}"),
            FailureKind::Crashed { reason } => format!("failed: {reason}"),
            FailureKind::HealthCritical => "health check critical".to_owned(),
        }
    }

    /// Phrase for `count` failures of this kind: "2 health checks critical".
    fn counted(&self, count: usize) -> String {
        let s = if count == 1 { "" } else { "s" };
        match self {
            FailureKind::FailedToStart { reason } => format!("{count} failed to start ({reason})"),
            FailureKind::ExitedDuringStart { code } => {
                format!("{count} exited with code {code} while starting")
            }
            FailureKind::Exited { code } => format!("{count} exited with code {code}"),
            FailureKind::Crashed { reason } => format!("{count} failed after running ({reason})"),
            FailureKind::HealthCritical => format!("{count} health check{s} critical"),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// One counted failure: each task is counted at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    pub task: TaskId,
    pub kind: FailureKind,
    pub at_ms: u64,
}

/// ECS's default breaker threshold: half the desired count (rounded up), clamped to 3..=200.
pub fn default_failure_threshold(desired_count: u32) -> u32 {
    desired_count.div_ceil(2).clamp(3, 200)
}

/// "3 tasks of revision 7 failed: 2 health checks critical, 1 exited with code 1". Kinds are
/// listed most frequent first, then in a fixed order, so the text is deterministic.
pub fn summarize_failures(revision: Revision, failures: &[FailureRecord]) -> String {
    let mut by_kind: BTreeMap<&FailureKind, usize> = BTreeMap::new();
    for f in failures {
        *by_kind.entry(&f.kind).or_default() += 1;
    }
    let mut groups: Vec<(&FailureKind, usize)> = by_kind.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = groups.iter().map(|(k, n)| k.counted(*n)).collect();
    let n = failures.len();
    let tasks = if n == 1 { "task" } else { "tasks" };
    format!(
        "{n} {tasks} of revision {revision} failed: {}",
        parts.join(", ")
    )
}
