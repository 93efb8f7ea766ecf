//! Joining a secure cluster, both sides.
//!
//! Server side ([`JoinService::router`], on the raft and API ports of every server):
//! * `GET /pier/v1/ca[?challenge=N]`: the CA bundle (with a proof for bootstrap secrets);
//! * `POST /pier/v1/join`: a join secret and a CSR in, a certificate out. The role comes from
//!   the secret (server secret: any role; agent secret: agent or gateway); the name is bound
//!   to the CSR's key at its first join, so a second machine cannot take an existing node's
//!   name (`pier node rm` frees it);
//! * `POST /pier/v1/renew`: a node with a valid certificate gets a new one, same identity.
//!
//! Client side ([`fetch_pinned_ca`], [`join`], [`renew`]): the CA is downloaded without
//! trusting it, compared with the token's hash (or checked with the bootstrap proof), and only
//! then is the secret sent, over TLS verified against that CA.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use pier_api::security::{CaResponse, CertResponse, JoinRequest, RenewRequest};
use pier_api::{ApiError, ErrorCode};
use pier_net::Caller;
use pier_security::ca::{self, ClusterCa, NodeCert, NodeIdentity, Role};
use pier_security::token::{constant_time_eq, hash_secret, JoinToken};
use pier_store::{Consistency, Op, Store, Table, Txn};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// `role/name` → SHA-256 of the public key the name was first issued to.
pub const NODE_KEYS: Table = Table::from_static("security_node_keys");
/// Join tokens made with `pier token create`: hash of the secret → [`JoinTokenRecord`].
pub const JOIN_TOKENS: Table = Table::from_static("security_join_tokens");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub role: String,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

/// The cluster answered and said no (wrong token, name taken, CA not the pinned one):
/// retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinRefused(pub String);

/// Proof that the answering server knows the bootstrap secret.
pub fn ca_proof(secret: &str, nonce: &str, fingerprint: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("pier-ca-proof:{nonce}:{fingerprint}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What a server needs to let others join.
pub struct JoinService {
    /// Lifetime of the certificates this server signs.
    pub validity: Duration,
    /// The CA with its key, once this server has it.
    pub ca: ArcSwap<Option<ClusterCa>>,
    /// The CA certificate(s) handed out.
    pub bundle: ArcSwap<String>,
    pub server_secret: String,
    pub agent_secret: ArcSwap<Option<String>>,
    pub store: OnceLock<Store>,
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError::new(code, message))).into_response()
}

#[derive(Deserialize)]
struct CaQuery {
    challenge: Option<String>,
}

impl JoinService {
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/pier/v1/ca", get(ca_handler))
            .route("/pier/v1/join", post(join_handler))
            .route("/pier/v1/renew", post(renew_handler))
            .with_state(self.clone())
    }

    /// The role a join secret grants, if any.
    async fn role_of_secret(&self, secret: &str) -> Option<RoleGrant> {
        if constant_time_eq(secret, &self.server_secret) {
            return Some(RoleGrant::Server);
        }
        if let Some(agent) = self.agent_secret.load().as_ref().as_ref() {
            if constant_time_eq(secret, agent) {
                return Some(RoleGrant::Agent);
            }
        }
        let store = self.store.get()?;
        let hash = hash_secret(secret);
        let bytes = store
            .read(Consistency::Default, |v| {
                v.get(&JOIN_TOKENS, &hash).map(|e| e.value.clone())
            })
            .await
            .ok()??;
        let rec: JoinTokenRecord = serde_json::from_slice(&bytes).ok()?;
        if rec
            .expires_at_ms
            .is_some_and(|at| pier_api::time::now_ms() >= at)
        {
            return None;
        }
        match rec.role.as_str() {
            "server" => Some(RoleGrant::Server),
            "agent" => Some(RoleGrant::Agent),
            "gateway" => Some(RoleGrant::Gateway),
            _ => None,
        }
    }

    /// Binds `who` to the key of `csr_pem` (first join), or checks it is the same key.
    /// `rebind` replaces the binding (renewal, proved by the old certificate).
    async fn bind_key(
        &self,
        who: &NodeIdentity,
        csr_pem: &str,
        rebind: bool,
    ) -> Result<(), Response> {
        let fingerprint = ca::csr_key_fingerprint(csr_pem).map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidInput,
                e.to_string(),
            )
        })?;
        // Before this server's store runs (its own bootstrap) there is nothing to bind to.
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let key = format!("{}/{}", who.role, who.name);
        let existing = store
            .read(Consistency::Default, |v| {
                v.get(&NODE_KEYS, &key).map(|e| {
                    (
                        String::from_utf8_lossy(&e.value).into_owned(),
                        e.modify_index,
                    )
                })
            })
            .await
            .map_err(|e| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    e.to_string(),
                )
            })?;
        let cas = match existing {
            Some((fp, _)) if fp == fingerprint => return Ok(()),
            Some((_, index)) if rebind => index,
            Some(_) => {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    ErrorCode::Conflict,
                    format!(
                        "a {} named {:?} already joined with another key; if that machine is gone, remove it first (`pier node rm {}` or `pier server remove {}`)",
                        who.role, who.name, who.name, who.name
                    ),
                ))
            }
            None => 0,
        };
        let put = Op::put_cas(NODE_KEYS, key, fingerprint.into_bytes(), cas);
        match store.write(Txn::single(put)).await {
            Ok(r) if r.applied => Ok(()),
            Ok(_) => Err(refuse(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "another join for this name raced this one; retry",
            )),
            Err(e) => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            )),
        }
    }

    fn sign(
        &self,
        csr_pem: &str,
        who: &NodeIdentity,
        addresses: &[String],
    ) -> Result<CertResponse, Box<Response>> {
        let bad = |m: String| Box::new(refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, m));
        let ca = self.ca.load();
        let Some(ca) = ca.as_ref().as_ref() else {
            return Err(Box::new(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "this server cannot sign certificates yet (it has not received the CA key); ask another server",
            )));
        };
        if addresses.len() > 16 {
            return Err(bad("at most 16 addresses".into()));
        }
        let cert_pem = ca
            .sign_csr(
                csr_pem,
                who,
                addresses,
                self.validity,
                pier_api::time::now_secs(),
            )
            .map_err(|e| bad(e.to_string()))?;
        Ok(CertResponse {
            cert_pem,
            ca_pem: self.bundle.load().as_ref().clone(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RoleGrant {
    Server,
    /// Agents and gateways.
    Agent,
    /// Gateways only.
    Gateway,
}

async fn ca_handler(
    State(svc): State<Arc<JoinService>>,
    Query(q): Query<CaQuery>,
) -> Json<CaResponse> {
    let ca_pem = svc.bundle.load().as_ref().clone();
    let proof = q.challenge.map(|nonce| {
        let fp = ca::fingerprint_pem(&ca_pem).unwrap_or_default();
        ca_proof(&svc.server_secret, &nonce, &fp)
    });
    Json(CaResponse { ca_pem, proof })
}

async fn join_handler(
    State(svc): State<Arc<JoinService>>,
    Json(req): Json<JoinRequest>,
) -> Response {
    let Some(role) = Role::parse(&req.role) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            "role must be server, agent or gateway",
        );
    };
    let who = match NodeIdentity::new(role, req.name.clone()) {
        Ok(w) => w,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidInput,
                e.to_string(),
            )
        }
    };
    let granted = match svc.role_of_secret(&req.secret).await {
        Some(g) => g,
        None => {
            tracing::warn!(name = %req.name, role = %req.role, "join refused: unknown join secret");
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "the join token is not valid for this cluster",
            );
        }
    };
    if role == Role::Server && granted != RoleGrant::Server {
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "an agent join token cannot add a server",
        );
    }
    if role != Role::Gateway && granted == RoleGrant::Gateway {
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "a gateway join token can add only gateways",
        );
    }
    if let Err(resp) = svc.bind_key(&who, &req.csr_pem, false).await {
        return resp;
    }
    match svc.sign(&req.csr_pem, &who, &req.addresses) {
        Ok(cert) => {
            tracing::info!(node = %who, "issued a certificate to a joining node");
            Json(cert).into_response()
        }
        Err(resp) => *resp,
    }
}

async fn renew_handler(
    State(svc): State<Arc<JoinService>>,
    caller: Option<Extension<Caller>>,
    Json(req): Json<RenewRequest>,
) -> Response {
    let Some(who) = caller.and_then(|Extension(c)| c.0) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "renewal needs the node's current certificate (mTLS)",
        );
    };
    if let Err(resp) = svc.bind_key(&who, &req.csr_pem, true).await {
        return resp;
    }
    match svc.sign(&req.csr_pem, &who, &req.addresses) {
        Ok(cert) => Json(cert).into_response(),
        Err(resp) => *resp,
    }
}

fn client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .build()?)
}

/// "host:port" or a URL, to an https base URL.
pub fn https_base(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    let addr = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    format!("https://{addr}")
}

/// Downloads the CA bundle from `addr` and accepts it only if the token pins it, or (bootstrap
/// token, no pin) if the answer proves knowledge of the token's secret.
pub async fn fetch_pinned_ca(addr: &str, token: &JoinToken) -> anyhow::Result<String> {
    let http = client(pier_security::tls::ca_download_config()?)?;
    let nonce = pier_security::token::generate_secret();
    let url = format!("{}/pier/v1/ca?challenge={nonce}", https_base(addr));
    let resp: CaResponse = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let fingerprint = ca::fingerprint_pem(&resp.ca_pem)?;
    let trusted = match &token.ca_hash {
        // During a CA rotation the bundle holds the new CA and the one being retired: a token
        // printed before the rotation pins the old one and stays good until it is dropped.
        Some(_) => ca::fingerprints_pem(&resp.ca_pem)
            .iter()
            .any(|fp| token.pins(fp)),
        None => resp
            .proof
            .as_deref()
            .is_some_and(|p| constant_time_eq(p, &ca_proof(&token.secret, &nonce, &fingerprint))),
    };
    if !trusted {
        return Err(JoinRefused(format!(
            "the server at {addr} presented CA {fingerprint}, which the join token does not trust: wrong token, wrong address, or someone in between; nothing was sent"
        ))
        .into());
    }
    Ok(resp.ca_pem)
}

/// Joins through the first of `addrs` that answers: a fresh key, a certificate for `who`.
pub async fn join(
    addrs: &[String],
    token: &JoinToken,
    who: &NodeIdentity,
    addresses: &[String],
) -> anyhow::Result<(NodeCert, String)> {
    let mut last = anyhow::anyhow!("no server address to join through");
    for addr in addrs {
        match join_one(addr, token, who, addresses).await {
            Ok(done) => return Ok(done),
            Err(e) if e.downcast_ref::<JoinRefused>().is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(server = %addr, error = %format!("{e:#}"), "join attempt failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn join_one(
    addr: &str,
    token: &JoinToken,
    who: &NodeIdentity,
    addresses: &[String],
) -> anyhow::Result<(NodeCert, String)> {
    let bundle = fetch_pinned_ca(addr, token).await?;
    let (key_pem, csr_pem) = ca::new_key_and_csr(who)?;
    let http = client(pier_security::tls::client_config(&[&bundle], None)?)?;
    let resp = http
        .post(format!("{}/pier/v1/join", https_base(addr)))
        .json(&JoinRequest {
            role: who.role.to_string(),
            name: who.name.clone(),
            csr_pem,
            secret: token.secret.clone(),
            addresses: addresses.to_vec(),
        })
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Option<ApiError> = resp.json().await.ok();
        let message = format!(
            "{addr} refused the join ({status}): {}",
            body.map(|b| b.error.message).unwrap_or_default()
        );
        if status.is_client_error() {
            return Err(JoinRefused(message).into());
        }
        anyhow::bail!(message);
    }
    let cert: CertResponse = resp.json().await?;
    if ca::identity_of_pem(&cert.cert_pem)? != *who {
        anyhow::bail!("{addr} issued a certificate for another identity");
    }
    Ok((
        NodeCert {
            cert_pem: cert.cert_pem,
            key_pem,
        },
        cert.ca_pem,
    ))
}

/// The CA bundle `addr` trusts now, asked over TLS verified with `tls` (the caller's current
/// trust): how an agent learns of a CA rotation.
pub async fn fetch_bundle(addr: &str, tls: rustls::ClientConfig) -> anyhow::Result<String> {
    let resp: CaResponse = client(tls)?
        .get(format!("{}/pier/v1/ca", https_base(addr)))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // Something that is not a bundle is not adopted.
    pier_security::tls::certs_from_pem(&[&resp.ca_pem])?;
    Ok(resp.ca_pem)
}

/// A new certificate for the identity of `current`, asked with `current` (mTLS).
pub async fn renew(
    addr: &str,
    bundle: &str,
    current: &NodeCert,
    addresses: &[String],
) -> anyhow::Result<(NodeCert, String)> {
    let who = ca::identity_of_pem(&current.cert_pem)?;
    let (key_pem, csr_pem) = ca::new_key_and_csr(&who)?;
    let http = client(pier_security::tls::client_config(
        &[bundle],
        Some((&current.cert_pem, &current.key_pem)),
    )?)?;
    let resp = http
        .post(format!("{}/pier/v1/renew", https_base(addr)))
        .json(&RenewRequest {
            csr_pem,
            addresses: addresses.to_vec(),
        })
        .send()
        .await?
        .error_for_status()?;
    let cert: CertResponse = resp.json().await?;
    Ok((
        NodeCert {
            cert_pem: cert.cert_pem,
            key_pem,
        },
        cert.ca_pem,
    ))
}
