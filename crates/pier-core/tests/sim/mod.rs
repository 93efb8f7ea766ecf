//! A tiny cluster simulator for the deployment controller: applies plans the way the
//! orchestrator's IO loop will, places tasks with the real scheduler, advances time and lets
//! tasks start, turn healthy, crash or stop according to a per-revision behaviour. It checks
//! the controller's invariants after every step. Shared by the tests and the deploy_sim
//! example.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use pier_core::deployment::{
    reconcile, step, Action, Deployment, DeploymentKind, DeploymentPlan, DeploymentSnapshot,
    DeploymentState, DeploymentStatus, DesiredState, NodeHeartbeat, ObservedState, ReconcilePlan,
    ReconcileSettings, RestartState, Revision, ServiceSnapshot, StopPhase, TaskHealth,
    TaskSnapshot, DEFAULT_LOST_TASK_TIMEOUT_MS,
};
use pier_core::placement::{ExistingTask, Node, NodeStatus, PlacementState, Resources, Strategy};

/// How tasks of one revision behave once started.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Pending → Running (or the start failure) after this long.
    pub start_ms: u64,
    /// Fails before running instead: `Err(reason)` = failed, `Ok(code)` = exited.
    pub start_failure: Option<Result<i32, String>>,
    /// Running → Passing after this long (`None`: health stays Unknown forever).
    pub healthy_after_ms: Option<u64>,
    /// Running → Critical after this long instead of ever passing.
    pub critical_after_ms: Option<u64>,
    /// Exits with code 1 this long after turning healthy.
    pub crash_after_healthy_ms: Option<u64>,
    /// Turns critical this long after turning healthy.
    pub critical_after_healthy_ms: Option<u64>,
}

impl Behavior {
    pub fn good(start_ms: u64, healthy_after_ms: u64) -> Self {
        Behavior {
            start_ms,
            start_failure: None,
            healthy_after_ms: Some(healthy_after_ms),
            critical_after_ms: None,
            crash_after_healthy_ms: None,
            critical_after_healthy_ms: None,
        }
    }
}

#[derive(Clone, Debug)]
struct SimTask {
    snap: TaskSnapshot,
    running_at: Option<u64>,
    healthy_at: Option<u64>,
    stop_signal_at: Option<u64>,
}

/// What happened to a task, for the stop-ordering check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Deregistered,
    StopSignal,
    MarkedStopped,
}

pub struct Sim {
    pub now_ms: u64,
    tasks: BTreeMap<String, SimTask>,
    pub behaviors: BTreeMap<Revision, Behavior>,
    pub deployment: Deployment,
    pub state: DeploymentState,
    pub nodes: Vec<Node>,
    pub task_size: Resources,
    /// Stop signal → exit.
    pub stop_time_ms: u64,
    next_id: u64,
    pub log: BTreeMap<String, Vec<(u64, Event, bool)>>,
    pub steps: u64,
    pub min_healthy_seen: usize,
    pub max_occupying_seen: usize,
    pub placement_failures: u64,
    /// Deployments in order (the first, then any rollback).
    pub history: Vec<(Deployment, DeploymentState)>,
    /// First plan of each rollback deployment.
    pub first_rollback_plan: Option<DeploymentPlan>,
    /// Nodes cut off from the controller: their tasks neither progress nor get signals (the
    /// agent cannot hear the servers), and they serve nothing (the catalog marks the node
    /// critical).
    pub down: BTreeSet<String>,
    pub lost_task_timeout_ms: u64,
    /// The reconciler's persisted back-off state (for [`Sim::reconcile_once`]).
    pub restart: RestartState,
    /// Deregistrations of tasks that came back from a down node, with the number of healthy
    /// serving tasks that were not lost just before it.
    pub returned_stops: Vec<(String, usize)>,
}

impl Sim {
    /// A cluster of `nodes` nodes in `zones` zones running `desired` healthy tasks of
    /// `revision`.
    pub fn new(nodes: usize, zones: usize, revision: Revision, desired: u32) -> Self {
        let nodes = (0..nodes)
            .map(|i| Node {
                id: format!("node-{i:05}"),
                zone: format!("zone-{}", i % zones.max(1)),
                attributes: BTreeMap::new(),
                capacity: Resources::new(16_000, 65_536),
                allocated: Resources::default(),
                status: Default::default(),
            })
            .collect();
        let mut sim = Sim {
            now_ms: 1_000_000,
            tasks: BTreeMap::new(),
            behaviors: BTreeMap::new(),
            deployment: Deployment::default(),
            state: DeploymentState::default(),
            nodes,
            task_size: Resources::new(100, 256),
            stop_time_ms: 1_500,
            next_id: 0,
            log: BTreeMap::new(),
            steps: 0,
            min_healthy_seen: usize::MAX,
            max_occupying_seen: 0,
            placement_failures: 0,
            history: Vec::new(),
            first_rollback_plan: None,
            down: BTreeSet::new(),
            lost_task_timeout_ms: DEFAULT_LOST_TASK_TIMEOUT_MS,
            restart: RestartState::default(),
            returned_stops: Vec::new(),
        };
        sim.behaviors.insert(revision, Behavior::good(0, 0));
        let created = sim.create_tasks(revision, desired);
        for id in created {
            let t = sim.tasks.get_mut(&id).expect("just created");
            t.snap.observed = ObservedState::Running;
            t.snap.reached_running = true;
            t.snap.health = TaskHealth::Passing;
            t.snap.ever_passed = true;
            t.snap.healthy_since_ms = Some(0);
            t.running_at = Some(0);
            t.healthy_at = Some(0);
        }
        sim
    }

    pub fn begin(&mut self, deployment: Deployment) {
        self.deployment = deployment;
        self.state = DeploymentState::started(self.now_ms);
    }

    fn create_tasks(&mut self, revision: Revision, count: u32) -> Vec<String> {
        let existing: Vec<ExistingTask> = self
            .tasks
            .values()
            .filter(|t| t.snap.is_active())
            .filter_map(|t| {
                Some(ExistingTask {
                    node: t.snap.node.clone()?,
                    zone: t.snap.zone.clone()?,
                })
            })
            .collect();
        let mut state = match PlacementState::new(
            &self.nodes,
            &existing,
            self.task_size,
            Strategy::Spread,
            &[],
        ) {
            Ok(s) => s,
            Err(e) => panic!("placement state: {e}"),
        };
        let plan = state.place(count);
        self.placement_failures += plan.failures.len() as u64;
        let mut created = Vec::new();
        for p in plan.placements {
            let i = self
                .nodes
                .binary_search_by(|n| n.id.cmp(&p.node))
                .expect("placed on a known node");
            self.nodes[i].allocated = self.nodes[i].allocated.saturating_add(&self.task_size);
            self.next_id += 1;
            let id = format!("t{:07}", self.next_id);
            self.tasks.insert(
                id.clone(),
                SimTask {
                    snap: TaskSnapshot {
                        id: id.clone(),
                        revision,
                        created_at_ms: self.now_ms,
                        node: Some(p.node.clone()),
                        zone: Some(self.nodes[i].zone.clone()),
                        ..Default::default()
                    },
                    running_at: None,
                    healthy_at: None,
                    stop_signal_at: None,
                },
            );
            created.push(id);
        }
        created
    }

    pub fn snapshot(&self) -> DeploymentSnapshot {
        DeploymentSnapshot {
            deployment: self.deployment.clone(),
            state: self.state.clone(),
            tasks: self.tasks.values().map(|t| t.snap.clone()).collect(),
            down_nodes: self.down.clone(),
            lost_task_timeout_ms: self.lost_task_timeout_ms,
            ..Default::default()
        }
    }

    /// What the reconciler sees: the deployment's target revision, count and settings.
    pub fn service_snapshot(&self) -> ServiceSnapshot {
        let s = &self.deployment.settings;
        ServiceSnapshot {
            revision: self.deployment.target_revision,
            desired_count: self.deployment.desired_count,
            tasks: self.tasks.values().map(|t| t.snap.clone()).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeHeartbeat {
                    id: n.id.clone(),
                    last_heartbeat_ms: if self.down.contains(&n.id) {
                        0
                    } else {
                        self.now_ms
                    },
                })
                .collect(),
            settings: ReconcileSettings {
                drain_delay_ms: s.drain_delay_ms,
                max_unavailable: s.max_unavailable,
                node_down_after_ms: 3_000,
                lost_task_timeout_ms: self.lost_task_timeout_ms,
                ..Default::default()
            },
            restart: self.restart.clone(),
        }
    }

    /// One reconcile, applied like the IO loop applies it (invariants checked).
    pub fn reconcile_once(&mut self) -> Result<ReconcilePlan, String> {
        let plan = reconcile(&self.service_snapshot(), self.now_ms);
        self.steps += 1;
        self.apply_actions(&plan.actions)?;
        self.restart = plan.restart.clone();
        Ok(plan)
    }

    /// Cuts `node` off: its tasks are lost to the controller.
    pub fn node_down(&mut self, node: &str) {
        self.down.insert(node.to_owned());
        if let Ok(i) = self.nodes.binary_search_by(|n| n.id.as_str().cmp(node)) {
            self.nodes[i].status = NodeStatus::Down;
        }
    }

    /// `node` is heard again. Its agent now acts on what it missed: a stop signal sent while
    /// it was away, or a task given up meanwhile, stops now.
    pub fn node_up(&mut self, node: &str) {
        self.down.remove(node);
        if let Ok(i) = self.nodes.binary_search_by(|n| n.id.as_str().cmp(node)) {
            self.nodes[i].status = NodeStatus::Ready;
        }
        let now = self.now_ms;
        for t in self.tasks.values_mut() {
            if t.snap.node.as_deref() != Some(node) || t.snap.is_terminal() {
                continue;
            }
            if t.stop_signal_at.is_some() || t.snap.stop_phase == StopPhase::Stopped {
                t.stop_signal_at = Some(now);
            }
        }
    }

    fn on_down_node(&self, t: &TaskSnapshot) -> bool {
        t.node.as_ref().is_some_and(|n| self.down.contains(n))
    }

    /// Active tasks on down nodes flagged lost.
    pub fn lost_flags(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.snap.is_active() && t.snap.lost_since_ms.is_some())
            .count()
    }

    /// Containers running on reachable nodes, whatever the controller thinks of them.
    pub fn alive(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| !t.snap.is_terminal() && !self.on_down_node(&t.snap))
            .count()
    }

    fn min_healthy_ms(&self) -> u64 {
        match self.deployment.kind {
            DeploymentKind::Rollback { .. } => 0,
            DeploymentKind::Update => self.deployment.settings.min_healthy_time_ms,
        }
    }

    /// Healthy tasks in the catalog, by the controller's definition (none on a down node).
    pub fn healthy_serving(&self) -> usize {
        let min = self.min_healthy_ms();
        let target = self.deployment.target_revision;
        self.tasks
            .values()
            .filter(|t| t.snap.is_active() && !self.on_down_node(&t.snap))
            .filter(|t| {
                let m = if t.snap.revision == target { min } else { 0 };
                t.snap.is_healthy(m, self.now_ms)
            })
            .count()
    }

    /// Tasks holding resources.
    pub fn occupying(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| !t.snap.is_terminal() && t.snap.stop_phase != StopPhase::Stopped)
            // A never-routed task on its way out does not hold a place in the surge.
            .filter(|t| t.snap.is_active() || t.snap.was_routable())
            // Nor does a lost one: the scheduler does not count a down node.
            .filter(|t| !self.on_down_node(&t.snap))
            .count()
    }

    /// Applies a plan like the IO loop, checking the invariants. Returns an error message on
    /// a violation.
    pub fn apply(&mut self, plan: &DeploymentPlan) -> Result<(), String> {
        self.apply_actions(&plan.actions)?;
        self.state = plan.state.clone();
        for action in &plan.actions {
            if let Action::StartRollback { to_revision } = action {
                let from = self.deployment.target_revision;
                self.history
                    .push((self.deployment.clone(), self.state.clone()));
                let mut rollback = self.deployment.clone();
                rollback.id = format!("{}-rollback", rollback.id);
                rollback.target_revision = *to_revision;
                rollback.kind = DeploymentKind::Rollback {
                    from_revision: from,
                };
                self.begin(rollback);
                let first = step(&self.snapshot(), self.now_ms);
                self.first_rollback_plan = Some(first.clone());
                self.steps += 1;
                return self.apply(&first);
            }
        }
        Ok(())
    }

    /// Applies task actions like the IO loop, checking the invariants.
    pub fn apply_actions(&mut self, actions: &[Action]) -> Result<(), String> {
        let settings = self.deployment.settings.clone();
        let desired = self.deployment.desired_count as usize;
        let floor = desired.saturating_sub(settings.max_unavailable as usize);
        let healthy_before = self.healthy_serving();
        let rollback = matches!(self.deployment.kind, DeploymentKind::Rollback { .. });
        let mut started = false;
        let healthy_never_lost = self.healthy_never_lost();
        for action in actions {
            match action {
                Action::StartTask { revision, count } => {
                    started = true;
                    self.create_tasks(*revision, *count);
                }
                Action::DeregisterTask { task, .. } => {
                    let down = self
                        .tasks
                        .get(task)
                        .is_some_and(|t| self.on_down_node(&t.snap));
                    let t = self
                        .tasks
                        .get_mut(task)
                        .ok_or("deregister of unknown task")?;
                    if t.snap.stop_phase != StopPhase::Active {
                        return Err(format!("{task}: deregistered twice"));
                    }
                    if t.snap.lost_since_ms.is_some() && !down {
                        self.returned_stops.push((task.clone(), healthy_never_lost));
                    }
                    t.snap.desired = DesiredState::Stop;
                    t.snap.stop_phase = StopPhase::Draining {
                        since_ms: self.now_ms,
                    };
                    let ran = t.snap.was_routable();
                    self.log.entry(task.clone()).or_default().push((
                        self.now_ms,
                        Event::Deregistered,
                        ran,
                    ));
                }
                Action::StopTask { task } => {
                    let t = self.tasks.get_mut(task).ok_or("stop of unknown task")?;
                    let StopPhase::Draining { since_ms } = t.snap.stop_phase else {
                        return Err(format!("{task}: stop signal before deregistration"));
                    };
                    if t.snap.was_routable() && self.now_ms < since_ms + settings.drain_delay_ms {
                        return Err(format!(
                            "{task}: stop signal {} ms after deregistration (drain delay {})",
                            self.now_ms - since_ms,
                            settings.drain_delay_ms
                        ));
                    }
                    t.snap.stop_phase = StopPhase::Stopping {
                        since_ms: self.now_ms,
                    };
                    t.stop_signal_at = Some(self.now_ms);
                    let ran = t.snap.was_routable();
                    self.log.entry(task.clone()).or_default().push((
                        self.now_ms,
                        Event::StopSignal,
                        ran,
                    ));
                }
                Action::MarkTaskStopped { task } => {
                    let unreachable = self
                        .tasks
                        .get(task)
                        .is_some_and(|t| self.on_down_node(&t.snap));
                    let t = self.tasks.get_mut(task).ok_or("mark of unknown task")?;
                    if !t.snap.is_terminal() && !unreachable {
                        return Err(format!("{task}: marked stopped while still alive"));
                    }
                    if t.snap.stop_phase == StopPhase::Active {
                        return Err(format!("{task}: marked stopped without deregistration"));
                    }
                    t.snap.stop_phase = StopPhase::Stopped;
                    self.log.entry(task.clone()).or_default().push((
                        self.now_ms,
                        Event::MarkedStopped,
                        true,
                    ));
                }
                Action::MarkTaskLost { task } => {
                    let down = self
                        .tasks
                        .get(task)
                        .is_some_and(|t| self.on_down_node(&t.snap));
                    let t = self
                        .tasks
                        .get_mut(task)
                        .ok_or("lost mark of unknown task")?;
                    if !down || t.snap.lost_since_ms.is_some() {
                        return Err(format!(
                            "{task}: marked lost (down: {down}) twice or while its node is up"
                        ));
                    }
                    t.snap.lost_since_ms = Some(self.now_ms);
                }
                Action::MarkTaskFound { task } => {
                    let down = self
                        .tasks
                        .get(task)
                        .is_some_and(|t| self.on_down_node(&t.snap));
                    let t = self
                        .tasks
                        .get_mut(task)
                        .ok_or("found mark of unknown task")?;
                    if down || t.snap.lost_since_ms.is_none() {
                        return Err(format!(
                            "{task}: found while its node is down or never lost"
                        ));
                    }
                    t.snap.lost_since_ms = None;
                }
                Action::MarkDeployment { .. } | Action::StartRollback { .. } => {}
            }
        }

        let healthy_after = self.healthy_serving();
        if healthy_after < floor.min(healthy_before) {
            return Err(format!(
                "healthy count went from {healthy_before} to {healthy_after}, floor {floor}, at step {}",
                self.steps
            ));
        }
        self.min_healthy_seen = self.min_healthy_seen.min(healthy_after);
        let occupying = self.occupying();
        self.max_occupying_seen = self.max_occupying_seen.max(occupying);
        let cap = desired + settings.max_surge as usize;
        if started && !rollback && occupying > cap {
            return Err(format!(
                "{occupying} tasks hold resources after a start, cap {cap}"
            ));
        }
        Ok(())
    }

    /// Healthy serving tasks that were never lost.
    fn healthy_never_lost(&self) -> usize {
        let min = self.min_healthy_ms();
        let target = self.deployment.target_revision;
        self.tasks
            .values()
            .filter(|t| t.snap.is_active() && t.snap.lost_since_ms.is_none())
            .filter(|t| !self.on_down_node(&t.snap))
            .filter(|t| {
                let m = if t.snap.revision == target { min } else { 0 };
                t.snap.is_healthy(m, self.now_ms)
            })
            .count()
    }

    /// Moves time forward, letting tasks progress per their behaviour.
    pub fn advance(&mut self, dt_ms: u64) {
        self.now_ms += dt_ms;
        let now = self.now_ms;
        let stop_time = self.stop_time_ms;
        let mut freed = Vec::new();
        let down = self.down.clone();
        for t in self.tasks.values_mut() {
            // A cut-off node's tasks are frozen as the controller last heard of them.
            if t.snap.is_terminal() || t.snap.node.as_ref().is_some_and(|n| down.contains(n)) {
                continue;
            }
            if let Some(at) = t.stop_signal_at {
                if now >= at + stop_time {
                    t.snap.observed = ObservedState::Exited { code: 0 };
                    t.snap.health = TaskHealth::Unknown;
                    t.snap.healthy_since_ms = None;
                    freed.push(t.snap.node.clone());
                }
                continue;
            }
            let Some(b) = self.behaviors.get(&t.snap.revision) else {
                continue;
            };
            let start_at = t.snap.created_at_ms + b.start_ms;
            if t.running_at.is_none() {
                if now < start_at {
                    t.snap.observed = if now >= t.snap.created_at_ms + b.start_ms / 2 {
                        ObservedState::Starting
                    } else {
                        ObservedState::Pulling
                    };
                    continue;
                }
                match &b.start_failure {
                    Some(Ok(code)) => {
                        t.snap.observed = ObservedState::Exited { code: *code };
                        freed.push(t.snap.node.clone());
                        continue;
                    }
                    Some(Err(reason)) => {
                        t.snap.observed = ObservedState::Failed {
                            reason: reason.clone(),
                        };
                        freed.push(t.snap.node.clone());
                        continue;
                    }
                    None => {
                        t.snap.observed = ObservedState::Running;
                        t.snap.reached_running = true;
                        t.running_at = Some(start_at);
                    }
                }
            }
            let running_at = t.running_at.unwrap_or(start_at);
            if let Some(c) = b.critical_after_ms {
                if now >= running_at + c {
                    t.snap.health = TaskHealth::Critical;
                    t.snap.healthy_since_ms = None;
                    continue;
                }
            }
            if let Some(h) = b.healthy_after_ms {
                let healthy_at = running_at + h;
                if now >= healthy_at && t.healthy_at.is_none() {
                    t.healthy_at = Some(healthy_at);
                    t.snap.health = TaskHealth::Passing;
                    t.snap.ever_passed = true;
                    t.snap.healthy_since_ms = Some(healthy_at);
                }
            }
            if let Some(healthy_at) = t.healthy_at {
                if let Some(c) = b.crash_after_healthy_ms {
                    if now >= healthy_at + c {
                        t.snap.observed = ObservedState::Exited { code: 1 };
                        t.snap.health = TaskHealth::Unknown;
                        t.snap.healthy_since_ms = None;
                        freed.push(t.snap.node.clone());
                        continue;
                    }
                }
                if let Some(c) = b.critical_after_healthy_ms {
                    if now >= healthy_at + c {
                        t.snap.health = TaskHealth::Critical;
                        t.snap.healthy_since_ms = None;
                    }
                }
            }
        }
        for node in freed.into_iter().flatten() {
            if let Ok(i) = self.nodes.binary_search_by(|n| n.id.cmp(&node)) {
                self.nodes[i].allocated = self.nodes[i].allocated.saturating_sub(&self.task_size);
            }
        }
    }

    /// Kills a task out of band (it dies by itself).
    pub fn kill(&mut self, id: &str) {
        if let Some(t) = self.tasks.get_mut(id) {
            if !t.snap.is_terminal() {
                t.snap.observed = ObservedState::Exited { code: 137 };
                t.snap.health = TaskHealth::Unknown;
                t.snap.healthy_since_ms = None;
                if let Some(node) = t.snap.node.clone() {
                    if let Ok(i) = self.nodes.binary_search_by(|n| n.id.cmp(&node)) {
                        self.nodes[i].allocated =
                            self.nodes[i].allocated.saturating_sub(&self.task_size);
                    }
                }
            }
        }
    }

    pub fn task_ids(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    pub fn task(&self, id: &str) -> Option<&TaskSnapshot> {
        self.tasks.get(id).map(|t| &t.snap)
    }

    /// Runs steps until the (last) deployment is terminal or `max_steps` pass.
    pub fn run(&mut self, tick_ms: u64, max_steps: u64) -> Result<DeploymentStatus, String> {
        while self.steps < max_steps {
            let plan = step(&self.snapshot(), self.now_ms);
            self.steps += 1;
            self.apply(&plan)?;
            if self.state.status.is_terminal() {
                self.history
                    .push((self.deployment.clone(), self.state.clone()));
                return Ok(self.state.status);
            }
            self.advance(tick_ms);
        }
        Err(format!(
            "not finished after {max_steps} steps: {:?}",
            self.state
        ))
    }

    /// Checks every task's stop log: deregister → (drain) stop → stopped, in that order.
    pub fn check_stop_order(&self) -> Result<(), String> {
        let drain = self.deployment.settings.drain_delay_ms;
        for (task, events) in &self.log {
            let kinds: Vec<Event> = events.iter().map(|e| e.1).collect();
            let ok = matches!(
                kinds.as_slice(),
                [Event::Deregistered]
                    | [Event::Deregistered, Event::StopSignal]
                    | [Event::Deregistered, Event::StopSignal, Event::MarkedStopped]
                    | [Event::Deregistered, Event::MarkedStopped]
            );
            if !ok {
                return Err(format!("{task}: stop events out of order: {kinds:?}"));
            }
            if let [(dereg, _, ran), (stop, Event::StopSignal, _), ..] = events.as_slice() {
                if *ran && *stop < dereg + drain {
                    return Err(format!("{task}: stopped before the drain delay"));
                }
            }
        }
        Ok(())
    }

    /// Tasks not stopped, per revision.
    pub fn alive_by_revision(&self) -> BTreeMap<Revision, usize> {
        let mut m = BTreeMap::new();
        for t in self.tasks.values() {
            if !t.snap.is_terminal() && t.snap.stop_phase != StopPhase::Stopped {
                *m.entry(t.snap.revision).or_default() += 1;
            }
        }
        m
    }

    pub fn healthy_by_revision(&self) -> BTreeMap<Revision, usize> {
        let mut m = BTreeMap::new();
        for t in self.tasks.values() {
            if t.snap.is_active() && t.snap.is_healthy(0, self.now_ms) {
                *m.entry(t.snap.revision).or_default() += 1;
            }
        }
        m
    }
}
