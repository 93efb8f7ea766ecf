//! From the stored world to pier-core's scheduler and back.

use std::collections::BTreeMap;

use pier_api::service::{ConstraintOp, PlacementStrategy, ServiceSpec};
use pier_core::placement::{
    self, ClusterSnapshot, Constraint, ConstraintOp as CoreOp, ConstraintTarget, ExistingTask,
    Node, NodeStatus, PlacementPlan, PlacementRequest, Resource, Resources, Strategy,
};

use crate::world::{holds_resources, World};

pub fn constraints_of(spec: &ServiceSpec) -> Vec<Constraint> {
    let mut out = Vec::new();
    for c in &spec.placement.constraints {
        let target = if c.target == "node.zone" {
            ConstraintTarget::Zone
        } else if c.target == "node.id" {
            ConstraintTarget::NodeId
        } else {
            ConstraintTarget::Attribute(c.target.trim_start_matches("attr.").to_string())
        };
        let op = match c.op {
            ConstraintOp::Eq => CoreOp::Eq(c.values.concat()),
            ConstraintOp::Ne => CoreOp::NotEq(c.values.concat()),
            ConstraintOp::In => CoreOp::In(c.values.clone()),
        };
        out.push(Constraint::Match { target, op });
    }
    if !spec.placement.zones.is_empty() {
        out.push(Constraint::Match {
            target: ConstraintTarget::Zone,
            op: CoreOp::In(spec.placement.zones.clone()),
        });
    }
    if spec.placement.distinct_node {
        out.push(Constraint::DistinctNode);
    }
    out
}

pub fn strategy_of(spec: &ServiceSpec) -> Strategy {
    match spec.placement.strategy {
        PlacementStrategy::Spread => Strategy::Spread,
        PlacementStrategy::BinpackMemory => Strategy::BinPack {
            resource: Resource::Memory,
        },
        PlacementStrategy::BinpackCpu => Strategy::BinPack {
            resource: Resource::Cpu,
        },
    }
}

/// The nodes with what is allocated on them now, `extra` added (tasks created earlier in the
/// same controller pass, not yet in `world`).
pub fn cluster_nodes(world: &World, extra: &BTreeMap<String, Resources>) -> Vec<Node> {
    let mut allocated: BTreeMap<&str, Resources> = BTreeMap::new();
    for t in world.tasks.values() {
        let status = world.status_of(&t.value.id);
        if !holds_resources(&t.value, &status) {
            continue;
        }
        if let Some(spec) = world.spec(&t.value.service, t.value.revision) {
            let r = allocated.entry(t.value.node.as_str()).or_default();
            *r = r.saturating_add(&Resources::new(spec.cpu_millis, spec.memory_mb));
        }
    }
    world
        .nodes
        .values()
        .map(|n| {
            let node = &n.value;
            let mut alloc = allocated
                .get(node.name.as_str())
                .copied()
                .unwrap_or_default();
            if let Some(more) = extra.get(&node.name) {
                alloc = alloc.saturating_add(more);
            }
            Node {
                id: node.name.clone(),
                zone: node.zone.clone(),
                attributes: node.attributes.clone(),
                capacity: Resources::new(node.cpu_millis, node.memory_mb),
                allocated: alloc,
                status: if node.down {
                    NodeStatus::Down
                } else if node.draining {
                    NodeStatus::Draining
                } else {
                    NodeStatus::Ready
                },
            }
        })
        .collect()
}

/// Places `count` tasks of `spec`. `existing` are the service's tasks that stay; `extra`
/// constraints come from the world (the nodes a service's volumes pin it to).
pub fn place(
    nodes: Vec<Node>,
    existing: Vec<ExistingTask>,
    spec: &ServiceSpec,
    count: u32,
    extra: Vec<Constraint>,
) -> PlacementPlan {
    let mut constraints = constraints_of(spec);
    constraints.extend(extra);
    let request = PlacementRequest {
        count,
        resources: Resources::new(spec.cpu_millis, spec.memory_mb),
        strategy: strategy_of(spec),
        constraints,
    };
    let snapshot = ClusterSnapshot { nodes, existing };
    match placement::place(&snapshot, &request) {
        Ok(plan) => plan,
        // Duplicate node ids cannot come from a table keyed by node name; report as failures.
        Err(err) => PlacementPlan {
            placements: Vec::new(),
            failures: (0..count)
                .map(|slot| pier_core::placement::PlacementFailure {
                    slot,
                    reason: pier_core::placement::FailureReason::NoNodes,
                })
                .inspect(|_| tracing::error!(error = %err, "scheduler refused the snapshot"))
                .collect(),
        },
    }
}

/// Whether any node could ever take one task of `spec` (capacity and constraints, ignoring
/// what runs now). `Err(reason)` when none can; `Ok` also when there are no nodes yet.
pub fn can_ever_fit(world: &World, spec: &ServiceSpec) -> Result<(), String> {
    let nodes: Vec<Node> = cluster_nodes(world, &BTreeMap::new())
        .into_iter()
        .map(|mut n| {
            n.allocated = Resources::default();
            n.status = NodeStatus::Ready;
            n
        })
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let mut one = spec.clone();
    one.placement.distinct_node = false;
    let plan = place(
        nodes,
        Vec::new(),
        &one,
        1,
        crate::volumes::constraints(world, spec),
    );
    match plan.failures.first() {
        Some(f) => Err(f.reason.to_string()),
        None => Ok(()),
    }
}
