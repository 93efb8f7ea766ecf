//! Volumes on the server side: host paths are refused up front unless a node allows them
//! (`--volume-root`), a service with a named volume is pinned to the node that holds it (its
//! agent reports its volumes; a node that has run a task of such a service holds it too), and
//! `/api/v1/volumes` lists and removes named volumes (the removal is done by the node's agent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use pier_api::service::{is_under, ServiceSpec, VolumeSpec, VolumeView};
use pier_core::placement::{
    Constraint, ConstraintOp, ConstraintTarget, ExistingTask, Node, Placement, PlacementFailure,
    PlacementPlan, Resources,
};
use pier_store::Consistency;

use crate::api::{invalid, not_found, ApiResult};
use crate::world::World;
use crate::{OrchestratorError, Shared};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/volumes", get(list))
        .route("/api/v1/volumes/{name}", delete(remove))
}

fn host_sources(spec: &ServiceSpec) -> Vec<&str> {
    spec.volumes
        .iter()
        .filter_map(|v| match v {
            VolumeSpec::Host { source, .. } => Some(source.as_str()),
            _ => None,
        })
        .collect()
}

fn named(spec: &ServiceSpec) -> Vec<&str> {
    spec.volumes
        .iter()
        .filter_map(|v| match v {
            VolumeSpec::Named { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// Nodes whose `--volume-root`s cover every host path of `spec`.
fn nodes_allowing<'a>(world: &'a World, sources: &[&str]) -> Vec<&'a str> {
    world
        .nodes
        .values()
        .filter(|n| {
            sources
                .iter()
                .all(|s| n.value.volume_roots.iter().any(|r| is_under(s, r)))
        })
        .map(|n| n.value.name.as_str())
        .collect()
}

/// Refuses (before anything changes) a host path no node allows.
pub(crate) fn check_host_paths(world: &World, spec: &ServiceSpec) -> Result<(), String> {
    let sources = host_sources(spec);
    if sources.is_empty() || !nodes_allowing(world, &sources).is_empty() {
        return Ok(());
    }
    let roots: BTreeSet<String> = world
        .nodes
        .values()
        .flat_map(|n| {
            n.value
                .volume_roots
                .iter()
                .map(|r| format!("{r} (node {})", n.value.name))
        })
        .collect();
    Err(format!(
        "host path(s) {} of service {} are not under any node's --volume-root ({}); a host path is mounted only below a directory its agent allows",
        sources.join(", "),
        spec.name,
        if roots.is_empty() {
            "no node allows host paths".to_string()
        } else {
            format!("allowed: {}", roots.into_iter().collect::<Vec<_>>().join(", "))
        }
    ))
}

/// Nodes holding named volume `name`: those whose agent reports it, and those that have a
/// task of a service mounting it (the volume is created there when the task starts).
fn holders<'a>(world: &'a World, name: &str) -> BTreeSet<&'a str> {
    let mut out: BTreeSet<&str> = world
        .nodes
        .values()
        .filter(|n| n.value.volumes.iter().any(|v| v == name))
        .map(|n| n.value.name.as_str())
        .collect();
    for t in world.tasks.values() {
        let uses = world
            .spec(&t.value.service, t.value.revision)
            .is_some_and(|s| named(s).contains(&name));
        if uses && world.nodes.contains_key(&t.value.node) {
            out.insert(t.value.node.as_str());
        }
    }
    out
}

/// The placement constraints `spec`'s volumes add: nodes that allow its host paths, and the
/// node(s) that already hold its named volumes.
pub(crate) fn constraints(world: &World, spec: &ServiceSpec) -> Vec<Constraint> {
    let mut out = Vec::new();
    let sources = host_sources(spec);
    if !sources.is_empty() {
        let nodes = nodes_allowing(world, &sources);
        out.push(Constraint::Match {
            target: ConstraintTarget::NodeId,
            op: ConstraintOp::In(nodes.into_iter().map(str::to_string).collect()),
        });
    }
    for name in named(spec) {
        let held = holders(world, name);
        if !held.is_empty() {
            out.push(Constraint::Match {
                target: ConstraintTarget::NodeId,
                op: ConstraintOp::In(held.into_iter().map(str::to_string).collect()),
            });
        }
    }
    out
}

/// Places `count` tasks of `spec` with its volume constraints. Every task of a service shares
/// its named volumes, so all of them must land on one node; a named volume that no node holds
/// yet is created where the first task starts, so when there is one the tasks are placed one
/// first and the rest pinned to wherever it went (placing them together would spread them over
/// nodes and give each node its own, different volume of that name). `planned` are the nodes of
/// tasks of this service already placed earlier in this pass (not yet in `world`).
pub(crate) fn place_tasks(
    world: &World,
    mut nodes: Vec<Node>,
    mut existing: Vec<ExistingTask>,
    spec: &ServiceSpec,
    count: u32,
    planned: &[String],
) -> PlacementPlan {
    let mut pinned = constraints(world, spec);
    let unheld = named(spec).iter().any(|n| holders(world, n).is_empty());
    if !unheld || count == 0 {
        return crate::place::place(nodes, existing, spec, count, pinned);
    }
    let pin = |node: &str| Constraint::Match {
        target: ConstraintTarget::NodeId,
        op: ConstraintOp::In(vec![node.to_string()]),
    };
    if let Some(first) = planned.first() {
        pinned.push(pin(first));
        return crate::place::place(nodes, existing, spec, count, pinned);
    }
    let mut plan = crate::place::place(nodes.clone(), existing.clone(), spec, 1, pinned.clone());
    let Some(first) = plan.placements.first().map(|p| p.node.clone()) else {
        if let Some(reason) = plan.failures.first().map(|f| f.reason.clone()) {
            plan.failures
                .extend((1..count).map(|slot| PlacementFailure {
                    slot,
                    reason: reason.clone(),
                }));
        }
        return plan;
    };
    let one = Resources::new(spec.cpu_millis, spec.memory_mb);
    for n in nodes.iter_mut().filter(|n| n.id == first) {
        n.allocated = n.allocated.saturating_add(&one);
        existing.push(ExistingTask {
            node: n.id.clone(),
            zone: n.zone.clone(),
        });
    }
    pinned.push(pin(&first));
    let rest = crate::place::place(nodes, existing, spec, count - 1, pinned);
    plan.placements
        .extend(rest.placements.into_iter().map(|p| Placement {
            slot: p.slot + 1,
            ..p
        }));
    plan.failures
        .extend(rest.failures.into_iter().map(|f| PlacementFailure {
            slot: f.slot + 1,
            ..f
        }));
    debug_assert!(plan.placements.iter().all(|p| p.node == first));
    plan
}

/// Services whose current revision mounts named volume `name`.
fn users(world: &World, name: &str) -> Vec<String> {
    world
        .services
        .iter()
        .filter(|(_, s)| !s.value.record.deleting)
        .filter(|(svc, s)| {
            world
                .spec(svc, s.value.record.revision)
                .is_some_and(|spec| named(spec).contains(&name))
        })
        .map(|(svc, _)| svc.clone())
        .collect()
}

async fn list(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Vec<VolumeView>>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let mut out = Vec::new();
    for n in world.nodes.values() {
        for v in &n.value.volumes {
            out.push(VolumeView {
                name: v.clone(),
                node: n.value.name.clone(),
                used_by: users(&world, v),
            });
        }
    }
    Ok(Json(out))
}

/// `DELETE /api/v1/volumes/:name[?node=N]`: removes the named volume on the nodes holding it
/// (or on N), refused while a service mounts it.
async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let used_by = users(&world, &name);
    if !used_by.is_empty() {
        return Err(OrchestratorError::Conflict(format!(
            "volume {name} is mounted by {}: deploy them without it (or remove them) first",
            used_by.join(", ")
        ))
        .into());
    }
    let nodes: Vec<_> = world
        .nodes
        .values()
        .filter(|n| n.value.volumes.contains(&name))
        .filter(|n| q.get("node").is_none_or(|want| *want == n.value.name))
        .collect();
    if nodes.is_empty() {
        return Err(not_found(format!("no node holds a volume named {name:?}")));
    }
    let mut removed = Vec::new();
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for n in nodes {
        let url = format!(
            "{}://{}/v1/volumes/{name}",
            shared.internal.scheme(),
            n.value.agent_addr
        );
        match shared.internal.get().delete(&url).send().await {
            Ok(r) if r.status().is_success() => removed.push(VolumeView {
                name: name.clone(),
                node: n.value.name.clone(),
                used_by: Vec::new(),
            }),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                failures.insert(n.value.name.clone(), format!("{status}: {}", body.trim()));
            }
            Err(e) => {
                failures.insert(n.value.name.clone(), format!("agent unreachable: {e}"));
            }
        }
    }
    if !failures.is_empty() {
        let text: Vec<String> = failures
            .into_iter()
            .map(|(node, why)| format!("on {node}: {why}"))
            .collect();
        return Err(invalid(format!(
            "volume {name} was not removed {}",
            text.join("; ")
        )));
    }
    tracing::info!(volume = %name, "volume removed");
    Ok(Json(removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_api::service::{parse_service_file, Limits, NodeRecord};
    use pier_store::Versioned;

    fn node(name: &str, volumes: &[&str]) -> (String, Versioned<NodeRecord>) {
        let value = NodeRecord {
            name: name.to_string(),
            zone: "z1".to_string(),
            agent_addr: "127.0.0.1:1".to_string(),
            host_ip: "127.0.0.1".to_string(),
            attributes: BTreeMap::new(),
            cpu_millis: 4000,
            memory_mb: 4096,
            draining: false,
            down: false,
            registered_at_ms: 0,
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            volume_roots: Vec::new(),
        };
        let doc = Versioned {
            value,
            flags: 0,
            create_index: 1,
            modify_index: 1,
        };
        (name.to_string(), doc)
    }

    fn world(nodes: Vec<(String, Versioned<NodeRecord>)>) -> World {
        World {
            index: 1,
            services: BTreeMap::new(),
            revisions: BTreeMap::new(),
            deployments: BTreeMap::new(),
            tasks: BTreeMap::new(),
            statuses: BTreeMap::new(),
            nodes: nodes.into_iter().collect(),
            catalog: None,
        }
    }

    fn spec_with_volume() -> ServiceSpec {
        let text = "name = \"db\"\nimage = \"db:1\"\ncount = 3\n\n[[volumes]]\nname = \"db-data\"\ntarget = \"/data\"\n";
        parse_service_file(text, Limits::default()).expect("valid service file")
    }

    fn placed_nodes(plan: &PlacementPlan) -> BTreeSet<String> {
        plan.placements.iter().map(|p| p.node.clone()).collect()
    }

    #[test]
    fn tasks_sharing_a_new_named_volume_land_on_one_node() {
        let w = world((0..4).map(|i| node(&format!("n{i}"), &[])).collect());
        let spec = spec_with_volume();
        let nodes = crate::place::cluster_nodes(&w, &BTreeMap::new());
        let plan = place_tasks(&w, nodes, Vec::new(), &spec, 3, &[]);
        assert!(plan.failures.is_empty(), "{:?}", plan.failures);
        assert_eq!(plan.placements.len(), 3);
        assert_eq!(placed_nodes(&plan).len(), 1, "{:?}", plan.placements);
        let slots: BTreeSet<u32> = plan.placements.iter().map(|p| p.slot).collect();
        assert_eq!(slots, BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn tasks_follow_the_node_that_holds_the_volume_or_was_chosen_earlier_in_the_pass() {
        let w = world(vec![
            node("n0", &[]),
            node("n1", &["db-data"]),
            node("n2", &[]),
        ]);
        let spec = spec_with_volume();
        let nodes = crate::place::cluster_nodes(&w, &BTreeMap::new());
        let plan = place_tasks(&w, nodes, Vec::new(), &spec, 3, &[]);
        assert_eq!(placed_nodes(&plan), BTreeSet::from(["n1".to_string()]));

        let w = world(vec![node("n0", &[]), node("n1", &[]), node("n2", &[])]);
        let nodes = crate::place::cluster_nodes(&w, &BTreeMap::new());
        let plan = place_tasks(&w, nodes, Vec::new(), &spec, 2, &["n2".to_string()]);
        assert_eq!(placed_nodes(&plan), BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn no_room_on_the_first_node_fails_the_rest_instead_of_spreading() {
        let mut w = world(vec![node("n0", &[]), node("n1", &[])]);
        for n in w.nodes.values_mut() {
            n.value.memory_mb = 128;
        }
        let text = "name = \"db\"\nimage = \"db:1\"\ncount = 2\nmemory = \"100MiB\"\n\n[[volumes]]\nname = \"db-data\"\ntarget = \"/data\"\n";
        let spec = parse_service_file(text, Limits::default()).expect("valid service file");
        let nodes = crate::place::cluster_nodes(&w, &BTreeMap::new());
        let plan = place_tasks(&w, nodes, Vec::new(), &spec, 2, &[]);
        assert_eq!(plan.placements.len(), 1);
        assert_eq!(plan.failures.len(), 1);
        assert_eq!(plan.failures[0].slot, 1);
    }
}
