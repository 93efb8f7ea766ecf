//! HTTP routes of the orchestrator. Handlers validate, read or write the store, and map
//! errors to pier's JSON error body; decisions belong to the controller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pier_api::service::{
    parse_service_file, AgentTask, AgentTasks, DeployRequest, DeployResponse, DeploymentRecord,
    DeploymentStatus, DrainRequest, Limits, NodeRecord, NodeView, RegisterNode, RevisionRecord,
    RollbackRequest, ScaleRequest, ServiceDetail, ServiceRecord, ServiceSpec, ServiceSummary,
    StopPhase, TaskHealth, TaskState, TaskStatus, TaskView,
};
use pier_api::{ApiError, ErrorCode};
use pier_store::blocking::{blocking_query, QueryOptions};
use pier_store::{Consistency, Op, StoreError, Txn, WatchKey};

use crate::controller::new_deployment;
use crate::tables::{self, ServiceDoc};
use crate::world::{holds_resources, World};
use crate::{catalog_sync, now_ms, OrchestratorError, Shared};

pub const INDEX_HEADER: &str = "x-pier-index";
const FORWARDED_HEADER: &str = "x-pier-forwarded";
/// How long an orchestrator watch holds without `wait` (agents always send one).
const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/services", get(list_services).post(deploy))
        .route(
            "/api/v1/services/{name}",
            get(inspect_service).delete(remove_service),
        )
        .route("/api/v1/services/{name}/tasks", get(service_tasks))
        .route(
            "/api/v1/services/{name}/revisions/{revision}",
            get(get_revision),
        )
        .route("/api/v1/services/{name}/scale", put(scale))
        .route("/api/v1/services/{name}/rollback", post(rollback))
        .route(
            "/api/v1/services/{name}/deployments",
            get(service_deployments),
        )
        .route(
            "/api/v1/services/{name}/logs",
            get(crate::logs::service_logs),
        )
        .route("/api/v1/deployments/{id}", get(get_deployment))
        .route("/api/v1/nodes", get(list_nodes))
        .route(
            "/api/v1/nodes/{name}",
            put(register_node).delete(remove_node),
        )
        .route("/api/v1/nodes/{name}/alive", put(heartbeat))
        .route("/api/v1/nodes/{name}/drain", put(drain))
        .route("/api/v1/nodes/{name}/tasks", get(node_tasks))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/status", put(report_status))
        .merge(crate::secrets::router())
        .merge(crate::volumes::router())
        .with_state(shared)
}

pub(crate) struct HttpError(pub(crate) StatusCode, pub(crate) ApiError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<OrchestratorError> for HttpError {
    fn from(e: OrchestratorError) -> Self {
        let code = match &e {
            OrchestratorError::InvalidInput(_) => ErrorCode::InvalidInput,
            OrchestratorError::NotFound(_) => ErrorCode::NotFound,
            OrchestratorError::Conflict(_) => ErrorCode::Conflict,
            OrchestratorError::Store(StoreError::NoLeader(_)) => ErrorCode::NoLeader,
            OrchestratorError::Store(StoreError::Timeout(_)) => ErrorCode::Timeout,
            OrchestratorError::Store(StoreError::InvalidInput(_)) => ErrorCode::InvalidInput,
            OrchestratorError::Unavailable(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        HttpError(status, ApiError::new(code, e.to_string()))
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        OrchestratorError::from(e).into()
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> HttpError {
    OrchestratorError::InvalidInput(msg.into()).into()
}

pub(crate) fn not_found(msg: impl Into<String>) -> HttpError {
    OrchestratorError::NotFound(msg.into()).into()
}

pub(crate) type ApiResult<T> = Result<T, HttpError>;

/// `?index=N&wait=30s` of the orchestrator's watches (agents' task lists, deployments): the
/// store's one blocking-query implementation, answering once the result's index differs
/// from N, or after the wait.
fn blocking_params(q: &HashMap<String, String>) -> ApiResult<QueryOptions> {
    let min_index = match q.get("index") {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| invalid(format!("`index` must be a non-negative integer, got {v:?}")))?,
        None => 0,
    };
    let wait = pier_catalog::duration::parse_wait(q.get("wait").map(String::as_str).unwrap_or(""))
        .map_err(invalid)?
        .unwrap_or(DEFAULT_WATCH_WAIT);
    Ok(QueryOptions {
        consistency: Consistency::Default,
        min_index,
        wait,
    }
    .with_jitter())
}

fn with_index<T: serde::Serialize>(index: u64, body: T) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(index));
    (headers, Json(body)).into_response()
}

// ------------------------------------------------------------------ services

/// `sha256:` and 64 lowercase hex digits: the only digest a revision pins.
fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Resolves `image` to the manifest digest it names now (`name:tag@sha256:…`) when it lives in
/// the pier registry, refusing images that do not exist there. An image already naming a
/// digest is kept as it is; anything else (another registry, the registry unreachable) stays
/// unpinned: agents then run `image` as written.
async fn resolve_image(shared: &Shared, image: &str) -> ApiResult<Option<String>> {
    if image.contains('@') {
        return Ok(Some(image.to_string()));
    }
    let Some(registry) = shared.config.registry_addr.as_deref() else {
        return Ok(None);
    };
    let names =
        std::iter::once(registry).chain(shared.config.registry_aliases.iter().map(String::as_str));
    let Some(rest) = names
        .filter_map(|name| image.strip_prefix(name)?.strip_prefix('/'))
        .next()
    else {
        return Ok(None);
    };
    let (repo, reference) = match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (rest.to_string(), "latest".to_string()),
    };
    // In a secure cluster the registry speaks TLS and lets this server in by its certificate.
    let (client, scheme) = match &shared.config.internal_http {
        Some(internal) => (internal.get(), internal.scheme()),
        None => (Arc::new(shared.http.clone()), "http"),
    };
    let url = format!("{scheme}://{registry}/v2/{repo}/manifests/{reference}");
    let resp = client
        .head(&url)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => {
            let digest = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .filter(|d| is_sha256_digest(d));
            match digest {
                Some(d) => Ok(Some(format!("{image}@{d}"))),
                None => {
                    tracing::warn!(%image, "the registry named no manifest digest; deploying the image unpinned");
                    Ok(None)
                }
            }
        }
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Err(invalid(format!(
            "image {image} does not exist in the pier registry at {registry}: push it first (docker push {image})"
        ))),
        Ok(r) => {
            tracing::warn!(%image, status = %r.status(), "registry answered unexpectedly while resolving the image; deploying it unpinned");
            Ok(None)
        }
        Err(err) => {
            tracing::warn!(%image, error = %err, "cannot reach the pier registry to resolve the image; deploying it unpinned");
            Ok(None)
        }
    }
}

async fn deploy(
    State(shared): State<Arc<Shared>>,
    visible: Option<axum::Extension<pier_api::service::SecretsVisible>>,
    keys: Option<axum::Extension<pier_api::service::KeysReadable>>,
    Json(req): Json<DeployRequest>,
) -> ApiResult<Json<DeployResponse>> {
    let spec = parse_service_file(
        &req.file,
        Limits {
            max_count: shared.config.max_count,
        },
    )
    .map_err(|e| invalid(format!("service file: {e}")))?;
    let mut spec = spec;
    pier_api::service::merge_env_file(&mut spec, req.env_file)
        .map_err(|e| invalid(format!("service file: {e}")))?;
    // Pinned first: the same file deployed after its tag moved is a new revision.
    spec.pinned_image = resolve_image(&shared, &spec.image).await?;
    // A service's containers read its secrets: only a caller who may see secret values may
    // give a service a secret it does not use yet.
    if visible.is_some_and(|axum::Extension(v)| !v.0) {
        crate::secrets::check_may_add(&shared, &spec).await?;
    }
    // A template shows the keys it reads to whoever reads the service's containers.
    if let Some(axum::Extension(readable)) = keys {
        let denied: Vec<String> = spec
            .template_keys()
            .into_iter()
            .filter(|k| !(readable.0)(k))
            .collect();
        if !denied.is_empty() {
            return Err(HttpError(
                axum::http::StatusCode::FORBIDDEN,
                pier_api::ApiError::new(
                    pier_api::ErrorCode::Forbidden,
                    format!(
                        "the [files] templates of {} read key(s) {} that this token may not read (a template shows them to whoever reads the containers)",
                        spec.name,
                        denied.join(", ")
                    ),
                ),
            ));
        }
    }
    // Every secret it names must exist; the revision records their versions.
    crate::secrets::pin_versions(&shared, &mut spec).await?;
    Ok(Json(deploy_spec(&shared, spec).await?))
}

/// Rolls out `spec` (validated, image pinned, secret versions recorded): nothing when it is
/// what runs, a scale when only the count differs, else a new revision and its deployment.
pub(crate) async fn deploy_spec(shared: &Shared, spec: ServiceSpec) -> ApiResult<DeployResponse> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let now = now_ms();
    let existing = world.services.get(&spec.name);
    if let Some(svc) = existing {
        let current = world.spec(&spec.name, svc.value.record.revision);
        if !svc.value.record.deleting && current == Some(&spec) {
            return Ok(DeployResponse {
                service: spec.name.clone(),
                revision: svc.value.record.revision,
                deployment: svc.value.record.deployment.clone(),
                outcome: "unchanged".into(),
            });
        }
        if !svc.value.record.deleting && current.is_some_and(|c| c.template() == spec.template()) {
            let deployment = scale_to(shared, &world, &spec.name, spec.count).await?;
            return Ok(DeployResponse {
                service: spec.name.clone(),
                revision: svc.value.record.revision,
                deployment,
                outcome: "scaled".into(),
            });
        }
    }
    // What can be known up front is refused before anything changes.
    crate::volumes::check_host_paths(&world, &spec).map_err(invalid)?;
    crate::place::can_ever_fit(&world, &spec).map_err(|reason| {
        invalid(format!(
            "no node can ever run a task of {} ({} millicpu, {} MiB): {reason}",
            spec.name, spec.cpu_millis, spec.memory_mb
        ))
    })?;
    // The route host belongs to the first service that claims it.
    crate::routes::claim(shared, &spec.name, &spec.route).await?;

    let (mut record, guard) = match existing {
        Some(svc) => (svc.value.record.clone(), svc.modify_index),
        None => (
            ServiceRecord {
                name: spec.name.clone(),
                count: spec.count,
                revision: 0,
                latest_revision: 0,
                stable_revision: None,
                deployment: None,
                placement_error: None,
                restart_status: None,
                deleting: false,
                created_at_ms: now,
                updated_at_ms: now,
            },
            0,
        ),
    };
    let revision = record.latest_revision + 1;
    let from_revision = (record.revision != 0 && !record.deleting).then_some(record.revision);
    let previous_stable = if record.deleting {
        None
    } else {
        record.stable_revision
    };
    let dep = new_deployment(
        &spec.name,
        revision,
        from_revision,
        &spec,
        spec.count,
        previous_stable,
        None,
        now,
    );
    let mut ops = Vec::new();
    // A deployment still in progress is superseded by this one.
    if let Some(old) = existing.and_then(|s| world.deployment_of(&s.value)) {
        if old.value.record.status == DeploymentStatus::InProgress {
            let mut doc = old.value.clone();
            doc.record.status = DeploymentStatus::Superseded;
            doc.record.reason = Some(format!("superseded by revision {revision}"));
            doc.record.updated_at_ms = now;
            ops.push(tables::deployments().put(doc.record.id.clone(), &doc)?);
        }
    }
    record.count = spec.count;
    record.revision = revision;
    record.latest_revision = revision;
    record.deployment = Some(dep.record.id.clone());
    record.deleting = false;
    record.placement_error = None;
    record.updated_at_ms = now;
    if previous_stable.is_none() {
        record.stable_revision = None;
    }
    let doc = ServiceDoc {
        record,
        restart: existing
            .map(|s| s.value.restart.clone())
            .unwrap_or_default(),
    };
    ops.push(tables::services().put_cas(spec.name.clone(), &doc, guard)?);
    ops.push(tables::revisions().put_cas(
        tables::revision_key(&spec.name, revision),
        &RevisionRecord {
            service: spec.name.clone(),
            revision,
            spec: spec.clone(),
            created_at_ms: now,
        },
        0,
    )?);
    ops.push(tables::deployments().put_cas(dep.record.id.clone(), &dep, 0)?);
    let result = shared.store.write(Txn { ops }).await?;
    if !result.applied {
        return Err(OrchestratorError::Conflict(format!(
            "service {} was changed by someone else meanwhile; deploy again",
            spec.name
        ))
        .into());
    }
    tracing::info!(service = %spec.name, revision, deployment = %dep.record.id, "deploying");
    Ok(DeployResponse {
        service: spec.name.clone(),
        revision,
        deployment: Some(dep.record.id.clone()),
        outcome: if existing.is_some() {
            "updated".into()
        } else {
            "created".into()
        },
    })
}

/// Sets the desired count (and that of a deployment in progress). Returns the deployment in
/// progress, if any.
async fn scale_to(
    shared: &Shared,
    world: &World,
    name: &str,
    count: u32,
) -> ApiResult<Option<String>> {
    let svc = world
        .services
        .get(name)
        .ok_or_else(|| not_found(format!("no service named {name:?}")))?;
    if svc.value.record.deleting {
        return Err(OrchestratorError::Conflict(format!("service {name} is being removed")).into());
    }
    if let Some(spec) = world.spec(name, svc.value.record.revision) {
        let mut one = spec.clone();
        one.count = count;
        crate::place::can_ever_fit(world, &one).map_err(invalid)?;
    }
    let mut doc = svc.value.clone();
    doc.record.count = count;
    doc.record.updated_at_ms = now_ms();
    let mut ops = vec![tables::services().put_cas(name.to_string(), &doc, svc.modify_index)?];
    let mut in_progress = None;
    if let Some(dep) = world.deployment_of(&svc.value) {
        if dep.value.record.status == DeploymentStatus::InProgress {
            let mut d = dep.value.clone();
            d.record.desired = count;
            ops.push(tables::deployments().put_cas(d.record.id.clone(), &d, dep.modify_index)?);
            in_progress = Some(d.record.id.clone());
        }
    }
    let result = shared.store.write(Txn { ops }).await?;
    if !result.applied {
        return Err(OrchestratorError::Conflict(format!(
            "service {name} changed meanwhile; try again"
        ))
        .into());
    }
    Ok(in_progress)
}

async fn scale(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> ApiResult<Json<DeployResponse>> {
    if req.count < 0 {
        return Err(invalid(format!("count {} must not be negative", req.count)));
    }
    if req.count > i64::from(shared.config.max_count) {
        return Err(invalid(format!(
            "count {} is above this cluster's maximum of {}",
            req.count, shared.config.max_count
        )));
    }
    let world = World::load(&shared.store, Consistency::Default).await?;
    let deployment = scale_to(&shared, &world, &name, req.count as u32).await?;
    let revision = world
        .services
        .get(&name)
        .map(|s| s.value.record.revision)
        .unwrap_or(0);
    Ok(Json(DeployResponse {
        service: name,
        revision,
        deployment,
        outcome: "scaled".into(),
    }))
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> ApiResult<Json<DeployResponse>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let svc = world
        .services
        .get(&name)
        .ok_or_else(|| not_found(format!("no service named {name:?}")))?;
    let current = svc.value.record.revision;
    let target = match body.and_then(|b| b.0.revision) {
        Some(r) => r,
        None => world
            .revisions
            .keys()
            .filter(|(s, r)| s == &name && *r < current)
            .map(|(_, r)| *r)
            .max()
            .ok_or_else(|| {
                invalid(format!(
                    "service {name} has no revision before {current} to roll back to"
                ))
            })?,
    };
    if target == current {
        return Err(invalid(format!(
            "revision {target} is already the current revision of {name}"
        )));
    }
    let spec = world
        .spec(&name, target)
        .ok_or_else(|| not_found(format!("service {name} has no revision {target}")))?
        .clone();
    let now = now_ms();
    let mut dep = new_deployment(
        &name,
        target,
        Some(current),
        &spec,
        svc.value.record.count,
        Some(target),
        Some(current),
        now,
    );
    dep.record.events.push(pier_api::service::DeploymentEvent {
        at_ms: now,
        message: "rollback requested".into(),
    });
    let mut ops = Vec::new();
    if let Some(old) = world.deployment_of(&svc.value) {
        if old.value.record.status == DeploymentStatus::InProgress {
            let mut d = old.value.clone();
            d.record.status = DeploymentStatus::Superseded;
            d.record.reason = Some(format!("superseded by a rollback to revision {target}"));
            ops.push(tables::deployments().put(d.record.id.clone(), &d)?);
        }
    }
    let mut doc = svc.value.clone();
    doc.record.revision = target;
    doc.record.deployment = Some(dep.record.id.clone());
    doc.record.updated_at_ms = now;
    ops.push(tables::services().put_cas(name.clone(), &doc, svc.modify_index)?);
    ops.push(tables::deployments().put_cas(dep.record.id.clone(), &dep, 0)?);
    if !shared.store.write(Txn { ops }).await?.applied {
        return Err(OrchestratorError::Conflict(format!(
            "service {name} changed meanwhile; try again"
        ))
        .into());
    }
    Ok(Json(DeployResponse {
        service: name,
        revision: target,
        deployment: Some(dep.record.id),
        outcome: "rolled_back".into(),
    }))
}

async fn remove_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeployResponse>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let svc = world
        .services
        .get(&name)
        .ok_or_else(|| not_found(format!("no service named {name:?}")))?;
    let mut doc = svc.value.clone();
    doc.record.deleting = true;
    doc.record.updated_at_ms = now_ms();
    let mut ops = vec![tables::services().put_cas(name.clone(), &doc, svc.modify_index)?];
    if let Some(old) = world.deployment_of(&svc.value) {
        if old.value.record.status == DeploymentStatus::InProgress {
            let mut d = old.value.clone();
            d.record.status = DeploymentStatus::Superseded;
            d.record.reason = Some("service removed".into());
            ops.push(tables::deployments().put(d.record.id.clone(), &d)?);
        }
    }
    if !shared.store.write(Txn { ops }).await?.applied {
        return Err(OrchestratorError::Conflict(format!(
            "service {name} changed meanwhile; try again"
        ))
        .into());
    }
    Ok(Json(DeployResponse {
        service: name,
        revision: doc.record.revision,
        deployment: None,
        outcome: "removing".into(),
    }))
}

fn restart_status(doc: &ServiceDoc) -> Option<String> {
    let restart: pier_core::deployment::RestartState = (&doc.restart).into();
    restart.status_line(now_ms())
}

async fn list_services(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let mut out = Vec::new();
    for (name, svc) in &world.services {
        let spec = world.spec(name, svc.value.record.revision);
        let (mut running, mut healthy) = (0, 0);
        for t in world.tasks_of(name) {
            let s = world.status_of(&t.value.id);
            // A lost task's last report is stale: it counts again once its node is heard.
            let reachable = !world.node_down(&t.value.node);
            if t.value.stop_phase == StopPhase::Active && s.state == TaskState::Running && reachable
            {
                running += 1;
                if s.health == TaskHealth::Healthy {
                    healthy += 1;
                }
            }
        }
        out.push(ServiceSummary {
            name: name.clone(),
            image: spec.map(|s| s.image.clone()).unwrap_or_default(),
            revision: svc.value.record.revision,
            desired: svc.value.record.count,
            running,
            healthy,
            deployment_status: world
                .deployment_of(&svc.value)
                .map(|d| d.value.record.status),
            route: spec.map(|s| s.route.clone()).unwrap_or_default(),
            pinned_image: spec.and_then(|s| s.pinned_image.clone()),
            placement_error: svc
                .value
                .record
                .placement_error
                .clone()
                .or_else(|| restart_status(&svc.value)),
        });
    }
    Ok(with_index(world.index, out))
}

async fn inspect_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    visible: Option<axum::Extension<pier_api::service::SecretsVisible>>,
) -> ApiResult<Json<ServiceDetail>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let svc = world
        .services
        .get(&name)
        .ok_or_else(|| not_found(format!("no service named {name:?}")))?;
    let mut spec = world
        .spec(&name, svc.value.record.revision)
        .cloned()
        .ok_or_else(|| not_found(format!("service {name} has no current revision")))?;
    // Env values may hold credentials: only callers the auth layer lets see secrets get them.
    if visible.is_some_and(|axum::Extension(v)| !v.0) {
        for value in spec.env.values_mut() {
            *value = "(redacted)".to_string();
        }
    }
    let mut service = svc.value.record.clone();
    service.restart_status = restart_status(&svc.value);
    Ok(Json(ServiceDetail {
        service,
        spec,
        deployment: world
            .deployment_of(&svc.value)
            .map(|d| d.value.record.clone()),
        revisions: world
            .revisions
            .keys()
            .filter(|(s, _)| s == &name)
            .map(|(_, r)| *r)
            .collect(),
    }))
}

/// `GET /api/v1/services/:name/revisions/:n`: the spec of one revision, env redacted as in
/// `inspect`, so two revisions can be compared.
async fn get_revision(
    State(shared): State<Arc<Shared>>,
    Path((name, revision)): Path<(String, String)>,
    visible: Option<axum::Extension<pier_api::service::SecretsVisible>>,
) -> ApiResult<Json<pier_api::service::ServiceSpec>> {
    let revision: u64 = revision
        .parse()
        .map_err(|_| invalid(format!("a revision is a number, not {revision:?}")))?;
    let world = World::load(&shared.store, Consistency::Default).await?;
    if !world.services.contains_key(&name) {
        return Err(not_found(format!("no service named {name:?}")));
    }
    let mut spec = world
        .spec(&name, revision)
        .cloned()
        .ok_or_else(|| not_found(format!("service {name} has no revision {revision}")))?;
    if visible.is_some_and(|axum::Extension(v)| !v.0) {
        for value in spec.env.values_mut() {
            *value = "(redacted)".to_string();
        }
    }
    Ok(Json(spec))
}

async fn service_tasks(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    if !world.services.contains_key(&name) {
        return Err(not_found(format!("no service named {name:?}")));
    }
    let mut out: Vec<TaskView> = world
        .tasks_of(&name)
        .map(|t| {
            TaskView::new(t.value.clone(), world.status_of(&t.value.id))
                .on_node(world.node_down(&t.value.node))
        })
        .collect();
    out.sort_by(|a, b| {
        b.task
            .created_at_ms
            .cmp(&a.task.created_at_ms)
            .then(a.task.id.cmp(&b.task.id))
    });
    Ok(with_index(world.index, out))
}

async fn get_deployment(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let opts = blocking_params(&q)?;
    let (index, dep) = blocking_query(&shared.store, &opts, |v| {
        let dep = tables::deployments().get(v, &id)?.map(|d| d.value.record);
        Ok::<_, StoreError>((dep, vec![WatchKey::key(tables::DEPLOYMENTS, id.clone())]))
    })
    .await?;
    match dep {
        Some(d) => Ok(with_index(index, d)),
        None => Err(not_found(format!("no deployment {id:?}"))),
    }
}

/// Deployments one page of `GET /api/v1/services/:name/deployments` lists by default, and at most.
const DEPLOYMENTS_DEFAULT: usize = 20;
const DEPLOYMENTS_MAX: usize = 100;

/// `GET /api/v1/services/:name/deployments?limit=N`: the service's deployments the store
/// still holds (retention keeps the newest few), newest first, at most `limit`.
async fn service_deployments(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let limit = match q.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=DEPLOYMENTS_MAX).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "`limit` must be a number from 1 to {DEPLOYMENTS_MAX}, got {v:?}"
                ))
            })?,
        None => DEPLOYMENTS_DEFAULT,
    };
    let world = World::load(&shared.store, Consistency::Default).await?;
    if !world.services.contains_key(&name) {
        return Err(not_found(format!("no service named {name:?}")));
    }
    let mut out: Vec<DeploymentRecord> = world
        .deployments
        .values()
        .filter(|d| d.value.record.service == name)
        .map(|d| d.value.record.clone())
        .collect();
    out.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
    out.truncate(limit);
    Ok(with_index(world.index, out))
}

// ------------------------------------------------------------------ nodes

async fn list_nodes(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let leader = shared.store.status().is_leader;
    let mut out = Vec::new();
    for n in world.nodes.values() {
        let (mut tasks, mut cpu, mut mem) = (0, 0, 0);
        for t in world
            .tasks
            .values()
            .filter(|t| t.value.node == n.value.name)
        {
            if holds_resources(&t.value, &world.status_of(&t.value.id)) {
                tasks += 1;
                if let Some(spec) = world.spec(&t.value.service, t.value.revision) {
                    cpu += spec.cpu_millis;
                    mem += spec.memory_mb;
                }
            }
        }
        out.push(NodeView {
            node: n.value.clone(),
            state: n.value.state(),
            tasks,
            allocated_cpu_millis: cpu,
            allocated_memory_mb: mem,
            last_heartbeat_age_ms: if leader {
                shared.catalog.heard_ms_ago(&n.value.name)
            } else {
                None
            },
        });
    }
    Ok(with_index(world.index, out))
}

fn valid_node_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "node name {name:?} must be 1-63 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

async fn register_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(req): Json<RegisterNode>,
) -> ApiResult<Json<NodeRecord>> {
    valid_node_name(&name)?;
    if req.zone.is_empty() {
        return Err(invalid("zone must not be empty"));
    }
    let now = now_ms();
    let existing = shared
        .store
        .read(Consistency::Default, |v| tables::nodes().get(v, &name))
        .await??;
    let record = NodeRecord {
        name: name.clone(),
        zone: req.zone,
        agent_addr: req.agent_addr,
        host_ip: req.host_ip,
        attributes: req.attributes,
        cpu_millis: req.cpu_millis,
        memory_mb: req.memory_mb,
        draining: existing.as_ref().is_some_and(|e| e.value.draining),
        down: existing.as_ref().is_some_and(|e| e.value.down),
        registered_at_ms: existing
            .as_ref()
            .map(|e| e.value.registered_at_ms)
            .unwrap_or(now),
        volumes: req.volumes,
        volume_roots: req.volume_roots,
    };
    if existing.as_ref().map(|e| &e.value) != Some(&record) {
        shared
            .store
            .write(Txn::single(tables::nodes().put(name.clone(), &record)?))
            .await?;
    }
    catalog_sync::register_node(&shared.catalog, &record).await;
    if shared.store.status().is_leader {
        shared.catalog.record_heartbeat(&name);
    }
    tracing::info!(node = %name, zone = %record.zone, "node registered");
    Ok(Json(record))
}

/// `PUT /api/v1/nodes/{name}/alive`. Acknowledged only on behalf of a leader that a quorum
/// follows: a leader cut off from its quorum for an election timeout (openraft never makes it
/// step down by itself) refuses, and so does a follower that has lost its leader, so an agent
/// attached to the minority side of a partition learns that the cluster may have marked its
/// node down instead of being told all is well.
async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let contact = shared.store.leader_contact();
    let silent_ms = contact
        .last_contact_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "ever".into());
    if contact.is_leader {
        if !contact.known_leader {
            return Err(OrchestratorError::Unavailable(format!(
                "this server leads but no quorum has acknowledged it for {silent_ms}: the heartbeat cannot be vouched for by the cluster"
            ))
            .into());
        }
        let known = shared
            .store
            .read(Consistency::Stale, |v| {
                v.get(&tables::NODES, &name).is_some()
            })
            .await?;
        if !known {
            return Err(not_found(format!(
                "unknown node {name:?}: register it first"
            )));
        }
        shared.catalog.record_heartbeat(&name);
    } else {
        if headers.contains_key(FORWARDED_HEADER) {
            return Err(OrchestratorError::Unavailable(
                "not the leader (forwarded heartbeat)".into(),
            )
            .into());
        }
        if !contact.known_leader {
            return Err(OrchestratorError::Unavailable(format!(
                "this server has not heard from a leader for {silent_ms}: it may be cut off from the cluster's quorum"
            ))
            .into());
        }
        forward_heartbeat(&shared, &name).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Hands a heartbeat to the leader; anything but its acknowledgement is a refusal.
async fn forward_heartbeat(shared: &Shared, name: &str) -> ApiResult<()> {
    let leader = shared
        .store
        .status()
        .leader
        .filter(|l| !l.http_addr.is_empty())
        .ok_or_else(|| {
            OrchestratorError::Unavailable("no raft leader known; retry shortly".into())
        })?;
    let url = format!(
        "{}://{}/api/v1/nodes/{name}/alive",
        shared.internal.scheme(),
        leader.http_addr
    );
    let resp = shared
        .internal
        .get()
        .put(url)
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| {
            OrchestratorError::Unavailable(format!(
                "cannot forward the heartbeat to the leader: {e}"
            ))
        })?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        reqwest::StatusCode::NOT_FOUND => Err(not_found(format!(
            "unknown node {name:?}: register it first"
        ))),
        s => {
            let body = resp.text().await.unwrap_or_default();
            Err(OrchestratorError::Unavailable(format!(
                "the leader {} did not acknowledge the heartbeat ({s}): {body}",
                leader.name
            ))
            .into())
        }
    }
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(req): Json<DrainRequest>,
) -> ApiResult<Json<NodeRecord>> {
    for _ in 0..5 {
        let node = shared
            .store
            .read(Consistency::Default, |v| tables::nodes().get(v, &name))
            .await??
            .ok_or_else(|| not_found(format!("no node named {name:?}")))?;
        let mut record = node.value.clone();
        record.draining = req.draining;
        if shared
            .store
            .write(Txn::single(tables::nodes().put_cas(
                name.clone(),
                &record,
                node.modify_index,
            )?))
            .await?
            .applied
        {
            return Ok(Json(record));
        }
    }
    Err(OrchestratorError::Conflict(format!("node {name} kept changing; try again")).into())
}

/// `DELETE /api/v1/nodes/:name[?force=true]` (`pier node rm`): forgets a node for good. Its
/// tasks are given up and replaced elsewhere by the next controller pass (the controller
/// treats tasks on an unregistered node as removed). A node whose agent still heartbeats is
/// refused without `force`: it would register itself again at once.
async fn remove_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<NodeRecord>> {
    valid_node_name(&name)?;
    let force = q
        .get("force")
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1");
    for _ in 0..5 {
        let node = shared
            .store
            .read(Consistency::Default, |v| tables::nodes().get(v, &name))
            .await??
            .ok_or_else(|| not_found(format!("no node named {name:?}")))?;
        if !node.value.down && !force {
            return Err(OrchestratorError::Conflict(format!(
                "node {name} is up (its agent heartbeats): stop its agent first and wait until the node is down, or drain it (pier node drain {name}) and remove it with --force"
            ))
            .into());
        }
        let txn = Txn {
            ops: vec![
                Op::check(tables::NODES, name.clone(), node.modify_index),
                tables::nodes().delete(name.clone()),
            ],
        };
        if shared.store.write(txn).await?.applied {
            tracing::info!(node = %name, force, "node removed; its tasks are replaced elsewhere");
            return Ok(Json(node.value));
        }
    }
    Err(OrchestratorError::Conflict(format!("node {name} kept changing; try again")).into())
}

async fn node_tasks(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    valid_node_name(&name)?;
    let opts = blocking_params(&q)?;
    let prefix = format!("{name}/");
    let (index, tasks) = blocking_query(&shared.store, &opts, |v| {
        let mut out = Vec::new();
        for (_, t) in tables::tasks().list(v, &prefix)? {
            if t.value.stop_phase == StopPhase::Stopped {
                continue;
            }
            let key = tables::revision_key(&t.value.service, t.value.revision);
            if let Some(rev) = tables::revisions().get(v, &key)? {
                out.push(AgentTask {
                    task: t.value,
                    spec: rev.value.spec,
                });
            }
        }
        // The list depends on the node's tasks; their revisions never change once written.
        Ok::<_, StoreError>((out, vec![WatchKey::prefix(tables::TASKS, prefix.clone())]))
    })
    .await?;
    Ok(with_index(index, AgentTasks { index, tasks }))
}

// ------------------------------------------------------------------ tasks

/// The task and its status. Tasks are keyed by node: with the node (what agents send) this
/// is one lookup; without it (a user's `GET /api/v1/tasks/ID`) every task is looked at.
async fn find_task(
    shared: &Shared,
    id: &str,
    node: Option<&str>,
) -> ApiResult<
    Option<(
        pier_api::service::TaskRecord,
        Option<pier_store::Versioned<TaskStatus>>,
    )>,
> {
    Ok(shared
        .store
        .read(Consistency::Default, |v| -> Result<_, StoreError> {
            let task = match node {
                Some(node) => tables::tasks()
                    .get(v, &tables::task_key(node, id))?
                    .map(|t| t.value),
                None => tables::tasks()
                    .list(v, "")?
                    .into_iter()
                    .map(|(_, t)| t.value)
                    .find(|t| t.id == id),
            };
            match task {
                Some(t) => Ok(Some((t, tables::task_status().get(v, id)?))),
                None => Ok(None),
            }
        })
        .await??)
}

async fn get_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskView>> {
    let (task, status) = find_task(&shared, &id, None)
        .await?
        .ok_or_else(|| not_found(format!("no task {id:?}")))?;
    Ok(Json(TaskView::new(
        task,
        status.map(|s| s.value).unwrap_or_default(),
    )))
}

async fn report_status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Json(mut status): Json<TaskStatus>,
) -> ApiResult<StatusCode> {
    if let Some(node) = q.get("node") {
        valid_node_name(node)?;
    }
    let (task, previous) = find_task(&shared, &id, q.get("node").map(String::as_str))
        .await?
        .ok_or_else(|| not_found(format!("no task {id:?}")))?;
    status.updated_at_ms = now_ms();
    let prev = previous
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default();
    // Facts the agent may not repeat in every report are kept.
    if status.started_at_ms.is_none() {
        status.started_at_ms = prev.started_at_ms;
    }
    if status.first_passed_at_ms.is_none() {
        status.first_passed_at_ms = prev.first_passed_at_ms.or_else(|| {
            (status.health == TaskHealth::Healthy)
                .then(|| status.healthy_since_ms.unwrap_or(status.updated_at_ms))
        });
    }
    let op = match &previous {
        Some(p) => tables::task_status().put_cas(id.clone(), &status, p.modify_index)?,
        None => tables::task_status().put_cas(id.clone(), &status, 0)?,
    };
    let mut result = shared.store.write(Txn::single(op)).await?;
    if !result.applied {
        // Reports of one task come from one agent in order; a lost race means a retry.
        result = shared
            .store
            .write(Txn::single(tables::task_status().put(id.clone(), &status)?))
            .await?;
    }
    let _ = result;
    let changed = prev.state != status.state
        || prev.health != status.health
        || prev.host_ports != status.host_ports
        || prev.network_ip != status.network_ip;
    if changed {
        let serving = task.stop_phase == StopPhase::Active && status.state == TaskState::Running;
        if serving {
            let spec = shared
                .store
                .read(Consistency::Default, |v| {
                    tables::revisions().get(v, &tables::revision_key(&task.service, task.revision))
                })
                .await??;
            if let Some(rev) = spec {
                catalog_sync::register_task(&shared.catalog, &task, &status, &rev.value.spec).await;
            }
        } else if status.state.is_terminal() || prev.state == TaskState::Running {
            catalog_sync::deregister_task(&shared.catalog, &task.node, &task.id).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
