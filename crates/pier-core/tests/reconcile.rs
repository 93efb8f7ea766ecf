//! Self-healing, crash-loop back-off, node liveness and the stop state machine.

use std::collections::BTreeSet;

use pier_core::deployment::{
    backoff_delay_ms, node_liveness, reconcile, step, stop::advance_stop, Action, Deployment,
    DeploymentSettings, DeploymentSnapshot, DeploymentState, DesiredState, NodeHeartbeat,
    NodeLiveness, ObservedState, ReconcileSettings, RestartState, ServiceSnapshot, StopPhase,
    StopReason, TaskHealth, TaskSnapshot,
};

fn running(id: &str, node: &str, created_at_ms: u64) -> TaskSnapshot {
    TaskSnapshot {
        id: id.into(),
        revision: 1,
        desired: DesiredState::Run,
        observed: ObservedState::Running,
        health: TaskHealth::Passing,
        healthy_since_ms: Some(created_at_ms),
        stop_phase: StopPhase::Active,
        reached_running: true,
        ever_passed: true,
        created_at_ms,
        node: Some(node.into()),
        zone: Some(format!("zone-{}", &node[..1])),
    }
}

fn exited(mut t: TaskSnapshot, code: i32) -> TaskSnapshot {
    t.observed = ObservedState::Exited { code };
    t.health = TaskHealth::Unknown;
    t.healthy_since_ms = None;
    t
}

fn service(tasks: Vec<TaskSnapshot>, desired: u32, now_ms: u64) -> ServiceSnapshot {
    ServiceSnapshot {
        revision: 1,
        desired_count: desired,
        tasks,
        nodes: ["a1", "a2", "b1", "c1"]
            .iter()
            .map(|id| NodeHeartbeat {
                id: (*id).into(),
                last_heartbeat_ms: now_ms,
            })
            .collect(),
        settings: ReconcileSettings::default(),
        restart: RestartState::default(),
    }
}

fn starts(actions: &[Action]) -> u32 {
    actions
        .iter()
        .map(|a| match a {
            Action::StartTask { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

#[test]
fn steady_service_needs_nothing() {
    let now = 100_000;
    let snap = service(vec![running("t1", "a1", 0), running("t2", "b1", 0)], 2, now);
    let plan = reconcile(&snap, now);
    assert!(plan.actions.is_empty());
    assert_eq!(plan.waiting, None);
}

#[test]
fn crash_loop_backs_off_exponentially_and_says_so() {
    let mut now = 100_000;
    let mut snap = service(vec![running("t1", "a1", 0)], 1, now);
    let mut delays = Vec::new();
    for round in 1..=5u32 {
        // The current task exits.
        let last = snap.tasks.len() - 1;
        snap.tasks[last] = exited(snap.tasks[last].clone(), 1);
        let plan = reconcile(&snap, now);
        let dead = snap.tasks[last].id.clone();
        assert_eq!(
            plan.actions,
            vec![
                Action::DeregisterTask {
                    task: dead.clone(),
                    reason: StopReason::Died
                },
                Action::MarkTaskStopped { task: dead }
            ],
            "round {round}: no restart before the back-off"
        );
        let wait = plan.restart.next_restart_at_ms.unwrap() - now;
        delays.push(wait);
        if round == 4 {
            assert_eq!(
                plan.waiting.as_deref(),
                Some("restarting in 8s (exited 1, 4 times)")
            );
        }
        if round == 1 {
            assert_eq!(
                plan.waiting.as_deref(),
                Some("restarting in 1s (exited 1, once)")
            );
        }
        snap.restart = plan.restart;
        snap.tasks[last].stop_phase = StopPhase::Stopped;
        // Just before the back-off ends: still waiting.
        let plan = reconcile(&snap, now + wait - 1);
        assert_eq!(starts(&plan.actions), 0);
        // At the end of the back-off: one replacement.
        now += wait;
        let plan = reconcile(&snap, now);
        assert_eq!(starts(&plan.actions), 1);
        snap.restart = plan.restart;
        snap.tasks
            .push(running(&format!("t{}", round + 1), "a1", now));
        now += 2_000;
    }
    assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 16_000]);
}

#[test]
fn replicas_crashing_together_count_as_one_crash() {
    let now = 100_000;
    let tasks = vec![
        exited(running("t1", "a1", 0), 1),
        exited(running("t2", "b1", 0), 1),
        exited(running("t3", "c1", 0), 1),
    ];
    let plan = reconcile(&service(tasks, 3, now), now);
    assert_eq!(plan.restart.consecutive_failures, 1);
    assert_eq!(plan.restart.total_failures, 3);
    assert_eq!(plan.restart.next_restart_at_ms, Some(now + 1_000));
    // Recomputing the same snapshot counts nothing twice.
    let mut again = service(
        vec![
            exited(running("t1", "a1", 0), 1),
            exited(running("t2", "b1", 0), 1),
            exited(running("t3", "c1", 0), 1),
        ],
        3,
        now,
    );
    again.restart = plan.restart.clone();
    let plan2 = reconcile(&again, now);
    assert_eq!(plan2.restart, plan.restart);
    let plan3 = reconcile(&again, now + 1_000);
    assert_eq!(starts(&plan3.actions), 3);
}

#[test]
fn critical_tasks_are_replaced_with_drain_first() {
    let now = 100_000;
    let mut bad = running("t2", "b1", 0);
    bad.health = TaskHealth::Critical;
    bad.healthy_since_ms = None;
    let snap = service(vec![running("t1", "a1", 0), bad], 2, now);
    let plan = reconcile(&snap, now);
    assert_eq!(
        plan.actions,
        vec![Action::DeregisterTask {
            task: "t2".into(),
            reason: StopReason::Critical
        }]
    );
    assert_eq!(
        plan.restart.last_failure.as_ref().map(|f| f.short()),
        Some("health check critical".to_owned())
    );
}

#[test]
fn backoff_resets_after_a_quiet_healthy_period() {
    let now = 1_000_000;
    let mut snap = service(vec![running("t9", "a1", 0)], 1, now);
    snap.restart.consecutive_failures = 6;
    snap.restart.last_failure_ms = Some(now - 600_000);
    snap.restart.counting_since_ms = Some(now - 700_000);
    let plan = reconcile(&snap, now);
    assert_eq!(plan.restart.consecutive_failures, 0);
    assert_eq!(plan.restart.counting_since_ms, Some(0));
}

#[test]
fn backoff_is_capped() {
    let s = ReconcileSettings::default();
    assert_eq!(backoff_delay_ms(1, &s), 1_000);
    assert_eq!(backoff_delay_ms(9, &s), 256_000);
    assert_eq!(backoff_delay_ms(10, &s), 300_000);
    assert_eq!(backoff_delay_ms(200, &s), 300_000);
}

#[test]
fn node_liveness_tolerates_blips() {
    assert_eq!(
        node_liveness(1_000, 1_000, 30_000),
        NodeLiveness::Alive { silent_ms: 0 }
    );
    assert_eq!(
        node_liveness(1_000, 31_000, 30_000),
        NodeLiveness::Alive { silent_ms: 30_000 }
    );
    assert_eq!(
        node_liveness(1_000, 31_001, 30_000),
        NodeLiveness::Down { since_ms: 31_000 }
    );
    // A heartbeat stamped after `now` (clock skew) counts as just heard.
    assert_eq!(
        node_liveness(5_000, 1_000, 30_000),
        NodeLiveness::Alive { silent_ms: 0 }
    );
}

#[test]
fn a_blip_moves_nothing_and_a_down_node_is_evacuated() {
    let now = 1_000_000;
    let tasks = vec![
        running("t1", "a1", 0),
        running("t2", "b1", 0),
        running("t3", "b1", 0),
    ];
    let mut snap = service(tasks, 3, now);
    // b1 silent for 29 s: a blip.
    snap.nodes[2].last_heartbeat_ms = now - 29_000;
    let plan = reconcile(&snap, now);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert!(plan.down_nodes.is_empty());
    // Silent for 31 s: down. Its tasks leave the catalog, replacements start at once (no
    // back-off: a lost node is not a crash), and nothing counts as a failure.
    snap.nodes[2].last_heartbeat_ms = now - 31_000;
    let plan = reconcile(&snap, now);
    assert_eq!(plan.down_nodes, vec!["b1".to_owned()]);
    assert_eq!(
        plan.actions,
        vec![
            Action::StartTask {
                revision: 1,
                count: 2
            },
            Action::DeregisterTask {
                task: "t2".into(),
                reason: StopReason::NodeDown
            },
            Action::DeregisterTask {
                task: "t3".into(),
                reason: StopReason::NodeDown
            },
        ]
    );
    assert_eq!(plan.restart.total_failures, 0);
}

#[test]
fn scale_down_keeps_zones_balanced_and_prefers_unhealthy() {
    let now = 100_000;
    let mut starting = running("t6", "c1", now);
    starting.observed = ObservedState::Starting;
    starting.health = TaskHealth::Unknown;
    starting.healthy_since_ms = None;
    starting.reached_running = false;
    let tasks = vec![
        running("t1", "a1", 0),
        running("t2", "a1", 0),
        running("t3", "a2", 0),
        running("t4", "b1", 0),
        running("t5", "b1", 0),
        starting,
    ];
    let plan = reconcile(&service(tasks, 3, now), now);
    let stopped: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeregisterTask { task, reason } => {
                assert_eq!(*reason, StopReason::ScaledDown);
                Some(task.as_str())
            }
            _ => None,
        })
        .collect();
    // The starting task goes first (t6), then zone a (3 tasks) loses one from its fullest
    // node a1 (t2), then a/b tie at 2 → a, where a1/a2 tie at 1 → a1 (t1). Actions come in
    // task id order.
    assert_eq!(stopped, vec!["t1", "t2", "t6"]);
    // t6 never ran: it gets its stop signal right away, the others drain first.
    assert!(plan
        .actions
        .contains(&Action::StopTask { task: "t6".into() }));
    assert!(!plan
        .actions
        .contains(&Action::StopTask { task: "t2".into() }));
}

#[test]
fn stop_sequence_phases() {
    let drain = 5_000;
    let t = running("t1", "a1", 0);
    // Active, no reason: nothing.
    assert_eq!(advance_stop(&t, None, drain, 10).1, vec![]);
    // Active → deregister only.
    let (phase, actions) = advance_stop(&t, Some(StopReason::Replaced), drain, 10);
    assert_eq!(phase, StopPhase::Draining { since_ms: 10 });
    assert_eq!(
        actions,
        vec![Action::DeregisterTask {
            task: "t1".into(),
            reason: StopReason::Replaced
        }]
    );
    // Draining before the delay: wait; at the delay: stop signal.
    let mut draining = t.clone();
    draining.stop_phase = StopPhase::Draining { since_ms: 10 };
    assert_eq!(advance_stop(&draining, None, drain, 5_009).1, vec![]);
    let (phase, actions) = advance_stop(&draining, None, drain, 5_010);
    assert_eq!(phase, StopPhase::Stopping { since_ms: 5_010 });
    assert_eq!(actions, vec![Action::StopTask { task: "t1".into() }]);
    // Stopping: wait for the exit, then stopped.
    let mut stopping = t.clone();
    stopping.stop_phase = StopPhase::Stopping { since_ms: 5_010 };
    assert_eq!(advance_stop(&stopping, None, drain, 99_999).1, vec![]);
    let (phase, actions) = advance_stop(&exited(stopping, 143), None, drain, 99_999);
    assert_eq!(phase, StopPhase::Stopped);
    assert_eq!(actions, vec![Action::MarkTaskStopped { task: "t1".into() }]);
    // Dead while active: deregister and done, no stop signal.
    let (phase, actions) = advance_stop(&exited(t.clone(), 1), Some(StopReason::Died), drain, 10);
    assert_eq!(phase, StopPhase::Stopped);
    assert_eq!(
        actions,
        vec![
            Action::DeregisterTask {
                task: "t1".into(),
                reason: StopReason::Died
            },
            Action::MarkTaskStopped { task: "t1".into() }
        ]
    );
    // Never ran: no drain wait.
    let mut pending = t.clone();
    pending.observed = ObservedState::Pulling;
    pending.reached_running = false;
    pending.ever_passed = false;
    let (phase, actions) = advance_stop(&pending, Some(StopReason::ScaledDown), drain, 10);
    assert_eq!(phase, StopPhase::Stopping { since_ms: 10 });
    assert_eq!(actions.len(), 2);
    // Ran but never passed a check: never routed to, so no drain wait either.
    let mut never_passed = t.clone();
    never_passed.health = TaskHealth::Critical;
    never_passed.healthy_since_ms = None;
    never_passed.ever_passed = false;
    let (phase, actions) = advance_stop(&never_passed, Some(StopReason::Critical), drain, 10);
    assert_eq!(phase, StopPhase::Stopping { since_ms: 10 });
    assert_eq!(
        actions,
        vec![
            Action::DeregisterTask {
                task: "t1".into(),
                reason: StopReason::Critical
            },
            Action::StopTask { task: "t1".into() }
        ]
    );
    // Passed once, critical now: it was routed to, so it drains like any other.
    let mut was_passing = t;
    was_passing.health = TaskHealth::Critical;
    was_passing.healthy_since_ms = None;
    let (phase, _) = advance_stop(&was_passing, Some(StopReason::Critical), drain, 10);
    assert_eq!(phase, StopPhase::Draining { since_ms: 10 });
}

#[test]
fn deployment_treats_tasks_on_down_nodes_as_lost_not_failed() {
    let now = 1_000_000;
    let mut new_task = running("n1", "b1", now - 50_000);
    new_task.revision = 2;
    let snapshot = DeploymentSnapshot {
        deployment: Deployment {
            id: "d".into(),
            target_revision: 2,
            previous_stable_revision: Some(1),
            desired_count: 2,
            settings: DeploymentSettings {
                failure_threshold: Some(1),
                ..Default::default()
            },
            kind: Default::default(),
        },
        state: DeploymentState::started(now - 60_000),
        tasks: vec![running("o1", "a1", 0), new_task],
        down_nodes: BTreeSet::from(["b1".to_owned()]),
    };
    let plan = step(&snapshot, now);
    assert!(plan.state.failures.is_empty());
    assert!(plan.actions.contains(&Action::DeregisterTask {
        task: "n1".into(),
        reason: StopReason::NodeDown
    }));
    // Desired 2 with surge 1: one old task holds resources, the lost one does not.
    assert!(plan.actions.contains(&Action::StartTask {
        revision: 2,
        count: 2
    }));
}
