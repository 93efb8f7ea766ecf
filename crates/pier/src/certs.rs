//! Gateway TLS certificates in the replicated store: the `/api/v1/certs` endpoints behind
//! `pier cert add|ls|rm`, and the loop that keeps a gateway's certificate resolver equal to
//! the table (every gateway following the store serves a new certificate within a second,
//! without touching a connection).
//!
//! Private keys are sealed (AES-256-GCM, `pier_security::seal`) with a key derived from the
//! server join secret in a secure cluster, as the CA key is: a copy of the store reveals no
//! key, and only servers (which hold the secret) can open them, so only gateways inside a
//! server process serve stored certificates. `pier dev` and `pier server --insecure` have no
//! such secret: keys are stored as given there (the listing says `key_sealed: false`).
//! `GET /api/v1/certs` returns metadata only, never a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use pier_api::cert::{CertAddRequest, CertView};
use pier_api::ErrorCode;
use pier_gateway::CertResolver;
use pier_security::seal::SealKey;
use pier_store::{Consistency, Store, Table, Txn, TypedTable, WatchKey};
use serde::{Deserialize, Serialize};

use crate::api::HttpError;

pub const CERTS: Table = Table::from_static("gateway_certs");
const TABLE: TypedTable<StoredCert> = TypedTable::new(CERTS);
const SEAL_PURPOSE: &str = "pier/gateway-cert-keys/v1";

/// How long a follower waits on its watch before reading the table again anyway.
const RESYNC: Duration = Duration::from_secs(60);

/// A provided certificate with less than this left is shown as a problem by `cert ls`: it
/// is nobody's job but its owner's to replace it (ACME ones are renewed 30 days ahead, and a
/// failing renewal shows its own error).
const EXPIRES_SOON_SECS: i64 = 14 * 24 * 3600;

/// A certificate as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredCert {
    host: String,
    cert_pem: String,
    key: StoredKey,
    source: String,
    names: Vec<String>,
    issuer: String,
    not_after: i64,
    added_at_ms: u64,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
enum StoredKey {
    Plain(String),
    /// `pier_security::seal` text, bound to the host name.
    Sealed(String),
}

/// The stored key of a certificate: sealed when this cluster has a server secret.
fn store_key(seal: Option<&SealKey>, host: &str, key_pem: String) -> StoredKey {
    match seal {
        Some(seal) => StoredKey::Sealed(seal.seal(key_pem.as_bytes(), &seal_context(host))),
        None => StoredKey::Plain(key_pem),
    }
}

/// When `host`'s certificate is due for renewal (Unix seconds), None without one: when less
/// than `renew_before_secs` is left, or a third of its lifetime (short-lived certificates,
/// e.g. six days, would otherwise be renewed on every pass).
pub(crate) fn renew_at(
    v: &pier_store::StateView<'_>,
    host: &str,
    renew_before_secs: i64,
) -> Result<Option<i64>, pier_store::StoreError> {
    Ok(TABLE.get(v, host)?.map(|c| {
        let c = c.value;
        let stored_secs = i64::try_from(c.added_at_ms / 1000).unwrap_or(i64::MAX);
        let lifetime = (c.not_after - stored_secs).max(0);
        c.not_after - renew_before_secs.min(lifetime / 3)
    }))
}

/// The write that stores an ACME-issued chain and key, as provided certificates are stored.
pub(crate) fn acme_put(
    host: &str,
    chain_pem: String,
    key_pem: String,
    seal: Option<&SealKey>,
) -> Result<pier_store::Op, String> {
    let (_, info) = pier_gateway::certified_key(chain_pem.as_bytes(), key_pem.as_bytes())
        .map_err(|e| format!("the CA issued an unusable certificate: {e}"))?;
    let stored = StoredCert {
        host: host.to_string(),
        cert_pem: chain_pem,
        key: store_key(seal, host, key_pem),
        source: "acme".into(),
        names: info.names,
        issuer: info.issuer,
        not_after: info.not_after,
        added_at_ms: pier_api::time::now_ms(),
        last_error: None,
    };
    TABLE
        .put(host.to_string(), &stored)
        .map_err(|e| e.to_string())
}

/// The seal key of certificate keys, derived from the server join secret.
pub fn seal_key(server_secret: &str) -> SealKey {
    SealKey::derive(server_secret, SEAL_PURPOSE)
}

fn seal_context(host: &str) -> String {
    format!("gateway-cert-key:{host}")
}

#[derive(Clone)]
pub struct CertsApi {
    pub store: Store,
    /// None without a server secret (`pier dev`, `--insecure`): keys stored as given.
    pub seal: Option<SealKey>,
}

pub fn router(state: CertsApi) -> Router {
    Router::new()
        .route("/api/v1/certs", get(list).post(add))
        .route("/api/v1/certs/{host}", delete(remove))
        .route("/api/v1/gateway/certs", get(material))
        .with_state(state)
}

/// A host name as certificates are keyed: lower case, LDH labels, an optional leading `*.`.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    let ok = !bare.is_empty()
        && host.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(host)
    } else {
        Err(format!(
            "{host:?} is not a host name (letters, digits, '-' and dots; `*.` for a wildcard)"
        ))
    }
}

/// `2026-12-07 13:40 UTC` from Unix seconds.
pub(crate) fn utc_date(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => unix.to_string(),
    }
}

/// The expiry problem of a certificate at `now_secs`, if any.
fn expiry_problem(c: &StoredCert, now_secs: i64) -> Option<String> {
    let left = c.not_after - now_secs;
    if left <= 0 {
        return Some(format!(
            "expired on {}; clients refuse it",
            utc_date(c.not_after)
        ));
    }
    if c.source == "provided" && left < EXPIRES_SOON_SECS {
        let when = match left / (24 * 3600) {
            0 => format!("in {} h", left / 3600),
            days => format!("in {days} days"),
        };
        return Some(format!(
            "expires soon: on {} ({when}); add a new certificate",
            utc_date(c.not_after)
        ));
    }
    None
}

/// What is wrong with a stored certificate at `now_secs`, worded for `cert ls`, or None:
/// expired or expiring soon (re-evaluated at every listing, since time alone causes it), a
/// key that does not open here or does not belong to the certificate, a certificate that
/// does not cover its host.
fn problem(c: &StoredCert, seal: Option<&SealKey>, now_secs: i64) -> Option<String> {
    let mut problems = Vec::new();
    match try_open_key(c, seal) {
        Err(e) => problems.push(e),
        Ok(key) => match pier_gateway::certified_key(c.cert_pem.as_bytes(), &key) {
            Err(e) => problems.push(e.to_string()),
            Ok((_, info)) if !info.covers(&c.host) => problems.push(
                pier_gateway::TlsError::NotCovered {
                    host: c.host.clone(),
                    names: info.names.join(", "),
                }
                .to_string(),
            ),
            Ok(_) => {}
        },
    }
    problems.extend(expiry_problem(c, now_secs));
    problems.extend(c.last_error.clone());
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The listing of `c` at `now_secs`, its problems evaluated now.
fn view(c: &StoredCert, seal: Option<&SealKey>, now_secs: i64) -> CertView {
    CertView {
        host: c.host.clone(),
        names: c.names.clone(),
        issuer: c.issuer.clone(),
        not_after: c.not_after,
        source: c.source.clone(),
        key_sealed: matches!(c.key, StoredKey::Sealed(_)),
        added_at_ms: c.added_at_ms,
        last_error: problem(c, seal, now_secs),
    }
}

fn now_secs() -> i64 {
    i64::try_from(pier_api::time::now_secs()).unwrap_or(i64::MAX)
}

async fn add(
    State(api): State<CertsApi>,
    Json(req): Json<CertAddRequest>,
) -> Result<Json<CertView>, HttpError> {
    let host = normalize_host(&req.host).map_err(HttpError::invalid)?;
    let (_, info) = pier_gateway::certified_key(req.cert_pem.as_bytes(), req.key_pem.as_bytes())
        .map_err(|e| HttpError::invalid(e.to_string()))?;
    if !info.covers(&host) {
        return Err(HttpError::invalid(
            pier_gateway::TlsError::NotCovered {
                host,
                names: info.names.join(", "),
            }
            .to_string(),
        ));
    }
    let now = now_secs();
    if info.not_after <= now {
        // Serving it would fail every handshake just as having none would, and more
        // confusingly.
        return Err(HttpError::invalid(format!(
            "the certificate expired on {}",
            utc_date(info.not_after)
        )));
    }
    let key = store_key(api.seal.as_ref(), &host, req.key_pem);
    let stored = StoredCert {
        host: host.clone(),
        cert_pem: req.cert_pem,
        key,
        source: "provided".into(),
        names: info.names,
        issuer: info.issuer,
        not_after: info.not_after,
        added_at_ms: pier_api::time::now_ms(),
        last_error: None,
    };
    api.store
        .write(Txn {
            ops: vec![TABLE.put(host, &stored)?],
        })
        .await?;
    Ok(Json(view(&stored, api.seal.as_ref(), now)))
}

async fn list(State(api): State<CertsApi>) -> Result<Json<Vec<CertView>>, HttpError> {
    let certs = api
        .store
        .read(Consistency::Default, |v| TABLE.list(v, ""))
        .await??;
    let now = now_secs();
    let mut views: Vec<CertView> = certs
        .iter()
        .map(|(_, c)| view(&c.value, api.seal.as_ref(), now))
        .collect();
    crate::acme::add_status(&api.store, &mut views).await?;
    Ok(Json(views))
}

async fn remove(
    State(api): State<CertsApi>,
    Path(host): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let host = normalize_host(&host).map_err(HttpError::invalid)?;
    let exists = api
        .store
        .read(Consistency::Default, |v| TABLE.get(v, &host))
        .await??
        .is_some();
    if !exists {
        return Err(HttpError::new(
            ErrorCode::NotFound,
            format!("no certificate for {host}; `pier cert ls` lists them"),
        ));
    }
    api.store
        .write(Txn {
            ops: vec![TABLE.delete(host.clone())],
        })
        .await?;
    Ok(Json(serde_json::json!({ "removed": host })))
}

/// Every certificate with its key opened, for standalone gateways; a blocking read
/// (`?index=N&wait=D`) returns once the table's index passes `N`.
async fn material(
    State(api): State<CertsApi>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Result<axum::response::Response, HttpError> {
    use axum::response::IntoResponse;
    let params = crate::api::params::read_params(&query)?;
    let keys = [WatchKey::prefix(CERTS, "")];
    let mut watch = api.store.watch(&keys);
    let deadline = tokio::time::Instant::now() + params.wait;
    let (index, certs) = loop {
        let (index, certs) = api
            .store
            .read(params.consistency, |v| {
                TABLE.list(v, "").map(|c| (v.index_of(&keys), c))
            })
            .await??;
        let now = tokio::time::Instant::now();
        if params.min_index.is_none_or(|min| index > min) || now >= deadline {
            break (index, certs);
        }
        watch.changed(deadline - now).await;
    };
    let out: Vec<pier_api::cert::CertMaterial> = certs
        .into_iter()
        .filter_map(|(host, c)| {
            let key = open_key(&c.value, api.seal.as_ref())?;
            let key_pem = String::from_utf8(key).ok()?;
            Some(pier_api::cert::CertMaterial {
                host,
                cert_pem: c.value.cert_pem,
                key_pem,
            })
        })
        .collect();
    let mut resp = Json(out).into_response();
    resp.headers_mut().insert(
        crate::api::kv::INDEX_HEADER,
        axum::http::HeaderValue::from(index),
    );
    Ok(resp)
}

/// Keeps `resolver` equal to the certificate table of this server's store, until the
/// process ends. A certificate whose key cannot be opened or parsed is left out and logged.
pub async fn follow(store: Store, seal: Option<SealKey>, resolver: Arc<CertResolver>) {
    loop {
        // Subscribe before reading, so no write between the two is missed.
        let mut watch = store.watch(&[WatchKey::prefix(CERTS, "")]);
        match store.read(Consistency::Stale, |v| TABLE.list(v, "")).await {
            Ok(Ok(certs)) => {
                let map = certs
                    .into_iter()
                    .filter_map(|(host, c)| Some((host, load(&c.value, seal.as_ref())?)))
                    .collect::<HashMap<_, _>>();
                tracing::debug!(certificates = map.len(), "gateway certificates loaded");
                resolver.replace(map);
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot read the gateway certificates; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        watch.changed(RESYNC).await;
    }
}

/// The PEM key of a stored certificate, or why it cannot be opened here.
fn try_open_key(c: &StoredCert, seal: Option<&SealKey>) -> Result<Vec<u8>, String> {
    match (&c.key, seal) {
        (StoredKey::Plain(k), _) => Ok(k.as_bytes().to_vec()),
        (StoredKey::Sealed(s), Some(seal)) => seal
            .open(s, &seal_context(&c.host))
            .map_err(|e| format!("the sealed key cannot be opened: {e}")),
        (StoredKey::Sealed(_), None) => {
            Err("the key is sealed, but this process holds no server secret".to_string())
        }
    }
}

/// The PEM key of a stored certificate; None (logged) when it cannot be opened here.
fn open_key(c: &StoredCert, seal: Option<&SealKey>) -> Option<Vec<u8>> {
    try_open_key(c, seal)
        .map_err(|e| tracing::warn!(host = %c.host, error = %e, "certificate key unusable"))
        .ok()
}

fn load(c: &StoredCert, seal: Option<&SealKey>) -> Option<Arc<rustls::sign::CertifiedKey>> {
    let key_pem = open_key(c, seal)?;
    match pier_gateway::certified_key(c.cert_pem.as_bytes(), &key_pem) {
        Ok((ck, _)) => Some(ck),
        Err(e) => {
            tracing::warn!(host = %c.host, error = %e, "stored certificate unusable");
            None
        }
    }
}

/// A standalone gateway's follower: keeps `resolver` equal to the server's certificates
/// through blocking reads of `/api/v1/gateway/certs`.
pub async fn follow_remote(
    http: pier_net::HttpClient,
    server: String,
    resolver: Arc<CertResolver>,
) {
    let mut index = 0u64;
    loop {
        match fetch_material(&http, &server, index).await {
            Ok((certs, next)) => {
                let map = certs
                    .into_iter()
                    .filter_map(|c| {
                        match pier_gateway::certified_key(
                            c.cert_pem.as_bytes(),
                            c.key_pem.as_bytes(),
                        ) {
                            Ok((ck, _)) => Some((c.host, ck)),
                            Err(e) => {
                                tracing::warn!(host = %c.host, error = %e, "certificate unusable");
                                None
                            }
                        }
                    })
                    .collect::<HashMap<_, _>>();
                tracing::debug!(certificates = map.len(), "gateway certificates loaded");
                resolver.replace(map);
                // An index that goes backwards means the server restored state: start over.
                index = if next < index { 0 } else { next };
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the gateway certificates; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn fetch_material(
    http: &pier_net::HttpClient,
    server: &str,
    index: u64,
) -> Result<(Vec<pier_api::cert::CertMaterial>, u64), String> {
    let url = format!("{server}/api/v1/gateway/certs?index={index}&wait=5m");
    let resp = http
        .get()
        .get(&url)
        .timeout(Duration::from_secs(6 * 60))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let next = resp
        .headers()
        .get(crate::api::kv::INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let certs = resp.json().await.map_err(|e| e.to_string())?;
    Ok((certs, next))
}

/// The local CA's certificate file (`pier dev` prints it for `curl --cacert`).
pub fn local_ca_cert_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    crate::security::files::TlsDir::new(data_dir).path(LOCAL_CA_CERT)
}

const LOCAL_CA_CERT: &str = "local-ca.pem";
const LOCAL_CA_KEY: &str = "local-ca.key";

/// `pier dev`'s issuer for `*.localhost`: the local CA in `data_dir` (made on first start,
/// key 0600), leaf certificates issued at the first handshake for a name and kept in memory.
pub fn local_issuer(
    data_dir: &std::path::Path,
) -> anyhow::Result<Box<dyn pier_gateway::OnDemandIssuer>> {
    use anyhow::Context;
    use pier_security::local_ca::LocalCa;
    let dir = crate::security::files::TlsDir::new(data_dir);
    let now = pier_api::time::now_secs();
    let ca = match (dir.read_opt(LOCAL_CA_CERT)?, dir.read_opt(LOCAL_CA_KEY)?) {
        (Some(cert), Some(key)) => LocalCa::from_pem(&cert, &key)
            .with_context(|| format!("cannot use the local CA in {}", dir.path("").display()))?,
        _ => {
            let ca = LocalCa::generate(now).context("cannot make the local CA")?;
            // The key first: a certificate without its key is never left behind.
            dir.write(LOCAL_CA_KEY, ca.key_pem(), 0o600)?;
            dir.write(LOCAL_CA_CERT, ca.cert_pem(), 0o644)?;
            ca
        }
    };
    Ok(Box::new(LocalIssuer {
        ca,
        cache: std::sync::Mutex::new(HashMap::new()),
    }))
}

struct LocalIssuer {
    ca: pier_security::local_ca::LocalCa,
    cache: std::sync::Mutex<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

/// Names issued at most; a client cannot grow the cache without bound.
const LOCAL_CACHE_MAX: usize = 1024;

impl pier_gateway::OnDemandIssuer for LocalIssuer {
    fn issue(&self, host: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if !pier_security::local_ca::is_local_name(host) || normalize_host(host).is_err() {
            return None;
        }
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if let Some(ck) = cache.get(host) {
            return Some(Arc::clone(ck));
        }
        // Issued under the lock: a burst of handshakes for a new name issues it once.
        let (chain, key) = match self.ca.issue(host, pier_api::time::now_secs()) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%host, error = %e, "local CA cannot issue");
                return None;
            }
        };
        let ck = match pier_gateway::certified_key(chain.as_bytes(), key.as_bytes()) {
            Ok((ck, _)) => ck,
            Err(e) => {
                tracing::warn!(%host, error = %e, "local CA issued an unusable certificate");
                return None;
            }
        };
        if cache.len() >= LOCAL_CACHE_MAX {
            cache.clear();
        }
        cache.insert(host.to_string(), Arc::clone(&ck));
        tracing::info!(%host, "local CA issued a certificate");
        Some(ck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(
            normalize_host("Shop.Example.com.").unwrap(),
            "shop.example.com"
        );
        assert_eq!(normalize_host("*.example.com").unwrap(), "*.example.com");
        assert!(normalize_host("a..b").is_err());
        assert!(normalize_host("*.").is_err());
        assert!(normalize_host("a/b").is_err());
        assert!(normalize_host("-a.b").is_err());
    }

    /// A self-signed certificate for `names` valid until `not_after` (Unix seconds), stored
    /// for `host` with `key_pem` (its own key when None).
    fn stored(host: &str, names: &[&str], not_after: i64, key_pem: Option<String>) -> StoredCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&key).unwrap();
        StoredCert {
            host: host.into(),
            cert_pem: cert.pem(),
            key: StoredKey::Plain(key_pem.unwrap_or_else(|| key.serialize_pem())),
            source: "provided".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: String::new(),
            not_after,
            added_at_ms: 0,
            last_error: None,
        }
    }

    #[test]
    fn problems_of_provided_certificates_are_evaluated_at_listing_time() {
        let now = 1_800_000_000;
        let day = 24 * 3600;
        let good = stored("a.example.com", &["a.example.com"], now + 60 * day, None);
        assert_eq!(problem(&good, None, now), None);
        // The same certificate, listed later: first expiring soon, then expired.
        let soon = problem(&good, None, now + 55 * day).unwrap();
        assert!(
            soon.starts_with("expires soon") && soon.contains("in 5 days"),
            "{soon}"
        );
        let hours = problem(&good, None, now + 60 * day - 7200).unwrap();
        assert!(hours.contains("in 2 h"), "{hours}");
        let expired = problem(&good, None, now + 61 * day).unwrap();
        assert!(expired.starts_with("expired on 2027-"), "{expired}");
        // Expiring soon is the owner's job only for provided ones; ACME renews by itself.
        let acme = StoredCert {
            source: "acme".into(),
            ..good.clone()
        };
        assert_eq!(problem(&acme, None, now + 55 * day), None);
        assert!(problem(&acme, None, now + 61 * day).is_some());

        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let mismatched = stored(
            "a.example.com",
            &["a.example.com"],
            now + 60 * day,
            Some(other_key),
        );
        let p = problem(&mismatched, None, now).unwrap();
        assert!(p.contains("does not belong"), "{p}");
        let uncovered = stored("b.example.com", &["a.example.com"], now + 60 * day, None);
        let p = problem(&uncovered, None, now).unwrap();
        assert!(p.contains("does not cover b.example.com"), "{p}");
        let sealed = StoredCert {
            key: StoredKey::Sealed("x".into()),
            ..good
        };
        let p = problem(&sealed, None, now).unwrap();
        assert!(p.contains("no server secret"), "{p}");
    }
}
