//! The security endpoints: API tokens (`/api/v1/acl/...`), join tokens
//! (`/api/v1/join-tokens/...`) and the audit log (`/api/v1/audit`). Who may call them is
//! decided by the auth layer like everything else (`routes.rs`: management only, except the
//! one-time bootstrap, which proves itself with the server join token).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use pier_api::security::{
    AuditEntry, CaRotated, CaStatus, CreateJoinToken, CreateToken, CreatedJoinToken, CreatedToken,
    JoinTokenInfo, RotateCa, TokenInfo,
};
use pier_api::ErrorCode;
use pier_security::acl::{Policy, TokenRecord};
use pier_security::token::{constant_time_eq, hash_secret, JoinToken};
use pier_store::{Consistency, Op, Store, Txn, WatchKey};
use serde::Deserialize;

use super::audit::{self, AUDIT};
use super::authz::{ACL_ACCESSORS, ACL_TOKENS};
use super::join::{JoinService, JoinTokenRecord, JOIN_TOKENS};
use super::registry_auth::{PublicPrefix, REGISTRY_PUBLIC};
use crate::api::HttpError;

#[derive(Clone)]
pub struct SecurityApi {
    pub store: Store,
    /// None in `pier dev` / `--insecure`: token endpoints then answer 400.
    pub join: Option<Arc<JoinService>>,
    /// How this server calls the others (to see a revocation applied everywhere).
    pub internal_http: pier_net::HttpClient,
}

/// How long a revocation waits for every server to have applied it.
const REVOKE_SPREAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Returns once every member answers with an applied index of at least `index` (or after
/// [`REVOKE_SPREAD_TIMEOUT`]): servers check tokens against their own applied state, so a
/// revocation is in force everywhere when its request returns. A server that does not answer
/// (cut off, down) is named in the log; it cannot serve writes meanwhile anyway.
async fn wait_applied_everywhere(state: &SecurityApi, index: u64) {
    let deadline = tokio::time::Instant::now() + REVOKE_SPREAD_TIMEOUT;
    let members = state.store.status().members;
    let http = state.internal_http.get();
    let scheme = state.internal_http.scheme();
    for m in members {
        let url = format!("{scheme}://{}/api/v1/status", m.http_addr);
        loop {
            let applied = async {
                let r = http
                    .get(&url)
                    .timeout(std::time::Duration::from_millis(500))
                    .send()
                    .await
                    .ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                v["last_applied_index"].as_u64()
            }
            .await;
            if applied.is_some_and(|a| a >= index) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(server = %m.name, index, "a revocation is not yet applied on this server");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

pub fn router(state: SecurityApi) -> Router {
    Router::new()
        .route("/api/v1/acl/bootstrap", post(bootstrap))
        .route("/api/v1/acl/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/acl/tokens/{accessor}", delete(revoke_token))
        .route(
            "/api/v1/join-tokens",
            get(list_join_tokens).post(create_join_token),
        )
        .route("/api/v1/join-tokens/{id}", delete(revoke_join_token))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/registry/public", get(list_public))
        .route(
            "/api/v1/registry/public/{*pattern}",
            axum::routing::put(add_public).delete(remove_public),
        )
        .route("/api/v1/ca", get(ca_status))
        .route("/api/v1/ca/rotate", post(ca_rotate))
        .with_state(state)
}

fn info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        accessor: t.accessor.clone(),
        description: t.description.clone(),
        policies: t.policies.iter().map(|p| p.to_string()).collect(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
    }
}

fn parse_ttl(ttl: Option<&str>) -> Result<Option<u64>, HttpError> {
    match ttl {
        None | Some("") => Ok(None),
        Some(t) => humantime::parse_duration(t)
            .map(|d| Some(d.as_millis() as u64))
            .map_err(|e| HttpError::invalid(format!("ttl {t:?}: {e} (e.g. 1h, 30m)"))),
    }
}

fn secure_only(state: &SecurityApi) -> Result<&Arc<JoinService>, HttpError> {
    state.join.as_ref().ok_or_else(|| {
        HttpError::invalid(
            "this server runs without security (pier dev or --insecure): there are no tokens",
        )
    })
}

async fn write_token(store: &Store, record: &TokenRecord) -> Result<(), HttpError> {
    let bytes = serde_json::to_vec(record).map_err(|e| HttpError::invalid(e.to_string()))?;
    store
        .write(Txn {
            ops: vec![
                Op::put(ACL_TOKENS, record.secret_hash.clone(), bytes),
                Op::put(
                    ACL_ACCESSORS,
                    record.accessor.clone(),
                    record.secret_hash.clone().into_bytes(),
                ),
            ],
        })
        .await?;
    Ok(())
}

#[derive(Deserialize)]
struct BootstrapRequest {
    /// The server join token (proves the caller administers the servers).
    server_token: String,
}

/// Makes a management token once per cluster, for a caller holding the server join token.
/// A cluster made by `pier server` already has one (written at first start), so this is for
/// clusters restored from a snapshot without ACL data, or turned secure later.
async fn bootstrap(
    State(state): State<SecurityApi>,
    Json(req): Json<BootstrapRequest>,
) -> Result<Json<CreatedToken>, HttpError> {
    let join = secure_only(&state)?;
    let token =
        JoinToken::parse(&req.server_token).map_err(|e| HttpError::invalid(e.to_string()))?;
    if !constant_time_eq(&token.secret, &join.server_secret) {
        return Err(HttpError::new(
            ErrorCode::Forbidden,
            "that is not this cluster's server join token",
        ));
    }
    let (secret, record) = TokenRecord::create(
        "management token (acl bootstrap)",
        vec![Policy::Management],
        None,
        pier_api::time::now_ms(),
    );
    let bytes = serde_json::to_vec(&record).map_err(|e| HttpError::invalid(e.to_string()))?;
    let done = state
        .store
        .write(Txn {
            ops: vec![
                Op::put_cas(
                    super::server::SECURITY,
                    "acl/bootstrapped",
                    record.accessor.clone().into_bytes(),
                    0,
                ),
                Op::put(ACL_TOKENS, record.secret_hash.clone(), bytes),
                Op::put(
                    ACL_ACCESSORS,
                    record.accessor.clone(),
                    record.secret_hash.clone().into_bytes(),
                ),
            ],
        })
        .await?;
    if !done.applied {
        return Err(HttpError::new(
            ErrorCode::Conflict,
            "ACLs were bootstrapped already; use the management token made then (DATA_DIR/tls/management.token on the first server)",
        ));
    }
    Ok(Json(CreatedToken {
        secret,
        info: info(&record),
    }))
}

async fn create_token(
    State(state): State<SecurityApi>,
    Json(req): Json<CreateToken>,
) -> Result<Json<CreatedToken>, HttpError> {
    secure_only(&state)?;
    if req.policies.is_empty() {
        return Err(HttpError::invalid("a token needs at least one --policy"));
    }
    let policies = req
        .policies
        .iter()
        .map(|p| Policy::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::invalid(e.to_string()))?;
    let ttl = parse_ttl(req.ttl.as_deref())?;
    let (secret, record) =
        TokenRecord::create(req.description, policies, ttl, pier_api::time::now_ms());
    write_token(&state.store, &record).await?;
    Ok(Json(CreatedToken {
        secret,
        info: info(&record),
    }))
}

async fn list_tokens(State(state): State<SecurityApi>) -> Result<Json<Vec<TokenInfo>>, HttpError> {
    let tokens = state
        .store
        .read(Consistency::Default, |v| {
            v.range_prefix(&ACL_TOKENS, "")
                .filter_map(|(_, e)| serde_json::from_slice::<TokenRecord>(&e.value).ok())
                .map(|t| info(&t))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(tokens))
}

async fn revoke_token(
    State(state): State<SecurityApi>,
    Path(accessor): Path<String>,
) -> Result<StatusCode, HttpError> {
    let hash = state
        .store
        .read(Consistency::Default, |v| {
            v.get(&ACL_ACCESSORS, &accessor)
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        })
        .await?
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::NotFound,
                format!("no token with accessor {accessor}"),
            )
        })?;
    let result = state
        .store
        .write(Txn {
            ops: vec![
                Op::delete(ACL_TOKENS, hash),
                Op::delete(ACL_ACCESSORS, accessor),
            ],
        })
        .await?;
    wait_applied_everywhere(&state, result.index).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_join_token(
    State(state): State<SecurityApi>,
    Json(req): Json<CreateJoinToken>,
) -> Result<Json<CreatedJoinToken>, HttpError> {
    let join = secure_only(&state)?;
    if !matches!(req.role.as_str(), "agent" | "server" | "gateway") {
        return Err(HttpError::invalid("role must be agent, server or gateway"));
    }
    let now = pier_api::time::now_ms();
    let ttl = parse_ttl(req.ttl.as_deref())?;
    let secret = pier_security::token::generate_secret();
    let record = JoinTokenRecord {
        id: uuid::Uuid::new_v4().to_string(),
        role: req.role.clone(),
        description: req.description.clone(),
        created_at_ms: now,
        expires_at_ms: ttl.map(|t| now + t),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| HttpError::invalid(e.to_string()))?;
    state
        .store
        .write(Txn::single(Op::put(
            JOIN_TOKENS,
            hash_secret(&secret),
            bytes,
        )))
        .await?;
    let fp = pier_security::ca::fingerprint_pem(&join.bundle.load())
        .map_err(|e| HttpError::invalid(e.to_string()))?;
    Ok(Json(CreatedJoinToken {
        token: JoinToken::new(Some(fp), secret).to_string(),
        info: join_info(&record),
    }))
}

fn join_info(r: &JoinTokenRecord) -> JoinTokenInfo {
    JoinTokenInfo {
        id: r.id.clone(),
        role: r.role.clone(),
        description: r.description.clone(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
    }
}

async fn list_join_tokens(
    State(state): State<SecurityApi>,
) -> Result<Json<Vec<JoinTokenInfo>>, HttpError> {
    let list = state
        .store
        .read(Consistency::Default, |v| {
            v.range_prefix(&JOIN_TOKENS, "")
                .filter_map(|(_, e)| serde_json::from_slice::<JoinTokenRecord>(&e.value).ok())
                .map(|r| join_info(&r))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(list))
}

async fn revoke_join_token(
    State(state): State<SecurityApi>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let key = state
        .store
        .read(Consistency::Default, |v| {
            v.range_prefix(&JOIN_TOKENS, "")
                .find(|(_, e)| {
                    serde_json::from_slice::<JoinTokenRecord>(&e.value).is_ok_and(|r| r.id == id)
                })
                .map(|(k, _)| k.to_string())
        })
        .await?
        .ok_or_else(|| HttpError::new(ErrorCode::NotFound, format!("no join token {id}")))?;
    state
        .store
        .write(Txn::single(Op::delete(JOIN_TOKENS, key)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
    /// Blocking: answer once the log's index passes this (`pier audit -f`).
    index: Option<u64>,
    wait: Option<String>,
}

async fn audit_log(
    State(state): State<SecurityApi>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, HttpError> {
    let since = q.since_ms.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).min(10_000);
    if let Some(min_index) = q.index {
        let wait = q
            .wait
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| HttpError::invalid(format!("wait: {e}")))?
            .unwrap_or(Duration::from_secs(30))
            .min(Duration::from_secs(300));
        let mut watch = state.store.watch(&[WatchKey::prefix(AUDIT, "")]);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (index, _) = audit::list(&state.store, since, 0).await?;
            let now = tokio::time::Instant::now();
            if index > min_index || now >= deadline {
                break;
            }
            watch.changed(deadline - now).await;
        }
    }
    let (index, lines): (u64, Vec<AuditEntry>) = audit::list(&state.store, since, limit).await?;
    let mut headers = HeaderMap::new();
    headers.insert(crate::api::kv::INDEX_HEADER, HeaderValue::from(index));
    Ok((headers, Json(lines)).into_response())
}

async fn ca_status(State(state): State<SecurityApi>) -> Result<Json<CaStatus>, HttpError> {
    let join = secure_only(&state)?;
    Ok(Json(super::rotation::status(join, &state.store).await?))
}

async fn ca_rotate(
    State(state): State<SecurityApi>,
    Json(req): Json<RotateCa>,
) -> Result<Json<CaRotated>, HttpError> {
    let join = secure_only(&state)?;
    let overlap = humantime::parse_duration(&req.overlap)
        .map_err(|e| HttpError::invalid(format!("overlap {:?}: {e}", req.overlap)))?;
    let status = state.store.status();
    if status.is_leader {
        return Ok(Json(
            super::rotation::rotate(join, &state.store, overlap).await?,
        ));
    }
    // The leader makes the new CA; this server passes the request on with its own certificate.
    let Some(leader) = status.leader else {
        return Err(HttpError::new(
            ErrorCode::NoLeader,
            "no raft leader to make the new CA; retry once the cluster has one",
        ));
    };
    let url = format!(
        "{}://{}/api/v1/ca/rotate",
        state.internal_http.scheme(),
        leader.http_addr
    );
    let unreachable = |e: reqwest::Error| {
        HttpError::new(
            ErrorCode::Unavailable,
            format!("cannot reach the leader {}: {e}", leader.name),
        )
    };
    let resp = state
        .internal_http
        .get()
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(unreachable)?;
    if resp.status().is_success() {
        return Ok(Json(resp.json().await.map_err(unreachable)?));
    }
    let code = resp.status();
    let err: Option<pier_api::ApiError> = resp.json().await.ok();
    Err(match err {
        Some(e) => HttpError::new(e.error.code, e.error.message),
        None => HttpError::new(
            ErrorCode::Unavailable,
            format!("the leader {} answered {code}", leader.name),
        ),
    })
}

/// A repository pattern as `pier registry public add` takes it: a repository name, or a
/// prefix ending in `*` (`*` alone makes every repository public).
fn valid_public_pattern(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    p.len() <= 255
        && !p.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
}

async fn list_public(
    State(state): State<SecurityApi>,
) -> Result<Json<Vec<PublicPrefix>>, HttpError> {
    secure_only(&state)?;
    let list = state
        .store
        .read(Consistency::Default, |v| {
            v.range_prefix(&REGISTRY_PUBLIC, "")
                .filter_map(|(_, e)| serde_json::from_slice::<PublicPrefix>(&e.value).ok())
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(list))
}

async fn add_public(
    State(state): State<SecurityApi>,
    Path(pattern): Path<String>,
) -> Result<Json<PublicPrefix>, HttpError> {
    secure_only(&state)?;
    if !valid_public_pattern(&pattern) {
        return Err(HttpError::invalid(format!(
            "{pattern:?} is not a repository name or prefix (lower-case letters, digits, '.', '_', '-', '/', and an optional trailing '*')"
        )));
    }
    let record = PublicPrefix {
        pattern: pattern.clone(),
        created_at_ms: pier_api::time::now_ms(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| HttpError::invalid(e.to_string()))?;
    state
        .store
        .write(Txn::single(Op::put(REGISTRY_PUBLIC, pattern, bytes)))
        .await?;
    Ok(Json(record))
}

async fn remove_public(
    State(state): State<SecurityApi>,
    Path(pattern): Path<String>,
) -> Result<StatusCode, HttpError> {
    secure_only(&state)?;
    let exists = {
        let key = pattern.clone();
        state
            .store
            .read(Consistency::Default, move |v| {
                v.get(&REGISTRY_PUBLIC, &key).is_some()
            })
            .await?
    };
    if !exists {
        return Err(HttpError::new(
            ErrorCode::NotFound,
            format!("{pattern:?} is not public"),
        ));
    }
    state
        .store
        .write(Txn::single(Op::delete(REGISTRY_PUBLIC, pattern)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod public_tests {
    #[test]
    fn public_patterns_are_names_or_prefixes() {
        for ok in ["pub/*", "*", "team/app", "a.b_c-d/e*"] {
            assert!(super::valid_public_pattern(ok), "{ok}");
        }
        for bad in ["", "Team/*", "a*b", "a b", "*/*"] {
            assert!(!super::valid_public_pattern(bad), "{bad}");
        }
    }
}
