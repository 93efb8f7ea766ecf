//! The run state machine and the per-pipeline queue discipline, as pure functions.
//!
//! A pipeline executes at most one run at a time. When it is free, the newest queued run
//! starts and every older queued run is marked skipped (superseded by it): during a burst of
//! pushes only the newest commit is built, and an older commit is never deployed after a newer
//! one.

use pier_api::pipeline::{RunStage, RunStatus};

/// Something that happened to a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// The runner took the run off the queue (checkout and build begin).
    Start,
    /// The image is built; pushing begins.
    Built,
    /// The image is in the registry; deploying begins.
    Pushed,
    /// The deployment succeeded.
    Deployed,
    /// The deployment failed and the previous revision was rolled out again.
    RolledBack { reason: String },
    /// A stage failed.
    Fail { stage: RunStage, reason: String },
    /// The process running it went away (restart, failover).
    Interrupt,
    /// A newer run was started while this one waited.
    Supersede { by: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run that is {from} cannot take the event {event}")]
pub struct TransitionError {
    pub from: String,
    pub event: String,
}

/// The stage an active status is in; `None` for queued and terminal ones.
pub fn current_stage(status: &RunStatus) -> Option<RunStage> {
    match status {
        RunStatus::Building => Some(RunStage::Build),
        RunStatus::Pushing => Some(RunStage::Push),
        RunStatus::Deploying => Some(RunStage::Deploy),
        _ => None,
    }
}

fn stage_allowed(status: &RunStatus, stage: RunStage) -> bool {
    match status {
        // Checkout happens while building.
        RunStatus::Building => matches!(stage, RunStage::Checkout | RunStage::Build),
        RunStatus::Pushing => stage == RunStage::Push,
        RunStatus::Deploying => stage == RunStage::Deploy,
        _ => false,
    }
}

/// The status after `event`, or an error when the event makes no sense in `from`.
pub fn transition(from: &RunStatus, event: RunEvent) -> Result<RunStatus, TransitionError> {
    use RunStatus as S;
    let next = match (from, &event) {
        (S::Queued, RunEvent::Start) => Some(S::Building),
        (S::Queued, RunEvent::Supersede { by }) => Some(S::Skipped { superseded_by: *by }),
        (S::Building, RunEvent::Built) => Some(S::Pushing),
        (S::Pushing, RunEvent::Pushed) => Some(S::Deploying),
        (S::Deploying, RunEvent::Deployed) => Some(S::Succeeded),
        (S::Deploying, RunEvent::RolledBack { reason }) => Some(S::RolledBack {
            reason: reason.clone(),
        }),
        (s, RunEvent::Fail { stage, reason }) if stage_allowed(s, *stage) => Some(S::Failed {
            stage: *stage,
            reason: reason.clone(),
        }),
        (s, RunEvent::Interrupt) => current_stage(s).map(|stage| S::Interrupted { stage }),
        _ => None,
    };
    next.ok_or_else(|| TransitionError {
        from: from.name().to_string(),
        event: format!("{event:?}"),
    })
}

/// What the runner should do with a pipeline's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueuePlan {
    /// The run to start now.
    pub start: Option<u64>,
    /// Older queued runs to mark skipped, superseded by `start`.
    pub skip: Vec<u64>,
}

/// Decides from the runs of one pipeline (number, status) what to start and what to skip.
/// Nothing starts while a run is active.
pub fn plan_queue<'a>(runs: impl IntoIterator<Item = (u64, &'a RunStatus)>) -> QueuePlan {
    let mut queued = Vec::new();
    for (number, status) in runs {
        if status.is_active() {
            return QueuePlan::default();
        }
        if *status == RunStatus::Queued {
            queued.push(number);
        }
    }
    queued.sort_unstable();
    match queued.pop() {
        None => QueuePlan::default(),
        Some(newest) => QueuePlan {
            start: Some(newest),
            skip: queued,
        },
    }
}

/// Run numbers to delete so that only the newest `keep` runs remain. Unfinished runs are kept
/// whatever their age.
pub fn retention<'a>(runs: impl IntoIterator<Item = (u64, &'a RunStatus)>, keep: u32) -> Vec<u64> {
    let mut all: Vec<(u64, bool)> = runs
        .into_iter()
        .map(|(n, s)| (n, s.is_terminal()))
        .collect();
    all.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    all.into_iter()
        .skip(keep as usize)
        .filter(|(_, terminal)| *terminal)
        .map(|(n, _)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RunStatus as S;

    #[test]
    fn happy_path() {
        let mut s = S::Queued;
        for (ev, want) in [
            (RunEvent::Start, S::Building),
            (RunEvent::Built, S::Pushing),
            (RunEvent::Pushed, S::Deploying),
            (RunEvent::Deployed, S::Succeeded),
        ] {
            s = transition(&s, ev).unwrap();
            assert_eq!(s, want);
        }
        assert!(s.is_terminal());
    }

    #[test]
    fn failures_carry_the_stage() {
        let f = transition(
            &S::Building,
            RunEvent::Fail {
                stage: RunStage::Checkout,
                reason: "no Dockerfile".into(),
            },
        )
        .unwrap();
        assert_eq!(
            f,
            S::Failed {
                stage: RunStage::Checkout,
                reason: "no Dockerfile".into()
            }
        );
        // A push failure cannot be reported while building.
        assert!(transition(
            &S::Building,
            RunEvent::Fail {
                stage: RunStage::Push,
                reason: "x".into()
            }
        )
        .is_err());
        let r = transition(
            &S::Deploying,
            RunEvent::RolledBack {
                reason: "unhealthy".into(),
            },
        );
        assert_eq!(
            r.unwrap(),
            S::RolledBack {
                reason: "unhealthy".into()
            }
        );
    }

    #[test]
    fn interrupt_only_active_runs() {
        assert_eq!(
            transition(&S::Pushing, RunEvent::Interrupt).unwrap(),
            S::Interrupted {
                stage: RunStage::Push
            }
        );
        assert!(transition(&S::Queued, RunEvent::Interrupt).is_err());
        assert!(transition(&S::Succeeded, RunEvent::Interrupt).is_err());
    }

    #[test]
    fn terminal_states_are_final() {
        let terminals = [
            S::Succeeded,
            S::Failed {
                stage: RunStage::Build,
                reason: "x".into(),
            },
            S::RolledBack { reason: "x".into() },
            S::Interrupted {
                stage: RunStage::Deploy,
            },
            S::Skipped { superseded_by: 3 },
        ];
        let events = [
            RunEvent::Start,
            RunEvent::Built,
            RunEvent::Pushed,
            RunEvent::Deployed,
            RunEvent::Interrupt,
            RunEvent::Supersede { by: 9 },
            RunEvent::RolledBack { reason: "r".into() },
        ];
        for t in &terminals {
            for e in &events {
                assert!(transition(t, e.clone()).is_err(), "{t:?} {e:?}");
            }
        }
    }

    #[test]
    fn burst_builds_newest_and_skips_the_rest() {
        let q = S::Queued;
        let done = S::Succeeded;
        let plan = plan_queue([(1, &done), (2, &q), (4, &q), (3, &q)]);
        assert_eq!(plan.start, Some(4));
        assert_eq!(plan.skip, vec![2, 3]);
    }

    #[test]
    fn nothing_starts_while_one_is_active() {
        let q = S::Queued;
        let b = S::Deploying;
        assert_eq!(plan_queue([(1, &b), (2, &q)]), QueuePlan::default());
        assert_eq!(plan_queue(std::iter::empty()), QueuePlan::default());
    }

    #[test]
    fn retention_keeps_newest_and_unfinished() {
        let d = S::Succeeded;
        let q = S::Queued;
        let runs = [(1, &q), (2, &d), (3, &d), (4, &d), (5, &d)];
        assert_eq!(retention(runs, 2), vec![3, 2]);
    }

    fn status_strategy() -> impl Strategy<Value = RunStatus> {
        prop_oneof![
            Just(S::Queued),
            Just(S::Building),
            Just(S::Pushing),
            Just(S::Deploying),
            Just(S::Succeeded),
            Just(S::Skipped { superseded_by: 1 }),
        ]
    }

    proptest! {
        /// Whatever the queue looks like, at most one run is active after applying a plan, and
        /// the started run is newer than every run it skips.
        #[test]
        fn plan_keeps_one_active_and_order(statuses in proptest::collection::vec(status_strategy(), 0..12)) {
            let runs: Vec<(u64, RunStatus)> = statuses.into_iter().enumerate().map(|(i, s)| (i as u64 + 1, s)).collect();
            let active_before = runs.iter().filter(|(_, s)| s.is_active()).count();
            let plan = plan_queue(runs.iter().map(|(n, s)| (*n, s)));
            if active_before > 0 {
                prop_assert_eq!(plan.clone(), QueuePlan::default());
            }
            if let Some(start) = plan.start {
                prop_assert!(plan.skip.iter().all(|s| *s < start));
                let queued: Vec<u64> = runs.iter().filter(|(_, s)| *s == S::Queued).map(|(n, _)| *n).collect();
                prop_assert_eq!(queued.len(), plan.skip.len() + 1);
            }
        }
    }
}
