//! The controller loop. It runs only on the raft leader and is a thin shell around pier-core:
//! read the world, ask `deployment::step` (while a deployment is in progress) or
//! `deployment::reconcile` (otherwise) what to do for each service, place new tasks with the
//! scheduler, and write the outcome in one guarded transaction per service. It wakes on any
//! write to the orchestrator's tables and at least every `tick_ms` for the time-driven
//! transitions (drain delays, minimum healthy time, heartbeat timeouts, back-off).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pier_api::service::{
    DeploymentEvent, DeploymentStatus, DesiredState, ServiceSpec, StopPhase, TaskRecord,
};
use pier_core::deployment::{self as core, Action};
use pier_core::placement::{ExistingTask, Resources};
use pier_store::{Consistency, Op, Txn, WatchKey};

use crate::tables::{self, DeploymentDoc, StoredSettings, StoredState, StoredStatus};
use crate::world::{holds_resources, task_snapshot, World};
use crate::{catalog_sync, now_ms, Shared};

const MAX_EVENTS: usize = 100;
const KEEP_STOPPED_TASKS: usize = 10;

pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // The term this server leads, set once it has passed the leadership barrier.
    let mut leadership: Option<u64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if leadership.is_some_and(|term| shared.store.leading_term() != Some(term)) {
            leadership = None;
        }
        if !shared.store.status().is_leader {
            leadership = None;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let term = match leadership {
            Some(l) => l,
            None => match take_leadership(&shared).await {
                Some(l) => *leadership.insert(l),
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            },
        };
        let now = now_ms();
        let keys = [
            WatchKey::prefix(tables::SERVICES, ""),
            WatchKey::prefix(tables::DEPLOYMENTS, ""),
            WatchKey::prefix(tables::TASK_STATUS, ""),
            WatchKey::prefix(tables::NODES, ""),
        ];
        let mut watch = shared.store.watch(&keys);
        if let Err(err) = pass(&shared, now, term).await {
            tracing::warn!(error = %err, "controller pass failed; retrying");
        }
        tokio::select! {
            _ = watch.changed(Duration::from_millis(shared.config.tick_ms)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A new leader acts only after it has applied everything earlier terms committed (the
/// barrier); every write of its passes is then guarded by its term, so a deposed leader's
/// late writes fail instead of undoing the next leader's work. Returns the term.
async fn take_leadership(shared: &Shared) -> Option<u64> {
    match shared.store.leader_barrier().await {
        Ok(term) => {
            shared.catalog.begin_leadership(term);
            tracing::info!(
                term,
                "orchestrator controller active on this server (raft leader)"
            );
            Some(term)
        }
        Err(e) => {
            tracing::debug!(error = %e, "leadership barrier not passed yet");
            None
        }
    }
}

async fn pass(shared: &Shared, now: u64, term: u64) -> Result<(), crate::OrchestratorError> {
    let mut world = World::load_with_catalog(&shared.store, Consistency::Default).await?;

    // Node liveness: a node silent for longer than the timeout is down; a blip is not.
    let mut node_ops = Vec::new();
    let held = shared.catalog.mass_silence_held(
        world
            .nodes
            .values()
            .map(|n| (n.value.name.as_str(), n.value.down)),
    );
    if held {
        // The node monitor on this same leader says so (rate-limited); every pass would spam.
        tracing::debug!("more than half of the live nodes are silent at once: marking none down");
    }
    for node in world.nodes.values_mut() {
        // The cluster's one failure detector (the catalog's heartbeat table); a blip shorter
        // than its timeout is not a failure.
        let beat = shared.catalog.node_beat(&node.value.name);
        let silent = !held && shared.catalog.is_silent(beat);
        // A new leader's grace period keeps nodes up that were up; it must not bring back a
        // node already marked down: its lost tasks would count again (and their replacements
        // be trimmed) before anyone has heard from it.
        let down = silent || (node.value.down && !beat.heard);
        if down != node.value.down {
            if down {
                tracing::warn!(node = %node.value.name, silent_ms = beat.silent_ms, "node missed its heartbeats: marking it down");
            } else {
                tracing::info!(node = %node.value.name, "node is heartbeating again: marking it up");
            }
            node.value.down = down;
            node_ops.push(tables::nodes().put_cas(
                node.value.name.clone(),
                &node.value,
                node.modify_index,
            )?);
        }
    }
    if !node_ops.is_empty() {
        node_ops.push(Op::leader_term(term));
        shared.store.write(Txn { ops: node_ops }).await?;
        // Re-read so indexes used as guards below are current.
        world = World::load_with_catalog(&shared.store, Consistency::Default).await?;
    }
    debug_assert!(
        world.catalog.is_some(),
        "the controller loads the catalog view"
    );
    let catalog_view = world.catalog.take().unwrap_or_default();
    let routable = catalog_sync::reconcile(shared, &world, &catalog_view).await;
    let mut extra_alloc: BTreeMap<String, Resources> = BTreeMap::new();
    let names: Vec<String> = world.services.keys().cloned().collect();
    for name in names {
        let ctx = PassContext {
            now,
            term,
            routable: &routable,
        };
        if let Err(err) = service_pass(shared, &world, &name, ctx, &mut extra_alloc).await {
            tracing::warn!(service = %name, error = %err, "controller pass for the service failed");
        }
    }
    gc(shared, &world, term).await?;
    Ok(())
}

pub(crate) fn settings_for(spec: &ServiceSpec, count: u32) -> StoredSettings {
    let mut max_surge = spec.deploy.max_surge.resolve(count.max(1), true);
    let max_unavailable = spec.deploy.max_unavailable.resolve(count, false);
    if max_surge == 0 && max_unavailable == 0 {
        max_surge = 1;
    }
    StoredSettings {
        max_surge,
        max_unavailable,
        min_healthy_time_ms: spec.deploy.min_healthy_time_ms,
        healthy_deadline_ms: spec.deploy.healthy_deadline_ms,
        failure_threshold: spec.deploy.failure_threshold,
        auto_rollback: spec.deploy.auto_rollback,
        drain_delay_ms: spec.deploy.drain_delay_ms,
    }
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn new_deployment(
    service: &str,
    revision: u64,
    from_revision: Option<u64>,
    spec: &ServiceSpec,
    count: u32,
    previous_stable: Option<u64>,
    rollback_from: Option<u64>,
    now: u64,
) -> DeploymentDoc {
    let settings = settings_for(spec, count);
    let threshold = core::DeploymentSettings::from(&settings).failure_threshold_for(count);
    let message = match rollback_from {
        Some(from) => format!("rolling back from revision {from} to revision {revision}"),
        None => format!("rolling out revision {revision} ({} tasks)", count),
    };
    DeploymentDoc {
        record: pier_api::service::DeploymentRecord {
            id: format!("{service}-{revision}-{}", random_suffix()),
            service: service.to_string(),
            revision,
            from_revision,
            status: DeploymentStatus::InProgress,
            desired: count,
            placed: 0,
            healthy: 0,
            failed: 0,
            old_running: 0,
            failure_threshold: threshold,
            auto_rollback: settings.auto_rollback,
            rollback_of: None,
            rolled_back_by: None,
            reason: None,
            events: vec![DeploymentEvent {
                at_ms: now,
                message,
            }],
            created_at_ms: now,
            updated_at_ms: now,
        },
        settings,
        rollback_from,
        previous_stable,
        state: StoredState::from(&core::DeploymentState::started(now)),
    }
}

fn push_event(events: &mut Vec<DeploymentEvent>, at_ms: u64, message: String) {
    events.push(DeploymentEvent { at_ms, message });
    if events.len() > MAX_EVENTS {
        let excess = events.len() - MAX_EVENTS;
        events.drain(..excess);
    }
}

fn wire_status(s: StoredStatus) -> DeploymentStatus {
    match s {
        StoredStatus::InProgress => DeploymentStatus::InProgress,
        StoredStatus::Succeeded => DeploymentStatus::Succeeded,
        StoredStatus::Failed => DeploymentStatus::Failed,
        StoredStatus::RolledBack => DeploymentStatus::RolledBack,
    }
}

/// What every service's pass shares.
#[derive(Clone, Copy)]
struct PassContext<'a> {
    now: u64,
    term: u64,
    /// Tasks whose catalog instance is passing (see `catalog_sync::reconcile`).
    routable: &'a BTreeSet<String>,
}

/// A task of a service with a port is healthy for deployments only once the gateway can
/// route to it, i.e. its catalog instance is passing; until then it counts as not yet known.
fn gate_on_catalog(
    world: &World,
    task: &TaskRecord,
    mut snap: core::TaskSnapshot,
    routable: &BTreeSet<String>,
) -> core::TaskSnapshot {
    let publishes_port = world
        .spec(&task.service, task.revision)
        .is_some_and(|spec| !spec.ports.is_empty());
    if publishes_port && snap.health == core::TaskHealth::Passing && !routable.contains(&task.id) {
        snap.health = core::TaskHealth::Unknown;
    }
    snap
}

async fn service_pass(
    shared: &Shared,
    world: &World,
    name: &str,
    ctx: PassContext<'_>,
    extra_alloc: &mut BTreeMap<String, Resources>,
) -> Result<(), crate::OrchestratorError> {
    let PassContext {
        now,
        term,
        routable,
    } = ctx;
    let Some(svc) = world.services.get(name) else {
        return Ok(());
    };
    let mut doc = svc.value.clone();
    let Some(current_spec) = world.spec(name, doc.record.revision).cloned() else {
        tracing::warn!(service = %name, revision = doc.record.revision, "service points at a missing revision");
        return Ok(());
    };
    let own: Vec<(TaskRecord, pier_api::service::TaskStatus)> = world
        .tasks_of(name)
        .map(|t| (t.value.clone(), world.status_of(&t.value.id)))
        .collect();
    // Tasks on a down node are lost, not stopped (pier-core decides what becomes of them,
    // including finishing the stop sequence of tasks nobody will ever report the exit of).
    let snaps: Vec<core::TaskSnapshot> = own
        .iter()
        .map(|(t, s)| gate_on_catalog(world, t, task_snapshot(t, s), routable))
        .collect();
    let nodes = NodeSets::of(world, &own);
    let desired_count = if doc.record.deleting {
        0
    } else {
        doc.record.count
    };
    let dep = world
        .deployment_of(&doc)
        .filter(|d| d.value.record.status == DeploymentStatus::InProgress);

    let mut new_dep: Option<DeploymentDoc> = None;
    let mut drain_stops: Vec<String> = Vec::new();
    let mut dep_doc = dep.map(|d| d.value.clone());
    let actions = match &mut dep_doc {
        Some(d) if !doc.record.deleting => deployment_step(shared, d, &snaps, &nodes, now),
        _ => {
            let (on_drain, stops) = drain_plan(&snaps, &nodes, desired_count as usize, now);
            drain_stops = stops;
            let view = ServiceView {
                snaps: &snaps,
                on_drain: &on_drain,
                spec: &current_spec,
                desired_count,
            };
            reconcile_step(shared, world, &mut doc, view, now)
        }
    };

    let mut updated: BTreeMap<String, TaskRecord> = BTreeMap::new();
    let mut created: Vec<TaskRecord> = Vec::new();
    let mut deregister: Vec<(String, String)> = Vec::new();
    let mut placement_error: Option<String> = None;
    let mut placement_attempted = false;
    let task_of = |id: &str, updated: &BTreeMap<String, TaskRecord>| -> Option<TaskRecord> {
        updated
            .get(id)
            .cloned()
            .or_else(|| own.iter().find(|(t, _)| t.id == id).map(|(t, _)| t.clone()))
    };
    for action in &actions {
        match action {
            Action::StartTask { revision, count } => {
                let Some(spec) = world.spec(name, *revision) else {
                    continue;
                };
                placement_attempted = true;
                let mut existing: Vec<ExistingTask> = own
                    .iter()
                    .filter(|(t, s)| {
                        let t = updated.get(&t.id).unwrap_or(t);
                        t.stop_phase == StopPhase::Active
                            && t.desired == DesiredState::Running
                            && !s.state.is_terminal()
                            && !nodes.away(&t.node)
                    })
                    .map(|(t, _)| ExistingTask {
                        node: t.node.clone(),
                        zone: t.zone.clone(),
                    })
                    .collect();
                existing.extend(created.iter().map(|t| ExistingTask {
                    node: t.node.clone(),
                    zone: t.zone.clone(),
                }));
                let nodes = crate::place::cluster_nodes(world, extra_alloc);
                let planned: Vec<String> = created.iter().map(|t| t.node.clone()).collect();
                let plan =
                    crate::volumes::place_tasks(world, nodes, existing, spec, *count, &planned);
                for p in &plan.placements {
                    let zone = world
                        .nodes
                        .get(&p.node)
                        .map(|n| n.value.zone.clone())
                        .unwrap_or_default();
                    let task = TaskRecord {
                        id: format!("{name}-{revision}-{}", random_suffix()),
                        service: name.to_string(),
                        revision: *revision,
                        node: p.node.clone(),
                        zone,
                        desired: DesiredState::Running,
                        stop_phase: StopPhase::Active,
                        stop_reason: None,
                        created_at_ms: now,
                        lost_since_ms: None,
                    };
                    let r = extra_alloc.entry(p.node.clone()).or_default();
                    *r = r.saturating_add(&Resources::new(spec.cpu_millis, spec.memory_mb));
                    if let Some(d) = dep_doc.as_mut() {
                        push_event(
                            &mut d.record.events,
                            now,
                            format!(
                                "task {} placed on node {} (zone {})",
                                task.id, task.node, task.zone
                            ),
                        );
                    }
                    created.push(task);
                }
                if let Some(f) = plan.failures.first() {
                    let reason = format!(
                        "{} of {} tasks could not be placed: {}",
                        plan.failures.len(),
                        count,
                        f.reason
                    );
                    placement_error = Some(reason);
                }
            }
            Action::DeregisterTask { task, reason } => {
                if let Some(mut t) = task_of(task, &updated) {
                    t.desired = DesiredState::Stopped;
                    t.stop_phase = StopPhase::Draining { since_ms: now };
                    t.stop_reason = Some(reason.to_string());
                    deregister.push((t.node.clone(), t.id.clone()));
                    updated.insert(t.id.clone(), t);
                }
            }
            Action::StopTask { task } => {
                if let Some(mut t) = task_of(task, &updated) {
                    t.desired = DesiredState::Stopped;
                    t.stop_phase = StopPhase::Stopping { since_ms: now };
                    updated.insert(t.id.clone(), t);
                }
            }
            Action::MarkTaskStopped { task } => {
                if let Some(mut t) = task_of(task, &updated) {
                    t.desired = DesiredState::Stopped;
                    t.stop_phase = StopPhase::Stopped;
                    // A task that died without a stop sequence is still in the catalog.
                    deregister.push((t.node.clone(), t.id.clone()));
                    updated.insert(t.id.clone(), t);
                }
            }
            Action::MarkTaskLost { task } => {
                if let Some(mut t) = task_of(task, &updated) {
                    t.lost_since_ms = Some(now);
                    updated.insert(t.id.clone(), t);
                }
            }
            Action::MarkTaskFound { task } => {
                if let Some(mut t) = task_of(task, &updated) {
                    t.lost_since_ms = None;
                    updated.insert(t.id.clone(), t);
                }
            }
            Action::MarkDeployment { status, .. } => {
                if let (Some(d), core::DeploymentStatus::Succeeded) = (dep_doc.as_ref(), status) {
                    doc.record.stable_revision = Some(d.record.revision);
                }
            }
            Action::StartRollback { to_revision } => {
                let Some(d) = dep_doc.as_mut() else { continue };
                let Some(spec) = world.spec(name, *to_revision) else {
                    continue;
                };
                let mut rb = new_deployment(
                    name,
                    *to_revision,
                    Some(d.record.revision),
                    spec,
                    d.record.desired,
                    Some(*to_revision),
                    Some(d.record.revision),
                    now,
                );
                rb.record.rollback_of = Some(d.record.id.clone());
                d.record.rolled_back_by = Some(rb.record.id.clone());
                push_event(
                    &mut d.record.events,
                    now,
                    format!("rolling back to revision {to_revision} ({})", rb.record.id),
                );
                doc.record.revision = *to_revision;
                doc.record.deployment = Some(rb.record.id.clone());
                new_dep = Some(rb);
            }
        }
    }
    for id in &drain_stops {
        if let Some(mut t) = task_of(id, &updated) {
            if t.desired == DesiredState::Running {
                t.desired = DesiredState::Stopped;
                t.stop_reason = Some("node draining".into());
                updated.insert(t.id.clone(), t);
            }
        }
    }
    let active = own
        .iter()
        .map(|(t, _)| updated.get(&t.id).unwrap_or(t))
        .filter(|t| t.stop_phase == StopPhase::Active && t.desired == DesiredState::Running)
        .count();
    if placement_attempted {
        if doc.record.placement_error != placement_error {
            if let (Some(d), Some(e)) = (dep_doc.as_mut(), placement_error.as_ref()) {
                push_event(&mut d.record.events, now, e.clone());
            }
            doc.record.placement_error = placement_error;
        }
    } else if active >= desired_count as usize {
        doc.record.placement_error = None;
    }

    // Refresh the deployment's counts for people.
    if let Some(d) = dep_doc.as_mut() {
        d.record.status = wire_status(d.state.status);
        d.record.reason = d.state.reason.clone();
        d.record.placed = d.state.counts.placed;
        d.record.healthy = d.state.counts.healthy;
        d.record.failed = d.state.counts.failed;
        d.record.old_running = own
            .iter()
            .filter(|(t, s)| {
                t.revision != d.record.revision
                    && t.stop_phase == StopPhase::Active
                    && holds_resources(t, s)
            })
            .count() as u32;
    }

    let mut ops: Vec<Op> = Vec::new();
    ops.push(Op::check(tables::SERVICES, name, svc.modify_index));
    let doc_changed = serde_json::to_value(&doc).ok() != serde_json::to_value(&svc.value).ok();
    if let (Some(d), Some(orig)) = (dep_doc.as_mut(), dep) {
        let changed = serde_json::to_value(&*d).ok() != serde_json::to_value(&orig.value).ok();
        if changed {
            d.record.updated_at_ms = now;
            ops.push(tables::deployments().put_cas(d.record.id.clone(), d, orig.modify_index)?);
        }
    }
    if let Some(rb) = &new_dep {
        ops.push(tables::deployments().put_cas(rb.record.id.clone(), rb, 0)?);
    }
    for t in updated.values() {
        ops.push(tables::tasks().put(tables::task_key(&t.node, &t.id), t)?);
    }
    for t in &created {
        ops.push(tables::tasks().put(tables::task_key(&t.node, &t.id), t)?);
    }
    if doc_changed {
        doc.record.updated_at_ms = now;
        ops.push(tables::services().put_cas(name.to_string(), &doc, svc.modify_index)?);
    }
    // Deleting: once every task is stopped, the service goes with its history.
    let all_stopped = own.iter().all(|(t, _)| {
        t.stop_phase == StopPhase::Stopped
            || updated
                .get(&t.id)
                .is_some_and(|u| u.stop_phase == StopPhase::Stopped)
    });
    if doc.record.deleting && all_stopped && created.is_empty() {
        ops.retain(|op| !matches!(op, Op::Put { table, .. } if *table == tables::SERVICES));
        ops.push(Op::delete(tables::SERVICES, name));
        ops.push(Op::delete_prefix(tables::REVISIONS, format!("{name}/")));
        for (id, d) in &world.deployments {
            if d.value.record.service == name {
                ops.push(Op::delete(tables::DEPLOYMENTS, id.clone()));
            }
        }
        for (t, _) in &own {
            ops.push(Op::delete(tables::TASKS, tables::task_key(&t.node, &t.id)));
            ops.push(Op::delete(tables::TASK_STATUS, t.id.clone()));
        }
        tracing::info!(service = %name, "service removed");
    }
    if ops.len() == 1 {
        return Ok(());
    }
    ops.push(Op::leader_term(term));
    let result = shared.store.write(Txn { ops }).await?;
    if !result.applied {
        // Someone (the API) changed the service meanwhile; the next pass recomputes.
        return Ok(());
    }
    for (node, id) in deregister {
        catalog_sync::deregister_task(&shared.catalog, &node, &id).await;
    }
    Ok(())
}

/// One step of the service's in-progress deployment; new failures and a change of status
/// become events of the deployment.
fn deployment_step(
    shared: &Shared,
    d: &mut DeploymentDoc,
    snaps: &[core::TaskSnapshot],
    nodes: &NodeSets,
    now: u64,
) -> Vec<Action> {
    let snapshot = core::DeploymentSnapshot {
        deployment: core::Deployment {
            id: d.record.id.clone(),
            target_revision: d.record.revision,
            previous_stable_revision: d.previous_stable,
            desired_count: d.record.desired,
            settings: (&d.settings).into(),
            kind: d.kind(),
        },
        state: (&d.state).into(),
        tasks: snaps.to_vec(),
        down_nodes: nodes.down.clone(),
        draining_nodes: nodes.draining.clone(),
        removed_nodes: nodes.removed.clone(),
        lost_task_timeout_ms: shared.config.lost_task_timeout_ms,
    };
    let plan = core::step(&snapshot, now);
    let before = d.state.status;
    let known_failures: BTreeSet<String> =
        d.state.failures.iter().map(|f| f.task.clone()).collect();
    d.state = StoredState::from(&plan.state);
    for f in &d.state.failures {
        if !known_failures.contains(&f.task) {
            let kind: core::FailureKind = (&f.kind).into();
            push_event(
                &mut d.record.events,
                now,
                format!("task {} failed: {}", f.task, kind.short()),
            );
        }
    }
    if before != d.state.status {
        let text = format!(
            "deployment {}{}",
            wire_status(d.state.status).as_str().replace('_', " "),
            d.state
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        push_event(&mut d.record.events, now, text);
    }
    plan.actions
}

/// What the reconciler is shown of a service outside deployments.
struct ServiceView<'a> {
    snaps: &'a [core::TaskSnapshot],
    /// Tasks of draining nodes, kept out of its view (see [`drain_plan`]).
    on_drain: &'a BTreeSet<String>,
    spec: &'a ServiceSpec,
    desired_count: u32,
}

/// One self-healing pass; the back-off state it returns goes into `doc`.
fn reconcile_step(
    shared: &Shared,
    world: &World,
    doc: &mut crate::tables::ServiceDoc,
    view: ServiceView<'_>,
    now: u64,
) -> Vec<Action> {
    let heartbeats = world
        .nodes
        .values()
        .map(|n| core::NodeHeartbeat {
            id: n.value.name.clone(),
            last_heartbeat_ms: if n.value.down { 0 } else { now },
        })
        .collect();
    let config = &shared.config;
    let snapshot = core::ServiceSnapshot {
        revision: doc.record.revision,
        desired_count: view.desired_count,
        tasks: view
            .snaps
            .iter()
            .filter(|t| !view.on_drain.contains(&t.id))
            .cloned()
            .collect(),
        nodes: heartbeats,
        settings: core::ReconcileSettings {
            drain_delay_ms: view.spec.deploy.drain_delay_ms,
            max_unavailable: settings_for(view.spec, view.desired_count).max_unavailable,
            node_down_after_ms: shared.catalog.config().node_dead_after_ms,
            lost_task_timeout_ms: config.lost_task_timeout_ms,
            restart_backoff_initial_ms: config.restart_backoff_initial_ms,
            restart_backoff_max_ms: config.restart_backoff_max_ms,
            restart_backoff_reset_after_ms: config.restart_backoff_reset_after_ms,
        },
        restart: (&doc.restart).into(),
    };
    let plan = core::reconcile(&snapshot, now);
    doc.restart = (&plan.restart).into();
    plan.actions
}

/// A draining node's tasks are replaced before they are stopped: they stay out of the
/// reconciler's view (so it starts replacements elsewhere), and one is asked to stop only when
/// enough tasks elsewhere are healthy to keep the count. Tasks lost on down nodes are not
/// "elsewhere": their last report is stale. Returns the draining tasks and those to stop now.
fn drain_plan(
    snaps: &[core::TaskSnapshot],
    nodes: &NodeSets,
    desired: usize,
    now: u64,
) -> (BTreeSet<String>, Vec<String>) {
    let wanted = |t: &core::TaskSnapshot| {
        t.is_active() && t.desired == core::DesiredState::Run && !t.is_terminal()
    };
    let on_node = |t: &core::TaskSnapshot, set: &BTreeSet<String>| {
        t.node.as_deref().is_some_and(|n| set.contains(n))
    };
    let on_drain: BTreeSet<String> = snaps
        .iter()
        .filter(|t| wanted(t) && on_node(t, &nodes.draining))
        .map(|t| t.id.clone())
        .collect();
    let healthy_elsewhere = snaps
        .iter()
        .filter(|t| wanted(t) && !on_drain.contains(&t.id) && t.is_healthy(0, now))
        .filter(|t| !on_node(t, &nodes.down) && !on_node(t, &nodes.removed))
        .count();
    let stoppable = (healthy_elsewhere + on_drain.len())
        .saturating_sub(desired)
        .min(on_drain.len());
    let stops = on_drain.iter().take(stoppable).cloned().collect();
    (on_drain, stops)
}

/// The nodes a service's tasks are on, as pier-core distinguishes them.
struct NodeSets {
    /// Missed their heartbeats: their tasks are lost.
    down: BTreeSet<String>,
    /// Up and draining: their tasks move elsewhere.
    draining: BTreeSet<String>,
    /// Named by a task but no longer registered: their tasks are given up.
    removed: BTreeSet<String>,
}

impl NodeSets {
    fn of(world: &World, own: &[(TaskRecord, pier_api::service::TaskStatus)]) -> NodeSets {
        let mut sets = NodeSets {
            down: BTreeSet::new(),
            draining: BTreeSet::new(),
            removed: BTreeSet::new(),
        };
        for n in world.nodes.values() {
            if n.value.down {
                sets.down.insert(n.value.name.clone());
            } else if n.value.draining {
                sets.draining.insert(n.value.name.clone());
            }
        }
        for (t, _) in own {
            if !world.nodes.contains_key(&t.node) {
                sets.removed.insert(t.node.clone());
            }
        }
        sets
    }

    /// The scheduler places nothing there and counts nothing there for spread.
    fn away(&self, node: &str) -> bool {
        self.down.contains(node) || self.draining.contains(node) || self.removed.contains(node)
    }
}

/// Deletes the oldest stopped tasks of each service beyond the few kept for `pier service ps`.
async fn gc(shared: &Shared, world: &World, term: u64) -> Result<(), crate::OrchestratorError> {
    let mut by_service: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
    for t in world.tasks.values() {
        if t.value.stop_phase == StopPhase::Stopped {
            by_service
                .entry(t.value.service.as_str())
                .or_default()
                .push(&t.value);
        }
    }
    let mut ops = Vec::new();
    for (_, mut list) in by_service {
        if list.len() <= KEEP_STOPPED_TASKS {
            continue;
        }
        list.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        for t in &list[KEEP_STOPPED_TASKS..] {
            ops.push(Op::delete(tables::TASKS, tables::task_key(&t.node, &t.id)));
            ops.push(Op::delete(tables::TASK_STATUS, t.id.clone()));
        }
    }
    ops.extend(retention_ops(world, shared.config.keep_revisions));
    if !ops.is_empty() {
        ops.push(Op::leader_term(term));
        shared.store.write(Txn { ops }).await?;
    }
    Ok(())
}

/// Revision history and finished deployments are bounded: per service, the newest `keep`
/// revisions stay (rollback targets), plus every revision something still names — the
/// current one, a task's that is not stopped, those an in-progress deployment may go back to. Of the finished deployments the
/// newest `keep` stay; the service's latest deployment and any in progress always do.
fn retention_ops(world: &World, keep: usize) -> Vec<Op> {
    let keep = keep.max(1);
    let mut ops = Vec::new();
    for (name, svc) in &world.services {
        let mut deployments: Vec<&DeploymentDoc> = world
            .deployments
            .values()
            .map(|d| &d.value)
            .filter(|d| d.record.service == *name)
            .collect();
        deployments
            .sort_by_key(|d| std::cmp::Reverse((d.record.created_at_ms, d.record.id.clone())));
        let latest = svc.value.record.deployment.as_deref();
        let mut kept_deps: Vec<&DeploymentDoc> = Vec::new();
        for (i, d) in deployments.into_iter().enumerate() {
            let kept = i < keep
                || d.record.status == DeploymentStatus::InProgress
                || Some(d.record.id.as_str()) == latest;
            if kept {
                kept_deps.push(d);
            } else {
                ops.push(Op::delete(tables::DEPLOYMENTS, d.record.id.clone()));
            }
        }
        let mut named: BTreeSet<u64> = BTreeSet::from([svc.value.record.revision]);
        // A stopped task keeps only its revision's number (for `pier service ps`).
        named.extend(
            world
                .tasks_of(name)
                .filter(|t| t.value.stop_phase != StopPhase::Stopped)
                .map(|t| t.value.revision),
        );
        // A deployment in progress may still roll back to where it came from.
        for d in kept_deps
            .iter()
            .filter(|d| d.record.status == DeploymentStatus::InProgress)
        {
            named.insert(d.record.revision);
            named.extend(d.record.from_revision);
            named.extend(d.previous_stable);
            named.extend(d.rollback_from);
        }
        let mut revisions: Vec<u64> = world
            .revisions
            .keys()
            .filter(|(s, _)| s == name)
            .map(|(_, r)| *r)
            .collect();
        revisions.sort_unstable_by(|a, b| b.cmp(a));
        for r in revisions.into_iter().skip(keep) {
            if !named.contains(&r) {
                ops.push(Op::delete(tables::REVISIONS, tables::revision_key(name, r)));
            }
        }
    }
    ops
}
