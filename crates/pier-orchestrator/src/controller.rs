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
    let mut leader_since: Option<u64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !shared.store.status().is_leader {
            leader_since = None;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let now = now_ms();
        let grace_from = *leader_since.get_or_insert_with(|| {
            shared.heartbeats.reset(now);
            tracing::info!("orchestrator controller active on this server (raft leader)");
            now
        });
        let keys = [
            WatchKey::prefix(tables::SERVICES, ""),
            WatchKey::prefix(tables::DEPLOYMENTS, ""),
            WatchKey::prefix(tables::TASK_STATUS, ""),
            WatchKey::prefix(tables::NODES, ""),
        ];
        let mut watch = shared.store.watch(&keys);
        if let Err(err) = pass(&shared, now, grace_from).await {
            tracing::warn!(error = %err, "controller pass failed; retrying");
        }
        tokio::select! {
            _ = watch.changed(Duration::from_millis(shared.config.tick_ms)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn pass(shared: &Shared, now: u64, grace_from: u64) -> Result<(), crate::OrchestratorError> {
    let mut world = World::load(&shared.store, Consistency::Default).await?;

    // Node liveness: a node silent for longer than the timeout is down; a blip is not.
    let mut node_ops = Vec::new();
    for node in world.nodes.values_mut() {
        let last = shared.heartbeats.last(&node.value.name, grace_from);
        let down = matches!(
            core::node_liveness(last, now, shared.config.node_down_after_ms),
            core::NodeLiveness::Down { .. }
        );
        if down != node.value.down {
            if down {
                tracing::warn!(node = %node.value.name, silent_ms = now.saturating_sub(last), "node missed its heartbeats: marking it down");
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
        shared.store.write(Txn { ops: node_ops }).await?;
        // Re-read so indexes used as guards below are current.
        world = World::load(&shared.store, Consistency::Default).await?;
    }
    // Tasks on down or draining nodes are moved: pier-core treats them as lost.
    let away: BTreeSet<String> = world
        .nodes
        .values()
        .filter(|n| n.value.down || n.value.draining)
        .map(|n| n.value.name.clone())
        .collect();

    let mut extra_alloc: BTreeMap<String, Resources> = BTreeMap::new();
    let names: Vec<String> = world.services.keys().cloned().collect();
    for name in names {
        if let Err(err) = service_pass(shared, &world, &name, now, &away, &mut extra_alloc).await {
            tracing::warn!(service = %name, error = %err, "controller pass for the service failed");
        }
    }
    gc(shared, &world).await?;
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

async fn service_pass(
    shared: &Shared,
    world: &World,
    name: &str,
    now: u64,
    away: &BTreeSet<String>,
    extra_alloc: &mut BTreeMap<String, Resources>,
) -> Result<(), crate::OrchestratorError> {
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
    let snaps: Vec<core::TaskSnapshot> = own
        .iter()
        .map(|(t, s)| {
            let mut snap = task_snapshot(t, s);
            // Nobody will ever report the exit of a task on a down node: once its stop
            // sequence has begun, it counts as gone so the sequence can finish (if the node
            // comes back, its agent removes the container because the task is stopped).
            let node_down = world.nodes.get(&t.node).is_none_or(|n| n.value.down);
            if node_down && t.stop_phase != StopPhase::Active && !snap.observed.is_terminal() {
                snap.observed = core::ObservedState::Failed {
                    reason: "node down".into(),
                };
            }
            snap
        })
        .collect();
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
        Some(d) if !doc.record.deleting => {
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
                tasks: snaps.clone(),
                down_nodes: away.clone(),
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
        _ => {
            // A draining node's tasks are replaced before they are stopped: they stay out of
            // the reconciler's view (so it starts replacements elsewhere), and one is asked to
            // stop only when enough tasks elsewhere are healthy to keep the count.
            let draining: BTreeSet<&str> = world
                .nodes
                .values()
                .filter(|n| n.value.draining && !n.value.down)
                .map(|n| n.value.name.as_str())
                .collect();
            let on_drain: BTreeSet<String> = snaps
                .iter()
                .filter(|t| {
                    t.is_active()
                        && t.desired == core::DesiredState::Run
                        && !t.is_terminal()
                        && t.node.as_deref().is_some_and(|n| draining.contains(n))
                })
                .map(|t| t.id.clone())
                .collect();
            let healthy_elsewhere = snaps
                .iter()
                .filter(|t| {
                    t.is_active()
                        && t.desired == core::DesiredState::Run
                        && !on_drain.contains(&t.id)
                        && t.is_healthy(0, now)
                })
                .count();
            let stoppable = (healthy_elsewhere + on_drain.len())
                .saturating_sub(desired_count as usize)
                .min(on_drain.len());
            drain_stops = on_drain.iter().take(stoppable).cloned().collect();
            let nodes = world
                .nodes
                .values()
                .map(|n| core::NodeHeartbeat {
                    id: n.value.name.clone(),
                    last_heartbeat_ms: if n.value.down { 0 } else { now },
                })
                .collect();
            let snapshot = core::ServiceSnapshot {
                revision: doc.record.revision,
                desired_count,
                tasks: snaps
                    .iter()
                    .filter(|t| !on_drain.contains(&t.id))
                    .cloned()
                    .collect(),
                nodes,
                settings: core::ReconcileSettings {
                    drain_delay_ms: current_spec.deploy.drain_delay_ms,
                    node_down_after_ms: shared.config.node_down_after_ms,
                    restart_backoff_initial_ms: shared.config.restart_backoff_initial_ms,
                    restart_backoff_max_ms: shared.config.restart_backoff_max_ms,
                    restart_backoff_reset_after_ms: shared.config.restart_backoff_reset_after_ms,
                },
                restart: (&doc.restart).into(),
            };
            let plan = core::reconcile(&snapshot, now);
            doc.restart = (&plan.restart).into();
            plan.actions
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
                        t.stop_phase == StopPhase::Active
                            && t.desired == DesiredState::Running
                            && !s.state.is_terminal()
                            && !away.contains(&t.node)
                            && !updated.contains_key(&t.id)
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
                let plan = crate::place::place(nodes, existing, spec, *count);
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
        .filter(|(t, _)| t.stop_phase == StopPhase::Active && !updated.contains_key(&t.id))
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

/// Deletes the oldest stopped tasks of each service beyond the few kept for `pier service ps`.
async fn gc(shared: &Shared, world: &World) -> Result<(), crate::OrchestratorError> {
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
    if !ops.is_empty() {
        shared.store.write(Txn { ops }).await?;
    }
    Ok(())
}
