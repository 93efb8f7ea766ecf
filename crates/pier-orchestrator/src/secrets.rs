//! Secrets: `/api/v1/secrets` (set, list, remove) and the agents' read of the values their
//! own tasks use (`/api/v1/nodes/:node/tasks/:id/secrets`).
//!
//! A value is kept in table `orch.secrets`, sealed (AES-256-GCM, `pier_security::seal`) with
//! the key the server derives from its join secret, bound to the secret's name — the same
//! mechanism as the gateways' certificate keys. A cluster without a server secret (`pier dev`,
//! `--insecure`) stores it unsealed (base64) and says so (`sealed: false`). No answer but the
//! agents' carries a value, and nothing logs one.
//!
//! Every revision records the version of each secret it uses (`secret_versions`): setting a
//! new value rolls out a new revision of every service using the secret, so its tasks are
//! replaced and see the new value.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use pier_api::secret::{
    check_secret, is_valid_secret_name, SecretInfo, SetSecretRequest, SetSecretResponse,
    TaskSecrets,
};
use pier_api::service::{DeployResponse, ServiceSpec};
use pier_security::seal::SealKey;
use pier_store::{Consistency, Op, StoreError, Table, Txn, TypedTable};
use serde::{Deserialize, Serialize};

use crate::api::{invalid, not_found, ApiResult, HttpError};
use crate::world::World;
use crate::{now_ms, tables, OrchestratorError, Shared};

pub const SECRETS: Table = Table::from_static("orch.secrets");

pub fn secrets() -> TypedTable<SecretDoc> {
    TypedTable::new(SECRETS)
}

/// A stored secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDoc {
    pub name: String,
    pub version: u64,
    pub value: StoredValue,
    pub size_bytes: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl std::fmt::Debug for SecretDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDoc")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredValue {
    /// `pier_security::seal` text bound to `secret/<name>`.
    Sealed(String),
    /// Base64 of the value: only where the cluster has no server secret.
    Plain(String),
}

fn seal_context(name: &str) -> String {
    format!("secret/{name}")
}

fn store_value(seal: Option<&SealKey>, name: &str, value: &[u8]) -> StoredValue {
    match seal {
        Some(seal) => StoredValue::Sealed(seal.seal(value, &seal_context(name))),
        None => StoredValue::Plain(base64::engine::general_purpose::STANDARD.encode(value)),
    }
}

/// The value of a stored secret; an error in words (never containing the value) if it cannot
/// be opened.
fn open_value(seal: Option<&SealKey>, doc: &SecretDoc) -> Result<Vec<u8>, OrchestratorError> {
    let internal = |why: String| OrchestratorError::Unavailable(why);
    match (&doc.value, seal) {
        (StoredValue::Plain(b64), _) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| internal(format!("secret {} is stored damaged", doc.name))),
        (StoredValue::Sealed(sealed), Some(seal)) => seal
            .open(sealed, &seal_context(&doc.name))
            .map_err(|e| internal(format!("cannot open secret {}: {e}", doc.name))),
        (StoredValue::Sealed(_), None) => Err(internal(format!(
            "secret {} is sealed, but this server holds no server secret to open it",
            doc.name
        ))),
    }
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/secrets", get(list))
        .route(
            "/api/v1/secrets/{name}",
            axum::routing::put(set).delete(remove),
        )
        .route("/api/v1/nodes/{node}/tasks/{id}/secrets", get(task_secrets))
}

fn info(doc: &SecretDoc, used_by: Vec<String>) -> SecretInfo {
    SecretInfo {
        name: doc.name.clone(),
        version: doc.version,
        size_bytes: doc.size_bytes,
        sealed: matches!(doc.value, StoredValue::Sealed(_)),
        created_at_ms: doc.created_at_ms,
        updated_at_ms: doc.updated_at_ms,
        used_by,
    }
}

/// Services (not being removed) whose current revision uses `secret`, with that spec.
fn users<'a>(world: &'a World, secret: &str) -> Vec<(&'a str, &'a ServiceSpec)> {
    world
        .services
        .iter()
        .filter(|(_, s)| !s.value.record.deleting)
        .filter_map(|(name, s)| {
            let spec = world.spec(name, s.value.record.revision)?;
            spec.secret_names()
                .contains(secret)
                .then_some((name.as_str(), spec))
        })
        .collect()
}

async fn list(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Vec<SecretInfo>>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let docs = shared
        .store
        .read(Consistency::Default, |v| secrets().list(v, ""))
        .await??;
    Ok(Json(
        docs.into_iter()
            .map(|(name, d)| {
                let used_by = users(&world, &name)
                    .into_iter()
                    .map(|(s, _)| s.to_string())
                    .collect();
                info(&d.value, used_by)
            })
            .collect(),
    ))
}

async fn set(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(req): Json<SetSecretRequest>,
) -> ApiResult<Json<SetSecretResponse>> {
    if !is_valid_secret_name(&name) {
        return Err(invalid(
            pier_api::secret::SecretInputError::Name(name).to_string(),
        ));
    }
    let value = base64::engine::general_purpose::STANDARD
        .decode(req.value_base64.trim())
        .map_err(|_| invalid("`value_base64` is not standard base64"))?;
    check_secret(&name, &value).map_err(|e| invalid(e.to_string()))?;
    let seal = shared.config.secret_seal.as_ref();
    let existing = shared
        .store
        .read(Consistency::Default, |v| secrets().get(v, &name))
        .await??;
    let now = now_ms();
    let (doc, outcome) = match &existing {
        Some(e) if open_value(seal, &e.value).is_ok_and(|old| old == value) => {
            (e.value.clone(), "unchanged")
        }
        _ => {
            let doc = SecretDoc {
                name: name.clone(),
                version: existing.as_ref().map_or(1, |e| e.value.version + 1),
                value: store_value(seal, &name, &value),
                size_bytes: value.len() as u64,
                created_at_ms: existing.as_ref().map_or(now, |e| e.value.created_at_ms),
                updated_at_ms: now,
            };
            let guard = existing.as_ref().map_or(0, |e| e.modify_index);
            let op = secrets().put_cas(name.clone(), &doc, guard)?;
            if !shared.store.write(Txn::single(op)).await?.applied {
                return Err(OrchestratorError::Conflict(format!(
                    "secret {name} was changed by someone else meanwhile; set it again"
                ))
                .into());
            }
            let outcome = if existing.is_some() {
                "updated"
            } else {
                "created"
            };
            tracing::info!(secret = %name, version = doc.version, outcome, "secret set");
            (doc, outcome)
        }
    };
    let rolled = roll_users(&shared, &name, doc.version).await?;
    let world = World::load(&shared.store, Consistency::Default).await?;
    let used_by = users(&world, &name)
        .into_iter()
        .map(|(s, _)| s.to_string())
        .collect();
    Ok(Json(SetSecretResponse {
        secret: info(&doc, used_by),
        outcome: outcome.to_string(),
        rolled,
    }))
}

/// A new revision of every service whose current revision uses an older version of
/// `secret`: its tasks are replaced by a rollout (with the deployment's usual safety).
async fn roll_users(
    shared: &Shared,
    secret: &str,
    version: u64,
) -> Result<Vec<DeployResponse>, HttpError> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let mut out = Vec::new();
    for (service, spec) in users(&world, secret) {
        if spec.secret_versions.get(secret) == Some(&version) {
            continue;
        }
        let mut next = spec.clone();
        next.secret_versions.insert(secret.to_string(), version);
        if let Some(svc) = world.services.get(service) {
            next.count = svc.value.record.count;
        }
        let resp = crate::api::deploy_spec(shared, next).await.map_err(|e| {
            let HttpError(status, mut body) = e;
            body.error.message = format!(
                "secret {secret} is stored (version {version}), but service {service} was not rolled to it: {}; deploy it again",
                body.error.message
            );
            HttpError(status, body)
        })?;
        tracing::info!(secret, %service, revision = resp.revision, "rolling a service to a new secret version");
        out.push(resp);
    }
    Ok(out)
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<SecretInfo>> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    let existing = shared
        .store
        .read(Consistency::Default, |v| secrets().get(v, &name))
        .await??
        .ok_or_else(|| not_found(format!("no secret named {name:?}")))?;
    let used_by: Vec<String> = users(&world, &name)
        .into_iter()
        .map(|(s, _)| s.to_string())
        .collect();
    if !used_by.is_empty() {
        return Err(OrchestratorError::Conflict(format!(
            "secret {name} is used by {}: deploy them without it (or remove them) first",
            used_by.join(", ")
        ))
        .into());
    }
    let txn = Txn {
        ops: vec![
            Op::check(SECRETS, name.clone(), existing.modify_index),
            secrets().delete(name.clone()),
        ],
    };
    if !shared.store.write(txn).await?.applied {
        return Err(OrchestratorError::Conflict(format!(
            "secret {name} changed meanwhile; try again"
        ))
        .into());
    }
    tracing::info!(secret = %name, "secret removed");
    Ok(Json(info(&existing.value, Vec::new())))
}

/// Refuses (403) a spec that uses a secret its service's current revision does not: for a
/// caller who may not see secret values (a deploy-scoped token), which could otherwise read
/// any secret through a container it controls. Keeping the secrets it has is allowed.
pub(crate) async fn check_may_add(shared: &Shared, spec: &ServiceSpec) -> ApiResult<()> {
    let wanted = spec.secret_names();
    if wanted.is_empty() {
        return Ok(());
    }
    let world = World::load(&shared.store, Consistency::Default).await?;
    let current = world
        .services
        .get(&spec.name)
        .filter(|s| !s.value.record.deleting)
        .and_then(|s| world.spec(&spec.name, s.value.record.revision))
        .map(ServiceSpec::secret_names)
        .unwrap_or_default();
    let added: Vec<&str> = wanted
        .iter()
        .filter(|n| !current.contains(*n))
        .map(String::as_str)
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    Err(HttpError(
        axum::http::StatusCode::FORBIDDEN,
        pier_api::ApiError::new(
            pier_api::ErrorCode::Forbidden,
            format!(
                "service {} would get secret(s) {} it does not use yet: that takes a management token (a service's containers read its secrets)",
                spec.name,
                added.join(", ")
            ),
        ),
    ))
}

/// Refuses a spec naming a secret that does not exist; records the version of each one it
/// uses.
pub(crate) async fn pin_versions(shared: &Shared, spec: &mut ServiceSpec) -> ApiResult<()> {
    let names = spec.secret_names();
    if names.is_empty() {
        return Ok(());
    }
    let docs = shared
        .store
        .read(Consistency::Default, |v| -> Result<_, StoreError> {
            let mut out = BTreeMap::new();
            for name in &names {
                out.insert(
                    name.clone(),
                    secrets().get(v, name)?.map(|d| d.value.version),
                );
            }
            Ok(out)
        })
        .await??;
    let missing: Vec<&str> = docs
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "service {} uses secret(s) that do not exist: {}; create them first (pier secret set NAME)",
            spec.name,
            missing.join(", ")
        )));
    }
    spec.secret_versions = docs
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
        .collect();
    Ok(())
}

/// `GET /api/v1/nodes/:node/tasks/:id/secrets`: the values of the secrets the task's revision
/// uses, for the agent about to start it. Only that node's agent passes the auth layer.
async fn task_secrets(
    State(shared): State<Arc<Shared>>,
    Path((node, id)): Path<(String, String)>,
) -> ApiResult<Json<TaskSecrets>> {
    let (task, docs) = shared
        .store
        .read(Consistency::Default, |v| -> Result<_, StoreError> {
            let Some(task) = tables::tasks().get(v, &tables::task_key(&node, &id))? else {
                return Ok(None);
            };
            let key = tables::revision_key(&task.value.service, task.value.revision);
            let Some(rev) = tables::revisions().get(v, &key)? else {
                return Ok(None);
            };
            let mut docs = BTreeMap::new();
            for name in rev.value.spec.secret_names() {
                docs.insert(name.clone(), secrets().get(v, &name)?.map(|d| d.value));
            }
            Ok(Some((task.value, docs)))
        })
        .await??
        .ok_or_else(|| not_found(format!("no task {id:?} on node {node:?}")))?;
    let seal = shared.config.secret_seal.as_ref();
    let mut values_base64 = BTreeMap::new();
    for (name, doc) in docs {
        let doc = doc.ok_or_else(|| {
            not_found(format!(
                "secret {name} used by service {} no longer exists; set it again (pier secret set {name})",
                task.service
            ))
        })?;
        let value = open_value(seal, &doc)?;
        values_base64.insert(
            name,
            base64::engine::general_purpose::STANDARD.encode(value),
        );
    }
    Ok(Json(TaskSecrets { values_base64 }))
}
