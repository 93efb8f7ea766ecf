//! Self-healing, crash-loop back-off, node liveness, lost tasks and the stop state machine.

mod sim;

use std::collections::BTreeSet;

use proptest::prelude::*;
use sim::{Behavior, Sim};

use pier_core::deployment::{
    backoff_delay_ms, node_liveness, reconcile, step, stop::advance_stop, Action, Deployment,
    DeploymentKind, DeploymentSettings, DeploymentSnapshot, DeploymentState, DesiredState,
    NodeHeartbeat, NodeLiveness, ObservedState, ReconcileSettings, RestartState, ServiceSnapshot,
    StopPhase, StopReason, TaskHealth, TaskSnapshot,
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
        lost_since_ms: None,
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
fn a_blip_moves_nothing_and_a_down_nodes_tasks_are_lost_not_stopped() {
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
    // Silent for 31 s: down. Replacements start at once (no back-off: a lost node is not a
    // crash), nothing counts as a failure, and the lost tasks are only flagged: they keep
    // running, in the catalog, in case their node is only cut off from the servers.
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
            Action::MarkTaskLost { task: "t2".into() },
            Action::MarkTaskLost { task: "t3".into() },
        ]
    );
    assert_eq!(plan.restart.total_failures, 0);
    // Once flagged, the same snapshot only asks for the replacements again (the IO loop
    // has not placed them yet).
    for t in &mut snap.tasks[1..] {
        t.lost_since_ms = Some(now);
    }
    let plan = reconcile(&snap, now + 500);
    assert_eq!(
        plan.actions,
        vec![Action::StartTask {
            revision: 1,
            count: 2
        }]
    );
}

/// The settings of the node-down cases: `b1` went down at `LOST_AT`, `t2`/`t3` were lost on
/// it and `r2`/`r3` replace them on `c1`.
const LOST_AT: u64 = 1_000_000;

fn returned(id: &str) -> TaskSnapshot {
    let mut t = running(id, "b1", 0);
    t.lost_since_ms = Some(LOST_AT);
    t
}

fn starting(id: &str, node: &str, created_at_ms: u64) -> TaskSnapshot {
    let mut t = running(id, node, created_at_ms);
    t.observed = ObservedState::Starting;
    t.health = TaskHealth::Unknown;
    t.healthy_since_ms = None;
    t.reached_running = false;
    t.ever_passed = false;
    t
}

fn deregistered(actions: &[Action]) -> Vec<(&str, StopReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeregisterTask { task, reason } => Some((task.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_back_while_its_replacements_start_keeps_its_tasks() {
    let now = LOST_AT + 5_000;
    let tasks = vec![
        running("t1", "a1", 0),
        returned("t2"),
        returned("t3"),
        starting("r2", "c1", LOST_AT),
        starting("r3", "c1", LOST_AT),
    ];
    let snap = service(tasks, 3, now);
    // b1 heartbeats again: its tasks are healthy and routed; nothing healthy is stopped and
    // the replacements are kept until they pass or fail.
    let plan = reconcile(&snap, now);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);

    // One replacement passes: one returned task goes (the greatest id on the fullest node).
    let mut snap = snap;
    snap.tasks[3] = running("r2", "c1", now);
    let plan = reconcile(&snap, now + 1);
    assert_eq!(
        deregistered(&plan.actions),
        vec![("t3", StopReason::ReplacedWhileLost)]
    );

    // With max_unavailable 1, one healthy returned task may go before any replacement passes.
    let mut snap = service(
        vec![
            running("t1", "a1", 0),
            returned("t2"),
            returned("t3"),
            starting("r2", "c1", LOST_AT),
            starting("r3", "c1", LOST_AT),
        ],
        3,
        now,
    );
    snap.settings.max_unavailable = 1;
    assert_eq!(deregistered(&reconcile(&snap, now).actions).len(), 1);
}

#[test]
fn a_node_back_after_its_replacements_passed_loses_its_tasks_not_theirs() {
    let now = LOST_AT + 30_000;
    let tasks = vec![
        running("t1", "a1", 0),
        returned("t2"),
        returned("t3"),
        running("r2", "c1", LOST_AT),
        running("r3", "c1", LOST_AT),
    ];
    let plan = reconcile(&service(tasks, 3, now), now);
    assert_eq!(
        deregistered(&plan.actions),
        vec![
            ("t2", StopReason::ReplacedWhileLost),
            ("t3", StopReason::ReplacedWhileLost)
        ]
    );
    // A returned task that is not healthy goes before a healthy one and costs nothing.
    let mut sick = returned("t3");
    sick.health = TaskHealth::Unknown;
    sick.healthy_since_ms = None;
    let tasks = vec![
        running("t1", "a1", 0),
        returned("t2"),
        sick,
        starting("r2", "c1", LOST_AT),
        running("r3", "c1", LOST_AT),
    ];
    let plan = reconcile(&service(tasks, 3, now), now);
    assert_eq!(
        deregistered(&plan.actions),
        vec![("t3", StopReason::ReplacedWhileLost)]
    );
}

#[test]
fn returned_tasks_the_service_needs_are_found_again() {
    // No replacement could be placed while b1 was down: its tasks are simply live again.
    let now = LOST_AT + 30_000;
    let tasks = vec![running("t1", "a1", 0), returned("t2"), returned("t3")];
    let plan = reconcile(&service(tasks, 3, now), now);
    assert_eq!(
        plan.actions,
        vec![
            Action::MarkTaskFound { task: "t2".into() },
            Action::MarkTaskFound { task: "t3".into() },
        ]
    );
}

#[test]
fn lost_tasks_are_given_up_after_the_timeout_or_with_their_node() {
    let at = |now: u64| {
        let mut snap = service(
            vec![
                running("t1", "a1", 0),
                returned("t2"),
                running("r2", "c1", LOST_AT),
            ],
            2,
            now,
        );
        snap.nodes[2].last_heartbeat_ms = 0;
        snap
    };
    let timeout = ReconcileSettings::default().lost_task_timeout_ms;
    let now = LOST_AT + timeout - 1;
    let plan = reconcile(&at(now), now);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    // Nobody will report its exit: deregistered and marked stopped in one go.
    let now = LOST_AT + timeout;
    let plan = reconcile(&at(now), now);
    assert_eq!(
        plan.actions,
        vec![
            Action::DeregisterTask {
                task: "t2".into(),
                reason: StopReason::NodeDown
            },
            Action::MarkTaskStopped { task: "t2".into() },
        ]
    );
    // A node that is no longer in the cluster: at once.
    let now = LOST_AT + 1;
    let mut snap = at(now);
    snap.nodes.remove(2);
    let plan = reconcile(&snap, now);
    assert_eq!(
        deregistered(&plan.actions),
        vec![("t2", StopReason::NodeRemoved)]
    );
}

#[test]
fn a_service_scaled_to_zero_gives_up_its_lost_tasks_at_once() {
    // Being removed (or scaled to zero) while b1 is down: nothing to keep them for.
    let now = LOST_AT + 1_000;
    let mut snap = service(vec![running("t1", "a1", 0), returned("t2")], 0, now);
    snap.nodes[2].last_heartbeat_ms = 0;
    let plan = reconcile(&snap, now);
    assert_eq!(
        deregistered(&plan.actions),
        vec![
            ("t1", StopReason::ScaledDown),
            ("t2", StopReason::ScaledDown)
        ]
    );
    assert!(plan
        .actions
        .contains(&Action::MarkTaskStopped { task: "t2".into() }));
    // Not flagged yet: no flag to persist either, just the stop.
    snap.tasks[1].lost_since_ms = None;
    let plan = reconcile(&snap, now);
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::MarkTaskLost { .. })));
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
        ..Default::default()
    };
    let plan = step(&snapshot, now);
    assert!(plan.state.failures.is_empty());
    assert!(plan
        .actions
        .contains(&Action::MarkTaskLost { task: "n1".into() }));
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::DeregisterTask { .. })));
    // Desired 2 with surge 1: one old task holds resources, the lost one does not.
    assert!(plan.actions.contains(&Action::StartTask {
        revision: 2,
        count: 2
    }));
}

// ------------------------------------------------------------------ node down, in the simulator

/// One node-down scenario for the reconciler.
#[derive(Clone, Debug)]
struct NodeDown {
    desired: u32,
    max_unavailable: u32,
    /// Replacements: pending → running, running → passing.
    start_ms: u64,
    healthy_after_ms: u64,
    /// How long after being marked down the node is heard again (`None`: never).
    back_after_ms: Option<u64>,
    lost_timeout_ms: u64,
}

/// What a scenario went through.
struct Outcome {
    sim: Sim,
    /// The tasks lost with the node.
    lost: Vec<String>,
    /// Plans of the steps after the node came back (empty if it never did).
    after_return: Vec<Vec<Action>>,
}

const TICK_MS: u64 = 500;

/// Runs a service of `desired` healthy tasks, takes down the node holding the most of them,
/// brings it back (or not) and reconciles until the service settles. The simulator checks
/// after every step that no plan takes the healthy serving count under `desired −
/// max_unavailable` (or under what it was), and the stop ordering at the end.
fn node_down(case: &NodeDown) -> Result<Outcome, String> {
    node_down_with(case, |_| {})
}

/// [`node_down`] with `setup` applied to the simulator first.
fn node_down_with(case: &NodeDown, setup: impl FnOnce(&mut Sim)) -> Result<Outcome, String> {
    let mut sim = Sim::new(4, 2, 1, case.desired);
    sim.behaviors
        .insert(1, Behavior::good(case.start_ms, case.healthy_after_ms));
    setup(&mut sim);
    sim.lost_task_timeout_ms = case.lost_timeout_ms;
    sim.begin(Deployment {
        id: "reconcile".into(),
        target_revision: 1,
        previous_stable_revision: None,
        desired_count: case.desired,
        settings: DeploymentSettings {
            max_surge: 1_000,
            max_unavailable: case.max_unavailable,
            min_healthy_time_ms: 0,
            drain_delay_ms: 1_000,
            ..Default::default()
        },
        kind: DeploymentKind::Update,
    });
    let mut by_node: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for id in sim.task_ids() {
        let node = sim
            .task(&id)
            .and_then(|t| t.node.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(id);
    }
    let (node, lost) = by_node
        .into_iter()
        .max_by_key(|(n, ids)| (ids.len(), std::cmp::Reverse(n.clone())))
        .ok_or("no task")?;
    sim.node_down(&node);
    // Marked down by the IO loop's heartbeat timeout; time runs from there.
    let down_at = sim.now_ms;
    let mut after_return = Vec::new();
    let mut back = false;
    for _ in 0..2_000 {
        let due = case
            .back_after_ms
            .is_some_and(|after| sim.now_ms >= down_at + after);
        if due && !back {
            sim.node_up(&node);
            back = true;
        }
        let plan = sim.reconcile_once()?;
        if back {
            after_return.push(plan.actions.clone());
        }
        let settled = sim.healthy_serving() == case.desired as usize
            && sim.alive() == case.desired as usize
            && sim.lost_flags() == 0
            && lost.iter().all(|id| {
                let t = sim.task(id);
                back || t.is_some_and(|t| t.stop_phase == StopPhase::Stopped)
            });
        if settled && (back || case.back_after_ms.is_none()) {
            sim.check_stop_order()?;
            return Ok(Outcome {
                sim,
                lost,
                after_return,
            });
        }
        sim.advance(TICK_MS);
    }
    Err(format!("{case:?}: never settled"))
}

/// Returned tasks stopped so far never outnumber the replacements passing at the time (for
/// `max_unavailable = 0`): each old task goes only after a replacement passed.
fn check_old_go_after_replacements(o: &Outcome, case: &NodeDown) -> Result<(), String> {
    if case.max_unavailable > 0 {
        return Ok(());
    }
    let never_lost = case.desired as usize - o.lost.len();
    for (k, (task, healthy_never_lost)) in o.sim.returned_stops.iter().enumerate() {
        if *healthy_never_lost < never_lost + k + 1 {
            return Err(format!(
                "returned task {task} stopped as stop #{} with {} replacements passing",
                k + 1,
                healthy_never_lost - never_lost.min(*healthy_never_lost)
            ));
        }
    }
    Ok(())
}

#[test]
fn a_node_back_after_its_replacements_passed_goes_down_to_desired_within_the_floor() {
    for desired in [1, 2, 3, 5, 8] {
        for max_unavailable in [0, 1, 2] {
            let case = NodeDown {
                desired,
                max_unavailable,
                start_ms: 1_000,
                healthy_after_ms: 1_000,
                back_after_ms: Some(20_000),
                lost_timeout_ms: 300_000,
            };
            let o = node_down(&case).unwrap();
            check_old_go_after_replacements(&o, &case).unwrap();
            // Every returned task was stopped in favour of its replacement, none was kept.
            for id in &o.lost {
                assert_eq!(
                    o.sim.task(id).unwrap().stop_phase,
                    StopPhase::Stopped,
                    "{case:?}: {id}"
                );
            }
            assert_eq!(o.sim.returned_stops.len(), o.lost.len(), "{case:?}");
        }
    }
}

#[test]
fn a_node_back_while_replacements_start_stops_nothing_healthy_until_they_pass() {
    for desired in [1, 2, 3, 6] {
        let case = NodeDown {
            desired,
            max_unavailable: 0,
            start_ms: 4_000,
            healthy_after_ms: 4_000,
            back_after_ms: Some(2_000),
            lost_timeout_ms: 300_000,
        };
        let o = node_down(&case).unwrap();
        check_old_go_after_replacements(&o, &case).unwrap();
        // The first plans after the return touch nothing: the returned tasks serve again
        // and the replacements are still starting.
        let first_stop = o
            .after_return
            .iter()
            .position(|actions| {
                actions
                    .iter()
                    .any(|a| matches!(a, Action::DeregisterTask { .. }))
            })
            .unwrap();
        // They pass 8 s after the node went down, 6 s after it came back.
        assert!(
            first_stop as u64 * TICK_MS >= 6_000,
            "{case:?}: a task was deregistered {} ms after the node came back",
            first_stop as u64 * TICK_MS
        );
    }
}

#[test]
fn replacements_that_never_start_leave_the_returned_tasks_in_place() {
    let case = NodeDown {
        desired: 3,
        max_unavailable: 0,
        start_ms: 1_000,
        healthy_after_ms: 1_000,
        back_after_ms: Some(6_000),
        lost_timeout_ms: 300_000,
    };
    // The original tasks run already: only the replacements fail to start.
    let o = node_down_with(&case, |sim| {
        sim.behaviors.insert(
            1,
            Behavior {
                start_failure: Some(Err("pull failed".into())),
                ..Behavior::good(1_000, 0)
            },
        );
    })
    .unwrap();
    for id in &o.lost {
        let t = o.sim.task(id).unwrap();
        assert_eq!(t.stop_phase, StopPhase::Active, "{id}");
        assert_eq!(t.lost_since_ms, None, "{id} still flagged");
    }
    assert!(o.sim.returned_stops.is_empty());
}

#[test]
fn lost_tasks_of_a_node_that_never_comes_back_are_given_up() {
    let case = NodeDown {
        desired: 4,
        max_unavailable: 0,
        start_ms: 1_000,
        healthy_after_ms: 1_000,
        back_after_ms: None,
        lost_timeout_ms: 20_000,
    };
    let o = node_down(&case).unwrap();
    for id in &o.lost {
        let t = o.sim.task(id).unwrap();
        assert_eq!(t.stop_phase, StopPhase::Stopped, "{id}");
        let given_up_at = o.sim.log[id].last().unwrap().0;
        let lost_at = t.lost_since_ms.unwrap();
        assert_eq!(given_up_at - lost_at, 20_000, "{id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Any size, floor, replacement timing, outage length (or none back), lost-task timeout:
    /// the controller never takes the healthy count under the floor, the returned tasks go
    /// only as replacements pass, and the service settles at exactly `desired` healthy tasks
    /// with nothing left lost or running twice.
    #[test]
    fn node_down_and_back_settles_within_the_floor(
        desired in 1u32..7,
        max_unavailable in 0u32..3,
        start_ms in 0u64..6_000,
        healthy_after_ms in 0u64..6_000,
        back_after_ms in proptest::option::of(0u64..40_000),
        lost_timeout_ms in prop_oneof![Just(5_000u64), Just(15_000), Just(300_000)],
    ) {
        let case = NodeDown {
            desired,
            max_unavailable,
            start_ms,
            healthy_after_ms,
            back_after_ms,
            lost_timeout_ms,
        };
        match node_down(&case) {
            Ok(o) => {
                if let Err(e) = check_old_go_after_replacements(&o, &case) {
                    prop_assert!(false, "{}", e);
                }
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
