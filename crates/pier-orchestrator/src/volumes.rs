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
use pier_core::placement::{Constraint, ConstraintOp, ConstraintTarget};
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
