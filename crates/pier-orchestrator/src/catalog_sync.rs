//! Task instances in the Consul-compatible catalog. The catalog is derived from task state:
//! a task is registered once its agent reports it running with its host ports, its check
//! follows the health the agent reports, and it is removed the moment the controller starts
//! its stop sequence (before the drain delay and the stop signal), so the gateway — which
//! routes to passing catalog instances — never sends a request to a task being stopped.

use std::collections::{BTreeMap, BTreeSet};

use pier_api::service::{
    NodeRecord, ServiceSpec, StopPhase, TaskHealth, TaskRecord, TaskState, TaskStatus,
};
use pier_catalog::{
    Catalog, CheckDefinition, CheckRegistration, CheckStatus, Instance, InstanceRegistration, Node,
    NodeRegistration,
};

use crate::world::World;
use crate::Shared;

/// Instance meta with the task's address on its node's pier network (`ip:container-port`):
/// what the node's DNS gives the node's other containers, which cannot reach the host port
/// on a loopback host address.
pub const META_NETWORK_ADDR: &str = pier_api::service::template::NETWORK_ADDR_META;

/// Instance meta naming the task: marks the instances the orchestrator owns.
pub const META_TASK: &str = "pier-task";

pub fn check_id(task_id: &str) -> String {
    format!("pier-task:{task_id}")
}

/// The gateway's route tag for a service's route host.
pub fn route_tag(route: &str) -> String {
    format!("urlprefix-{route}")
}

/// The route tag of a service with its HTTPS options (`https=redirect`, `hsts=true`, `tls=acme`).
pub fn spec_route_tag(spec: &pier_api::service::ServiceSpec) -> String {
    let mut tag = route_tag(&spec.route);
    if spec.https_redirect {
        tag.push_str(" https=redirect");
    }
    if spec.hsts {
        tag.push_str(" hsts=true");
    }
    if spec.tls_acme {
        tag.push_str(" tls=acme");
    }
    tag
}

pub async fn register_node(catalog: &Catalog, node: &NodeRecord) {
    if let Err(err) = catalog.register_node(&node_registration(node)).await {
        tracing::warn!(node = %node.name, error = %err, "cannot register the node in the catalog");
    }
}

fn node_registration(node: &NodeRecord) -> NodeRegistration {
    NodeRegistration {
        name: node.name.clone(),
        address: node.host_ip.clone(),
        zone: Some(node.zone.clone()),
        meta: BTreeMap::from([("pier-agent".to_string(), node.agent_addr.clone())]),
        tagged_addresses: BTreeMap::new(),
        monitored: true,
    }
}

fn check_status(health: TaskHealth) -> CheckStatus {
    match health {
        TaskHealth::Healthy => CheckStatus::Passing,
        TaskHealth::Unknown | TaskHealth::Unhealthy => CheckStatus::Critical,
    }
}

/// The catalog instance a running task should have: `None` when its service publishes no
/// port or the agent has not reported the host port yet.
fn instance_registration(
    task: &TaskRecord,
    status: &TaskStatus,
    spec: &ServiceSpec,
) -> Option<InstanceRegistration> {
    let container_port = spec.ports.first()?;
    let host_port = status.host_ports.get(container_port)?;
    let mut meta = BTreeMap::from([
        (META_TASK.to_string(), task.id.clone()),
        ("pier-revision".to_string(), task.revision.to_string()),
        ("pier-zone".to_string(), task.zone.clone()),
    ]);
    if let Some(ip) = status.network_ip.as_ref().filter(|ip| !ip.is_empty()) {
        meta.insert(
            META_NETWORK_ADDR.to_string(),
            format!("{ip}:{container_port}"),
        );
    }
    Some(InstanceRegistration {
        id: task.id.clone(),
        service: spec.name.clone(),
        node: task.node.clone(),
        address: status.host_ip.clone().unwrap_or_default(),
        port: *host_port,
        tags: vec![spec_route_tag(spec), format!("rev-{}", task.revision)],
        meta,
        weights: None,
        enable_tag_override: false,
        checks: vec![CheckRegistration {
            id: Some(check_id(&task.id)),
            name: Some(format!("pier task {}", task.id)),
            notes: "health reported by the pier agent running the task".into(),
            status: Some(check_status(status.health)),
            definition: CheckDefinition::manual(),
        }],
    })
}

/// Registers (or refreshes) a running task's instance and sets its check to its health.
/// Returns whether both writes succeeded.
pub async fn register_task(
    catalog: &Catalog,
    task: &TaskRecord,
    status: &TaskStatus,
    spec: &ServiceSpec,
) -> bool {
    let Some(reg) = instance_registration(task, status, spec) else {
        return false;
    };
    if let Err(err) = catalog.register_instance(&reg).await {
        tracing::warn!(task = %task.id, error = %err, "cannot register the task in the catalog");
        return false;
    }
    let output = status.message.clone().unwrap_or_default();
    if let Err(err) = catalog
        .update_check(
            &task.node,
            &check_id(&task.id),
            check_status(status.health),
            Some(&output),
        )
        .await
    {
        tracing::warn!(task = %task.id, error = %err, "cannot update the task's catalog check");
        return false;
    }
    true
}

pub async fn deregister_task(catalog: &Catalog, node: &str, task_id: &str) {
    if let Err(err) = catalog.deregister_instance(node, task_id).await {
        tracing::warn!(task = %task_id, error = %err, "cannot deregister the task from the catalog");
    }
}

// ------------------------------------------------------------------ level-triggered pass

/// The catalog's pier-owned entries, read in the controller's world view
/// ([`World::load_with_catalog`]) so they are from the same moment as the task state.
#[derive(Default)]
pub struct CatalogView {
    /// (node, instance id) → instance and the status of its pier task check.
    instances: BTreeMap<(String, String), (Instance, Option<CheckStatus>)>,
    nodes: BTreeMap<String, Node>,
}

impl CatalogView {
    pub fn read(v: &pier_store::StateView<'_>) -> CatalogView {
        let instances = pier_catalog::catalog::read_instances_with_meta(v, META_TASK)
            .into_iter()
            .map(|(inst, checks)| {
                let wanted_check = check_id(&inst.id);
                let status = checks
                    .iter()
                    .find(|c| c.id == wanted_check)
                    .map(|c| c.status);
                ((inst.node.clone(), inst.id.clone()), (inst, status))
            })
            .collect();
        let nodes = pier_catalog::catalog::read_nodes(v)
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        CatalogView { instances, nodes }
    }
}

/// What the catalog pass writes. Pure data, computed by `plan`.
#[derive(Default)]
struct CatalogPlan {
    register_nodes: Vec<NodeRecord>,
    /// Missing or different instances (registered with their check).
    register: Vec<(TaskRecord, TaskStatus, ServiceSpec)>,
    /// Instances that match but whose check status does not.
    set_check: Vec<(TaskRecord, TaskStatus)>,
    /// (node, id) of pier instances no serving task accounts for.
    deregister: Vec<(String, String)>,
    /// Tasks whose instance is in the catalog and passing already.
    routable: BTreeSet<String>,
}

/// A task is in the catalog while it is active and running; the same rule the status
/// report's fast path follows.
fn serving(task: &TaskRecord, status: &TaskStatus) -> bool {
    task.stop_phase == StopPhase::Active && status.state == TaskState::Running
}

fn plan(world: &World, catalog: &CatalogView) -> CatalogPlan {
    let mut out = CatalogPlan::default();
    for node in world.nodes.values().map(|n| &n.value) {
        let wanted = node_registration(node);
        let same = catalog.nodes.get(&node.name).is_some_and(|n| {
            n.address == wanted.address && n.zone == wanted.zone && n.meta == wanted.meta
        });
        if !same {
            out.register_nodes.push(node.clone());
        }
    }
    // Instances accounted for by a task: kept even when this pass cannot judge them (a
    // revision newer than the world snapshot).
    let mut kept: BTreeSet<(String, String)> = BTreeSet::new();
    for task in world.tasks.values().map(|t| &t.value) {
        let Some(status) = world.statuses.get(&task.id).map(|s| &s.value) else {
            continue;
        };
        if !serving(task, status) {
            continue;
        }
        let key = (task.node.clone(), task.id.clone());
        let Some(spec) = world.spec(&task.service, task.revision) else {
            kept.insert(key);
            continue;
        };
        let Some(wanted) = instance_registration(task, status, spec) else {
            continue;
        };
        kept.insert(key.clone());
        let want_check = check_status(status.health);
        match catalog.instances.get(&key) {
            Some((inst, check)) if same_instance(inst, &wanted) => {
                if *check != Some(want_check) {
                    out.set_check.push((task.clone(), status.clone()));
                } else if want_check == CheckStatus::Passing {
                    out.routable.insert(task.id.clone());
                }
            }
            _ => out
                .register
                .push((task.clone(), status.clone(), spec.clone())),
        }
    }
    out.deregister = catalog
        .instances
        .keys()
        .filter(|k| !kept.contains(*k))
        .cloned()
        .collect();
    out
}

fn same_instance(inst: &Instance, wanted: &InstanceRegistration) -> bool {
    inst.service == wanted.service
        && inst.address == wanted.address
        && inst.port == wanted.port
        && inst.tags == wanted.tags
        && inst.meta == wanted.meta
}

/// The level-triggered half of catalog sync, run on every controller pass: the catalog
/// entry of every task is derived from task state and corrected where it differs (missing,
/// stale address or revision, wrong check status, a stopped task still registered), so a
/// lost fast-path write (a leader crash between the task write and the catalog write, a
/// failed catalog write) heals within one pass. Returns the tasks whose instance is in the
/// catalog and passing now: a rollout counts only those as healthy.
pub(crate) async fn reconcile(
    shared: &Shared,
    world: &World,
    catalog_view: &CatalogView,
) -> BTreeSet<String> {
    let mut plan = plan(world, catalog_view);
    let catalog = &shared.catalog;
    for node in &plan.register_nodes {
        tracing::info!(node = %node.name, "catalog: node entry missing or stale; registering it");
        register_node(catalog, node).await;
    }
    for (task, status, spec) in &plan.register {
        tracing::info!(task = %task.id, "catalog: task instance missing or stale; registering it");
        if register_task(catalog, task, status, spec).await && status.health == TaskHealth::Healthy
        {
            plan.routable.insert(task.id.clone());
        }
    }
    for (task, status) in &plan.set_check {
        let output = status.message.clone().unwrap_or_default();
        let health = check_status(status.health);
        match catalog
            .update_check(&task.node, &check_id(&task.id), health, Some(&output))
            .await
        {
            Ok(_) if health == CheckStatus::Passing => {
                plan.routable.insert(task.id.clone());
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(task = %task.id, error = %err, "cannot correct the task's catalog check")
            }
        }
    }
    for (node, id) in &plan.deregister {
        tracing::info!(task = %id, node = %node, "catalog: no serving task for this instance; deregistering it");
        deregister_task(catalog, node, id).await;
    }
    plan.routable
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_route_tag_carries_the_https_options() {
        let file = "name = \"web\"\nimage = \"127.0.0.1:5000/web:v1\"\nhttps = \"redirect\"\nhsts = true\n";
        let spec = pier_api::service::parse_service_file(file, Default::default()).unwrap();
        assert_eq!(
            super::spec_route_tag(&spec),
            "urlprefix-web.localhost https=redirect hsts=true"
        );
        let plain = pier_api::service::parse_service_file(
            "name = \"web\"\nimage = \"127.0.0.1:5000/web:v1\"\n",
            Default::default(),
        )
        .unwrap();
        assert_eq!(super::spec_route_tag(&plain), "urlprefix-web.localhost");
        let acme = pier_api::service::parse_service_file(
            "name = \"web\"\nimage = \"127.0.0.1:5000/web:v1\"\nroute = \"web.example.com\"\ntls = \"acme\"\n",
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            super::spec_route_tag(&acme),
            "urlprefix-web.example.com tls=acme"
        );
        let bad = pier_api::service::parse_service_file(
            "name = \"web\"\nimage = \"127.0.0.1:5000/web:v1\"\ntls = \"letsencrypt\"\n",
            Default::default(),
        )
        .unwrap_err();
        assert!(bad.to_string().contains("tls = \"acme\""), "{bad}");
    }
}
