//! The deployment controller driven by the simulator: floor, surge cap, stop ordering,
//! circuit breaker, rollback.

mod sim;

use pier_core::deployment::{
    step, Action, Deployment, DeploymentKind, DeploymentSettings, DeploymentStatus,
};
use proptest::prelude::*;
use sim::{Behavior, Sim};

fn deployment(desired: u32, settings: DeploymentSettings) -> Deployment {
    Deployment {
        id: "d1".into(),
        target_revision: 2,
        previous_stable_revision: Some(1),
        desired_count: desired,
        settings,
        kind: DeploymentKind::Update,
    }
}

fn settings(surge: u32, unavailable: u32) -> DeploymentSettings {
    DeploymentSettings {
        max_surge: surge,
        max_unavailable: unavailable,
        min_healthy_time_ms: 3_000,
        healthy_deadline_ms: 120_000,
        failure_threshold: None,
        auto_rollback: true,
        drain_delay_ms: 2_000,
    }
}

/// Runs a good rollout and checks the end state and every invariant.
fn good_rollout(desired: u32, s: DeploymentSettings, behavior: Behavior) -> Sim {
    let mut sim = Sim::new(9, 3, 1, desired);
    sim.behaviors.insert(2, behavior);
    sim.begin(deployment(desired, s));
    let status = sim.run(500, 10_000).unwrap();
    assert_eq!(status, DeploymentStatus::Succeeded, "{:?}", sim.state);
    sim.check_stop_order().unwrap();
    let healthy = sim.healthy_by_revision();
    assert_eq!(healthy.get(&2).copied().unwrap_or(0), desired as usize);
    // Old tasks may still be finishing their stop sequence; none is serving.
    assert_eq!(healthy.get(&1).copied().unwrap_or(0), 0);
    assert_eq!(sim.state.counts.healthy, desired);
    assert_eq!(sim.state.counts.failed, 0);
    sim
}

#[test]
fn rolling_update_table() {
    let cases = [
        (1, 1, 0),
        (3, 1, 0),
        (3, 0, 1),
        (5, 2, 1),
        (10, 3, 0),
        (10, 0, 3),
        (4, 4, 4),
        (6, 1, 2),
        (20, 5, 5),
        (0, 1, 0),
        (2, 10, 0),
        (2, 0, 10),
    ];
    for (desired, surge, unavailable) in cases {
        for min_healthy in [0, 3_000] {
            for drain in [0, 2_000] {
                let mut s = settings(surge, unavailable);
                s.min_healthy_time_ms = min_healthy;
                s.drain_delay_ms = drain;
                let sim = good_rollout(desired, s, Behavior::good(1_000, 2_000));
                let floor = (desired as usize).saturating_sub(unavailable as usize);
                assert!(
                    sim.min_healthy_seen >= floor.min(desired as usize),
                    "case {:?}: healthy dipped to {}",
                    (desired, surge, unavailable, min_healthy, drain),
                    sim.min_healthy_seen
                );
                assert!(sim.max_occupying_seen <= (desired + surge) as usize);
            }
        }
    }
}

#[test]
fn surge_only_keeps_every_old_task_until_replaced() {
    let sim = good_rollout(4, settings(1, 0), Behavior::good(1_000, 2_000));
    assert_eq!(sim.min_healthy_seen, 4);
    assert_eq!(sim.max_occupying_seen, 5);
}

#[test]
fn min_healthy_time_delays_replacement() {
    let mut sim = Sim::new(3, 3, 1, 1);
    sim.behaviors.insert(2, Behavior::good(0, 0));
    let mut s = settings(1, 0);
    s.min_healthy_time_ms = 10_000;
    s.drain_delay_ms = 0;
    sim.begin(deployment(1, s));
    let start = sim.now_ms;
    sim.run(500, 1_000).unwrap();
    // The old task is deregistered only once the new one has passed for 10 s.
    let dereg = sim.log.values().map(|events| events[0].0).min().unwrap();
    assert!(
        dereg >= start + 10_000,
        "deregistered after {} ms",
        dereg - start
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Exhaustive-ish: any surge/unavailable/size/timing, with old tasks dying by themselves
    /// along the way. The simulator checks the floor and the surge cap after every step and
    /// the stop ordering at the end.
    #[test]
    fn rollout_invariants_hold(
        desired in 0u32..12,
        surge in 0u32..4,
        unavailable in 0u32..4,
        min_healthy in prop_oneof![Just(0u64), Just(1_000), Just(4_000)],
        drain in prop_oneof![Just(0u64), Just(1_500), Just(5_000)],
        start_ms in 0u64..4_000,
        healthy_after in 0u64..4_000,
        kills in proptest::collection::vec((0u64..60, 0usize..30), 0..4),
    ) {
        prop_assume!(surge + unavailable > 0);
        let mut s = settings(surge, unavailable);
        s.min_healthy_time_ms = min_healthy;
        s.drain_delay_ms = drain;
        let mut sim = Sim::new(6, 3, 1, desired);
        sim.behaviors.insert(2, Behavior::good(start_ms, healthy_after));
        sim.begin(deployment(desired, s));
        let mut status = None;
        for n in 0..5_000u64 {
            for (at, which) in &kills {
                if *at == n {
                    let ids = sim.task_ids();
                    if !ids.is_empty() {
                        let id = ids[which % ids.len()].clone();
                        sim.kill(&id);
                    }
                }
            }
            let plan = step(&sim.snapshot(), sim.now_ms);
            sim.steps += 1;
            if let Err(e) = sim.apply(&plan) {
                prop_assert!(false, "{}", e);
            }
            if sim.state.status.is_terminal() {
                status = Some(sim.state.status);
                break;
            }
            sim.advance(500);
        }
        prop_assert_eq!(status, Some(DeploymentStatus::Succeeded), "{:?}", sim.state);
        if let Err(e) = sim.check_stop_order() {
            prop_assert!(false, "{}", e);
        }
        // Killed new tasks count as failures: three of them trip the breaker, and then the
        // rollback must have restored the old revision instead.
        let final_revision = if sim.history.iter().any(|(_, s)| s.status == DeploymentStatus::RolledBack) {
            prop_assert!(kills.len() >= 3);
            1
        } else {
            2
        };
        prop_assert_eq!(
            sim.healthy_by_revision().get(&final_revision).copied().unwrap_or(0),
            desired as usize
        );
    }
}

#[test]
fn failing_version_trips_the_breaker_and_rolls_back_old_tasks_first() {
    let mut sim = Sim::new(9, 3, 1, 6);
    sim.behaviors.insert(
        2,
        Behavior {
            critical_after_ms: Some(2_000),
            healthy_after_ms: None,
            ..Behavior::good(1_000, 0)
        },
    );
    sim.begin(deployment(6, settings(2, 1)));
    let status = sim.run(500, 2_000).unwrap();
    // The rollback deployment succeeded; the failed one was marked RolledBack.
    assert_eq!(status, DeploymentStatus::Succeeded);
    let (failed, failed_state) = &sim.history[0];
    assert_eq!(failed.target_revision, 2);
    assert_eq!(failed_state.status, DeploymentStatus::RolledBack);
    // With a surge of 2 the bad tasks start, and fail, in pairs: the pair that crosses the
    // threshold of 3 is counted whole.
    assert_eq!(
        failed_state.reason.as_deref(),
        Some("4 tasks of revision 2 failed: 4 health checks critical; rolling back to revision 1")
    );
    assert_eq!(sim.deployment.target_revision, 1);
    assert_eq!(
        sim.deployment.kind,
        DeploymentKind::Rollback { from_revision: 2 }
    );
    // The rollback's first plan starts old-revision tasks before anything else.
    let first = sim.first_rollback_plan.clone().unwrap();
    assert!(
        matches!(first.actions.first(), Some(Action::StartTask { revision: 1, count }) if *count > 0),
        "{:?}",
        first.actions
    );
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(6));
    assert_eq!(sim.alive_by_revision().get(&2).copied().unwrap_or(0), 0);
    sim.check_stop_order().unwrap();
    // The healthy floor held all along (desired 6, unavailable 1).
    assert!(
        sim.min_healthy_seen >= 5,
        "dipped to {}",
        sim.min_healthy_seen
    );
}

#[test]
fn bad_version_with_one_surge_slot_trips_without_waiting_for_stops() {
    // Each bad task runs 1 s after its start and turns critical 2 s later, never passing.
    // It was never routed to, so it skips the drain and frees its surge slot at once: the
    // three failures the breaker needs take three of those 3 s cycles, not three cycles plus
    // three drain delays and stop timeouts.
    let mut sim = Sim::new(9, 3, 1, 3);
    sim.behaviors.insert(
        2,
        Behavior {
            critical_after_ms: Some(2_000),
            healthy_after_ms: None,
            ..Behavior::good(1_000, 0)
        },
    );
    let mut s = settings(1, 0);
    s.drain_delay_ms = 5_000;
    sim.begin(deployment(3, s));
    let began_ms = sim.now_ms;
    let tick_ms = 100;
    while sim.history.is_empty() {
        let plan = step(&sim.snapshot(), sim.now_ms);
        sim.apply(&plan).unwrap();
        assert!(
            sim.now_ms - began_ms < 60_000,
            "never tripped: {:?}",
            sim.state
        );
        sim.advance(tick_ms);
    }
    let tripped_after_ms = sim.now_ms - began_ms;
    assert!(
        tripped_after_ms <= 3 * 3_000 + 3 * tick_ms,
        "breaker tripped after {tripped_after_ms} ms"
    );
    assert_eq!(sim.history[0].1.status, DeploymentStatus::RolledBack);
    // Every old task kept serving: none was replaced by a task that never passed.
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(3));
    sim.check_stop_order().unwrap();
}

#[test]
fn version_that_crashes_5s_after_turning_healthy_trips_the_breaker() {
    let mut sim = Sim::new(9, 3, 1, 4);
    sim.behaviors.insert(
        2,
        Behavior {
            crash_after_healthy_ms: Some(5_000),
            ..Behavior::good(1_000, 1_000)
        },
    );
    let mut s = settings(2, 0);
    s.min_healthy_time_ms = 10_000;
    sim.begin(deployment(4, s));
    sim.run(500, 2_000).unwrap();
    let (_, failed_state) = &sim.history[0];
    assert_eq!(failed_state.status, DeploymentStatus::RolledBack);
    // Surge 2: tasks start and crash two at a time, so the breaker sees 2 then 4.
    assert_eq!(
        failed_state.reason.as_deref(),
        Some("4 tasks of revision 2 failed: 4 exited with code 1; rolling back to revision 1")
    );
    // Only 4 old tasks ever needed, none was taken out below the floor.
    assert_eq!(sim.min_healthy_seen, 4);
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(4));
}

#[test]
fn version_that_turns_critical_after_being_counted_healthy_trips_the_breaker() {
    // min_healthy_time 0: tasks count as healthy, old ones get replaced, then the new ones
    // go critical after 5 s. With a large desired count the deployment is still running.
    let mut sim = Sim::new(9, 3, 1, 10);
    sim.behaviors.insert(
        2,
        Behavior {
            critical_after_healthy_ms: Some(5_000),
            ..Behavior::good(500, 500)
        },
    );
    let mut s = settings(1, 1);
    s.min_healthy_time_ms = 0;
    s.failure_threshold = Some(2);
    sim.begin(deployment(10, s));
    sim.run(500, 2_000).unwrap();
    let (_, failed_state) = &sim.history[0];
    assert_eq!(failed_state.status, DeploymentStatus::RolledBack);
    assert!(failed_state
        .reason
        .as_deref()
        .unwrap()
        .contains("health checks critical"));
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(10));
    sim.check_stop_order().unwrap();
}

#[test]
fn pull_failures_count_before_running() {
    let mut sim = Sim::new(3, 3, 1, 2);
    sim.behaviors.insert(
        2,
        Behavior {
            start_failure: Some(Err("image pull: manifest unknown".into())),
            ..Behavior::good(1_000, 0)
        },
    );
    let mut s = settings(1, 0);
    s.auto_rollback = false;
    sim.begin(deployment(2, s));
    let status = sim.run(500, 1_000).unwrap();
    assert_eq!(status, DeploymentStatus::Failed);
    assert_eq!(
        sim.state.reason.as_deref(),
        Some("3 tasks of revision 2 failed: 3 failed to start (image pull: manifest unknown)")
    );
    // Old tasks untouched (surge-only rollout never stopped one).
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(2));
}

#[test]
fn exit_during_start_is_counted_and_described() {
    let mut sim = Sim::new(3, 3, 1, 2);
    sim.behaviors.insert(
        2,
        Behavior {
            start_failure: Some(Ok(2)),
            ..Behavior::good(500, 0)
        },
    );
    let mut s = settings(1, 0);
    s.failure_threshold = Some(1);
    s.auto_rollback = false;
    sim.begin(deployment(2, s));
    sim.run(500, 1_000).unwrap();
    assert_eq!(
        sim.state.reason.as_deref(),
        Some("1 task of revision 2 failed: 1 exited with code 2 while starting")
    );
}

#[test]
fn no_progress_within_the_healthy_deadline_fails() {
    let mut sim = Sim::new(3, 3, 1, 2);
    // Runs, but never passes a health check and never turns critical either.
    sim.behaviors.insert(
        2,
        Behavior {
            healthy_after_ms: None,
            ..Behavior::good(500, 0)
        },
    );
    let mut s = settings(1, 0);
    s.healthy_deadline_ms = 30_000;
    sim.begin(deployment(2, s));
    let started = sim.now_ms;
    sim.run(1_000, 1_000).unwrap();
    let (_, failed) = &sim.history[0];
    assert_eq!(failed.status, DeploymentStatus::RolledBack);
    assert_eq!(
        failed.reason.as_deref(),
        Some("no progress for 30s: 0 of 2 tasks of revision 2 healthy; rolling back to revision 1")
    );
    assert!(sim.history[0].1.counts.placed == 1);
    assert!(sim.now_ms >= started + 30_000);
    assert_eq!(sim.healthy_by_revision().get(&1).copied(), Some(2));
}

#[test]
fn without_a_stable_revision_the_failure_says_so() {
    let mut sim = Sim::new(3, 3, 1, 1);
    sim.behaviors.insert(
        2,
        Behavior {
            start_failure: Some(Ok(1)),
            ..Behavior::good(0, 0)
        },
    );
    let mut d = deployment(1, settings(1, 0));
    d.previous_stable_revision = None;
    sim.begin(d);
    assert_eq!(sim.run(500, 1_000).unwrap(), DeploymentStatus::Failed);
    assert!(sim
        .state
        .reason
        .as_deref()
        .unwrap()
        .ends_with("; no previous stable revision to roll back to"));
}

#[test]
fn failing_rollback_does_not_roll_back_again() {
    let mut sim = Sim::new(3, 3, 1, 2);
    sim.behaviors.insert(
        2,
        Behavior {
            start_failure: Some(Ok(1)),
            ..Behavior::good(0, 0)
        },
    );
    let mut d = deployment(2, settings(1, 0));
    d.kind = DeploymentKind::Rollback { from_revision: 3 };
    sim.begin(d);
    assert_eq!(sim.run(500, 1_000).unwrap(), DeploymentStatus::Failed);
    assert!(sim
        .state
        .reason
        .as_deref()
        .unwrap()
        .ends_with("; rollback failed, not rolling back again"));
    assert_eq!(sim.history.len(), 1);
}

#[test]
fn invalid_settings_fail_immediately_and_terminal_deployments_do_nothing() {
    let mut sim = Sim::new(3, 3, 1, 2);
    sim.begin(deployment(2, settings(0, 0)));
    let plan = step(&sim.snapshot(), sim.now_ms);
    assert_eq!(plan.state.status, DeploymentStatus::Failed);
    assert_eq!(
        plan.state.reason.as_deref(),
        Some("max_surge and max_unavailable are both 0: no task could ever be replaced")
    );
    sim.apply(&plan).unwrap();
    let again = step(&sim.snapshot(), sim.now_ms + 10_000);
    assert!(again.actions.is_empty());
    assert_eq!(again.state, plan.state);
}

#[test]
fn step_is_deterministic() {
    let mut sim = Sim::new(9, 3, 1, 8);
    sim.behaviors.insert(2, Behavior::good(1_000, 1_000));
    sim.begin(deployment(8, settings(2, 2)));
    for _ in 0..20 {
        let snapshot = sim.snapshot();
        let a = step(&snapshot, sim.now_ms);
        let mut reversed = snapshot.clone();
        reversed.tasks.reverse();
        assert_eq!(a, step(&snapshot, sim.now_ms));
        assert_eq!(a, step(&reversed, sim.now_ms));
        sim.apply(&a).unwrap();
        sim.advance(700);
    }
}

#[test]
fn lowering_the_desired_count_mid_deployment_stops_the_excess() {
    let mut sim = Sim::new(9, 3, 1, 6);
    sim.behaviors.insert(2, Behavior::good(500, 500));
    sim.begin(deployment(6, settings(3, 0)));
    for _ in 0..8 {
        let plan = step(&sim.snapshot(), sim.now_ms);
        sim.apply(&plan).unwrap();
        sim.advance(500);
    }
    sim.deployment.desired_count = 2;
    let status = sim.run(500, 1_000).unwrap();
    assert_eq!(status, DeploymentStatus::Succeeded);
    assert_eq!(sim.healthy_by_revision().get(&2).copied(), Some(2));
    assert_eq!(sim.alive_by_revision().get(&2).copied(), Some(2));
    sim.check_stop_order().unwrap();
}

/// The simulator's checks are real: a plan that deregisters every healthy task, or that starts
/// past the surge cap, or stops a task before its drain delay, is rejected.
#[test]
fn simulator_catches_broken_plans() {
    use pier_core::deployment::{DeploymentPlan, StopReason};
    let mut sim = Sim::new(3, 3, 1, 3);
    sim.begin(deployment(3, settings(1, 1)));
    let all: Vec<Action> = sim
        .task_ids()
        .into_iter()
        .map(|task| Action::DeregisterTask {
            task,
            reason: StopReason::Replaced,
        })
        .collect();
    let plan = DeploymentPlan {
        actions: all,
        state: sim.state.clone(),
    };
    assert!(sim
        .apply(&plan)
        .unwrap_err()
        .contains("healthy count went from 3 to 0"));

    let mut sim = Sim::new(3, 3, 1, 3);
    sim.begin(deployment(3, settings(1, 1)));
    let plan = DeploymentPlan {
        actions: vec![Action::StartTask {
            revision: 2,
            count: 2,
        }],
        state: sim.state.clone(),
    };
    assert!(sim.apply(&plan).unwrap_err().contains("cap 4"));

    let mut sim = Sim::new(3, 3, 1, 3);
    sim.begin(deployment(3, settings(1, 1)));
    let task = sim.task_ids()[0].clone();
    let plan = DeploymentPlan {
        actions: vec![
            Action::DeregisterTask {
                task: task.clone(),
                reason: StopReason::Replaced,
            },
            Action::StopTask { task },
        ],
        state: sim.state.clone(),
    };
    assert!(sim.apply(&plan).unwrap_err().contains("drain delay"));
}

/// Running old tasks whose health is unknown (an agent that lost its check state) do not
/// count as healthy, and are not all stopped at once either: they use the floor budget.
#[test]
fn old_tasks_with_unknown_health_are_not_mass_stopped() {
    use pier_core::deployment::{DeploymentSnapshot, DeploymentState, TaskHealth};
    let mut sim = Sim::new(3, 3, 1, 4);
    sim.begin(deployment(4, settings(1, 1)));
    let mut snapshot: DeploymentSnapshot = sim.snapshot();
    for t in &mut snapshot.tasks {
        t.health = TaskHealth::Unknown;
        t.healthy_since_ms = None;
    }
    snapshot.state = DeploymentState::started(sim.now_ms);
    let plan = step(&snapshot, sim.now_ms);
    assert_eq!(
        plan.actions,
        vec![Action::StartTask {
            revision: 2,
            count: 1
        }]
    );
}

/// Old tasks finishing their stop count as progress for the deadline (a scale-to-zero
/// deployment never grows its healthy count), and the deadline fires once nothing moves.
#[test]
fn old_tasks_finishing_count_as_progress() {
    let mut sim = Sim::new(3, 3, 1, 3);
    let mut s = settings(0, 1);
    s.healthy_deadline_ms = 25_000;
    sim.begin(deployment(0, s));
    let now = sim.now_ms + 60_000;
    let mut snapshot = sim.snapshot();
    snapshot.state.fewest_old_left = Some(4);
    // 3 old tasks left, fewer than the 4 seen before: progress, not failure.
    let plan = step(&snapshot, now);
    assert_eq!(plan.state.status, DeploymentStatus::InProgress);
    assert_eq!(plan.state.last_progress_ms, now);
    assert_eq!(plan.state.fewest_old_left, Some(3));
    // Nothing moved for longer than the deadline: failed (and rolled back).
    snapshot.state = plan.state.clone();
    let later = step(&snapshot, now + 25_001);
    assert_eq!(later.state.status, DeploymentStatus::RolledBack);
}

/// Runs `sim` (a deployment begun) to the end with `node` going down at step `down_at_step`
/// and coming back `back_after_ms` later (or never), then lets the reconciler settle the
/// service the way the IO loop does once no deployment is in progress. Returns the final
/// status of the (last) deployment.
fn rollout_through_node_down(
    sim: &mut Sim,
    node: &str,
    down_at_step: u64,
    back_after_ms: Option<u64>,
) -> Result<DeploymentStatus, String> {
    let mut down_at: Option<u64> = None;
    let mut status = None;
    for n in 0..3_000u64 {
        if n == down_at_step {
            sim.node_down(node);
            down_at = Some(sim.now_ms);
        }
        if let (Some(at), Some(after)) = (down_at, back_after_ms) {
            if sim.now_ms >= at + after && sim.down.contains(node) {
                sim.node_up(node);
            }
        }
        if status.is_none() {
            let plan = step(&sim.snapshot(), sim.now_ms);
            sim.steps += 1;
            sim.apply(&plan)?;
            if sim.state.status.is_terminal() {
                status = Some(sim.state.status);
                // From here on the reconciler keeps the service, healthy as soon as passing.
                sim.deployment.settings.min_healthy_time_ms = 0;
            }
        } else {
            sim.reconcile_once()?;
            let desired = sim.deployment.desired_count as usize;
            let back = back_after_ms.is_none() || !sim.down.contains(node);
            if back
                && down_at.is_some()
                && sim.healthy_serving() == desired
                && sim.alive() == desired
                && sim.lost_flags() == 0
            {
                sim.check_stop_order()?;
                return status.ok_or_else(|| "no status".to_owned());
            }
        }
        sim.advance(500);
    }
    Err(format!("never settled: {:?}", sim.state))
}

#[test]
fn a_node_lost_mid_rollout_and_back_keeps_the_floor_and_leaves_no_duplicates() {
    for back_after_ms in [Some(2_000), Some(20_000), None] {
        let mut sim = Sim::new(6, 3, 1, 6);
        sim.behaviors.insert(2, Behavior::good(1_000, 1_000));
        sim.lost_task_timeout_ms = 30_000;
        sim.begin(deployment(6, settings(1, 0)));
        let status = rollout_through_node_down(&mut sim, "node-00000", 6, back_after_ms).unwrap();
        assert_eq!(status, DeploymentStatus::Succeeded, "{back_after_ms:?}");
        assert_eq!(sim.healthy_by_revision().get(&2).copied(), Some(6));
        assert_eq!(sim.alive_by_revision().get(&1).copied().unwrap_or(0), 0);
        // The deployment stopped no task below the floor of 6 but the node's own loss.
        assert!(
            sim.min_healthy_seen >= 4,
            "{back_after_ms:?}: {}",
            sim.min_healthy_seen
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// A node lost at any point of any rollout, back after any time or never: the floor and
    /// the surge cap hold after every step, the rollout succeeds, and the service settles
    /// at exactly `desired` healthy tasks of the new revision with nothing lost or doubled.
    #[test]
    fn rollout_with_a_node_down_and_back(
        desired in 1u32..9,
        surge in 0u32..3,
        unavailable in 0u32..3,
        min_healthy in prop_oneof![Just(0u64), Just(2_000)],
        start_ms in 0u64..6_000,
        healthy_after in 0u64..6_000,
        down_at_step in 0u64..80,
        back_after_ms in proptest::option::of(0u64..20_000),
        lost_timeout_ms in prop_oneof![Just(5_000u64), Just(300_000)],
    ) {
        prop_assume!(surge + unavailable > 0);
        let mut s = settings(surge, unavailable);
        s.min_healthy_time_ms = min_healthy;
        s.drain_delay_ms = 1_000;
        let mut sim = Sim::new(6, 3, 1, desired);
        sim.behaviors.insert(2, Behavior::good(start_ms, healthy_after));
        sim.lost_task_timeout_ms = lost_timeout_ms;
        sim.begin(deployment(desired, s));
        match rollout_through_node_down(&mut sim, "node-00000", down_at_step, back_after_ms) {
            Ok(status) => prop_assert_eq!(status, DeploymentStatus::Succeeded),
            Err(e) => prop_assert!(false, "{}", e),
        }
        prop_assert_eq!(
            sim.healthy_by_revision().get(&2).copied().unwrap_or(0),
            desired as usize
        );
    }
}

/// Late in a rollout: the new tasks are all placed and node b, holding `n1`, went down and is
/// back while `n3`, started in its place, is still starting. `n1` is kept (and serves again)
/// until `n3` passes, then it goes, not `n3`.
#[test]
fn a_new_task_back_from_a_down_node_goes_only_when_its_replacement_passes() {
    use pier_core::deployment::{
        DeploymentState, ObservedState, StopReason, TaskHealth, TaskSnapshot,
    };
    let now = 2_000_000;
    let task = |id: &str, node: &str, healthy: bool| TaskSnapshot {
        id: id.into(),
        revision: 2,
        observed: if healthy {
            ObservedState::Running
        } else {
            ObservedState::Starting
        },
        health: if healthy {
            TaskHealth::Passing
        } else {
            TaskHealth::Unknown
        },
        healthy_since_ms: healthy.then_some(now - 60_000),
        reached_running: healthy,
        ever_passed: healthy,
        created_at_ms: now - 90_000,
        node: Some(node.into()),
        zone: Some(node.into()),
        ..Default::default()
    };
    let mut n1 = task("n1", "b", true);
    n1.lost_since_ms = Some(now - 20_000);
    let mut snapshot = pier_core::deployment::DeploymentSnapshot {
        deployment: deployment(2, settings(1, 0)),
        state: DeploymentState::started(now - 100_000),
        tasks: vec![n1, task("n2", "a", true), task("n3", "c", false)],
        ..Default::default()
    };
    let plan = step(&snapshot, now);
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::DeregisterTask { .. })),
        "{:?}",
        plan.actions
    );
    assert_eq!(plan.state.status, DeploymentStatus::InProgress);
    // n3 passes (and has for min_healthy_time): n1 goes.
    snapshot.tasks[2] = task("n3", "c", true);
    let plan = step(&snapshot, now);
    assert!(
        plan.actions.contains(&Action::DeregisterTask {
            task: "n1".into(),
            reason: StopReason::ReplacedWhileLost
        }),
        "{:?}",
        plan.actions
    );
    assert!(!plan.actions.contains(&Action::DeregisterTask {
        task: "n3".into(),
        reason: StopReason::ReplacedWhileLost
    }));
}
