//! Task instances in the Consul-compatible catalog. The catalog is derived from task state:
//! a task is registered once its agent reports it running with its host ports, its check
//! follows the health the agent reports, and it is removed the moment the controller starts
//! its stop sequence (before the drain delay and the stop signal), so the gateway — which
//! routes to passing catalog instances — never sends a request to a task being stopped.

use std::collections::BTreeMap;

use pier_api::service::{NodeRecord, ServiceSpec, TaskHealth, TaskRecord, TaskStatus};
use pier_catalog::{
    Catalog, CheckDefinition, CheckRegistration, CheckStatus, InstanceRegistration,
    NodeRegistration,
};

pub fn check_id(task_id: &str) -> String {
    format!("pier-task:{task_id}")
}

/// The gateway's route tag for a service's route host.
pub fn route_tag(route: &str) -> String {
    format!("urlprefix-{route}")
}

pub async fn register_node(catalog: &Catalog, node: &NodeRecord) {
    let reg = NodeRegistration {
        name: node.name.clone(),
        address: node.host_ip.clone(),
        zone: Some(node.zone.clone()),
        meta: BTreeMap::from([("pier-agent".to_string(), node.agent_addr.clone())]),
        tagged_addresses: BTreeMap::new(),
        monitored: true,
    };
    if let Err(err) = catalog.register_node(&reg).await {
        tracing::warn!(node = %node.name, error = %err, "cannot register the node in the catalog");
    }
}

fn check_status(health: TaskHealth) -> CheckStatus {
    match health {
        TaskHealth::Healthy => CheckStatus::Passing,
        TaskHealth::Unknown | TaskHealth::Unhealthy => CheckStatus::Critical,
    }
}

/// Registers (or refreshes) a running task's instance and sets its check to its health.
pub async fn register_task(
    catalog: &Catalog,
    task: &TaskRecord,
    status: &TaskStatus,
    spec: &ServiceSpec,
) {
    let Some(container_port) = spec.ports.first() else {
        return;
    };
    let Some(host_port) = status.host_ports.get(container_port) else {
        return;
    };
    let reg = InstanceRegistration {
        id: task.id.clone(),
        service: spec.name.clone(),
        node: task.node.clone(),
        address: status.host_ip.clone().unwrap_or_default(),
        port: *host_port,
        tags: vec![route_tag(&spec.route), format!("rev-{}", task.revision)],
        meta: BTreeMap::from([
            ("pier-task".to_string(), task.id.clone()),
            ("pier-revision".to_string(), task.revision.to_string()),
            ("pier-zone".to_string(), task.zone.clone()),
        ]),
        weights: None,
        enable_tag_override: false,
        checks: vec![CheckRegistration {
            id: Some(check_id(&task.id)),
            name: Some(format!("pier task {}", task.id)),
            notes: "health reported by the pier agent running the task".into(),
            status: Some(check_status(status.health)),
            definition: CheckDefinition::manual(),
        }],
    };
    if let Err(err) = catalog.register_instance(&reg).await {
        tracing::warn!(task = %task.id, error = %err, "cannot register the task in the catalog");
        return;
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
    }
}

pub async fn deregister_task(catalog: &Catalog, node: &str, task_id: &str) {
    if let Err(err) = catalog.deregister_instance(node, task_id).await {
        tracing::warn!(task = %task_id, error = %err, "cannot deregister the task from the catalog");
    }
}
