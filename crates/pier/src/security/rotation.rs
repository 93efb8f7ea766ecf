//! `pier ca rotate`: replacing the cluster CA without stopping anything.
//!
//! The leader (another server forwards the request to it) makes a new CA and commits one record
//! through raft (`security/ca/rotation`, the keys sealed with the server secret like the first
//! CA key). The record is a schedule, not a command; every process reads it on every pass and
//! converges:
//!
//! | time | signs with | trust bundle |
//! |---|---|---|
//! | `started_at` .. `switch_at` | old CA | old + new |
//! | `switch_at` .. `old_dropped_at` | new CA | new + old |
//! | after `old_dropped_at` | new CA | new |
//!
//! The first phase spreads trust in the new CA to every server (their sync loop, every 2 s)
//! and agent (its CA poll, every 10 s) before anybody presents a certificate from it, so no
//! handshake fails. From `switch_at` each process sees that its certificate was not signed by
//! the first CA of its bundle and renews (the ordinary renewal path). Once the old CA is
//! dropped, a certificate it signed no longer completes a handshake anywhere.

use std::sync::Arc;
use std::time::Duration;

use pier_api::security::{CaRotated, CaRotationInfo, CaStatus};
use pier_api::ErrorCode;
use pier_security::ca::{fingerprint_pem, fingerprints_pem, ClusterCa};
use pier_security::seal::SealKey;
use pier_security::token::JoinToken;
use pier_store::{Consistency, Op, Store, Txn};
use serde::{Deserialize, Serialize};

use super::files;
use super::join::JoinService;
use super::server::{ServerSecurity, SECURITY};
use crate::api::HttpError;

const KEY_ROTATION: &str = "ca/rotation";
const SEAL_CONTEXT_NEW: &str = "ca/rotation/new";
const SEAL_CONTEXT_OLD: &str = "ca/rotation/old";
/// The shortest overlap: the trust phase must outlast an agent's CA poll with room to spare,
/// and the renewal phase must leave every process time to renew.
pub const MIN_OVERLAP: Duration = Duration::from_secs(45);
/// Bounds of the trust phase (a quarter of the overlap).
const MIN_TRUST_PHASE: Duration = Duration::from_secs(15);
const MAX_TRUST_PHASE: Duration = Duration::from_secs(3600);

/// What the store keeps about the latest rotation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RotationRecord {
    generation: u64,
    new_cert_pem: String,
    new_key_sealed: String,
    old_cert_pem: String,
    old_key_sealed: String,
    started_at: u64,
    switch_at: u64,
    old_dropped_at: u64,
}

/// The CA that signs at one moment, its sealed key, and the bundle trusted then.
struct View<'a> {
    cert_pem: &'a str,
    key_sealed: &'a str,
    key_context: &'static str,
    bundle: String,
}

impl RotationRecord {
    fn view(&self, now: u64) -> View<'_> {
        if now < self.switch_at {
            View {
                cert_pem: &self.old_cert_pem,
                key_sealed: &self.old_key_sealed,
                key_context: SEAL_CONTEXT_OLD,
                bundle: format!("{}{}", pem_line(&self.old_cert_pem), self.new_cert_pem),
            }
        } else {
            let bundle = if now < self.old_dropped_at {
                format!("{}{}", pem_line(&self.new_cert_pem), self.old_cert_pem)
            } else {
                self.new_cert_pem.clone()
            };
            View {
                cert_pem: &self.new_cert_pem,
                key_sealed: &self.new_key_sealed,
                key_context: SEAL_CONTEXT_NEW,
                bundle,
            }
        }
    }

    fn info(&self) -> CaRotationInfo {
        CaRotationInfo {
            generation: self.generation,
            new_fingerprint: fingerprint_pem(&self.new_cert_pem).unwrap_or_default(),
            old_fingerprint: fingerprint_pem(&self.old_cert_pem).unwrap_or_default(),
            started_at: self.started_at,
            switch_at: self.switch_at,
            old_dropped_at: self.old_dropped_at,
        }
    }
}

/// A PEM text ending in a newline, so two can be concatenated into a bundle.
fn pem_line(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}

fn seal_key(join: &JoinService) -> SealKey {
    SealKey::derive(&join.server_secret, super::server::SEAL_PURPOSE)
}

async fn read_record(store: &Store) -> anyhow::Result<Option<(RotationRecord, u64)>> {
    let found = store
        .read(Consistency::Default, |v| {
            v.get(&SECURITY, KEY_ROTATION)
                .map(|e| (e.value.clone(), e.modify_index))
        })
        .await?;
    match found {
        Some((bytes, index)) => Ok(Some((serde_json::from_slice(&bytes)?, index))),
        None => Ok(None),
    }
}

/// The trust phase of a rotation with `overlap`: a quarter of it, within bounds.
fn trust_phase(overlap: Duration) -> Duration {
    (overlap / 4).clamp(MIN_TRUST_PHASE, MAX_TRUST_PHASE)
}

/// Starts a rotation (`POST /api/v1/ca/rotate`). Refused while another one is under way.
pub async fn rotate(
    join: &JoinService,
    store: &Store,
    overlap: Duration,
) -> Result<CaRotated, HttpError> {
    if overlap < MIN_OVERLAP {
        return Err(HttpError::invalid(format!(
            "overlap must be at least {}: every server and agent needs time to learn the new CA and renew",
            humantime::format_duration(MIN_OVERLAP)
        )));
    }
    if overlap > pier_security::ca::NODE_VALIDITY {
        return Err(HttpError::invalid(
            "overlap must not exceed the 90-day life of a node certificate",
        ));
    }
    let internal = |e: anyhow::Error| HttpError::new(ErrorCode::Internal, format!("{e:#}"));
    let now = pier_api::time::now_secs();
    let seal = seal_key(join);
    let existing = read_record(store).await.map_err(internal)?;
    let (old, generation, cas) = match &existing {
        Some((rec, _)) if now < rec.old_dropped_at => {
            return Err(HttpError::new(
                ErrorCode::Conflict,
                format!(
                    "a CA rotation is under way until unix time {} (`pier ca status`); rotate again after it",
                    rec.old_dropped_at
                ),
            ))
        }
        Some((rec, index)) => {
            let key = seal
                .open(&rec.new_key_sealed, SEAL_CONTEXT_NEW)
                .map_err(|e| internal(e.into()))?;
            let key = String::from_utf8(key).map_err(|e| internal(e.into()))?;
            let ca = ClusterCa::from_pem(&rec.new_cert_pem, &key).map_err(|e| internal(e.into()))?;
            (ca, rec.generation + 1, *index)
        }
        None => match join.ca.load().as_ref() {
            Some(ca) => (ca.clone(), 1, 0),
            None => {
                return Err(HttpError::new(
                    ErrorCode::Unavailable,
                    "this server does not hold the CA key yet; ask another server",
                ))
            }
        },
    };
    let new = ClusterCa::generate(now).map_err(|e| internal(e.into()))?;
    let rec = RotationRecord {
        generation,
        new_cert_pem: new.cert_pem().to_string(),
        new_key_sealed: seal.seal(new.key_pem().as_bytes(), SEAL_CONTEXT_NEW),
        old_cert_pem: old.cert_pem().to_string(),
        old_key_sealed: seal.seal(old.key_pem().as_bytes(), SEAL_CONTEXT_OLD),
        started_at: now,
        switch_at: now + trust_phase(overlap).as_secs(),
        old_dropped_at: now + overlap.as_secs(),
    };
    let bytes = serde_json::to_vec(&rec).map_err(|e| internal(e.into()))?;
    let put = Op::put_cas(SECURITY, KEY_ROTATION, bytes, cas);
    if !store.write(Txn::single(put)).await?.applied {
        return Err(HttpError::new(
            ErrorCode::Conflict,
            "another CA rotation started at the same moment; see `pier ca status`",
        ));
    }
    tracing::info!(
        new = %new.fingerprint(),
        old = %old.fingerprint(),
        switch_at = rec.switch_at,
        old_dropped_at = rec.old_dropped_at,
        "CA rotation started"
    );
    let fp = new.fingerprint();
    Ok(CaRotated {
        rotation: rec.info(),
        server_token: JoinToken::new(Some(fp.clone()), join.server_secret.clone()).to_string(),
        agent_token: join
            .agent_secret
            .load()
            .as_ref()
            .as_ref()
            .map(|s| JoinToken::new(Some(fp), s.clone()).to_string()),
    })
}

/// `GET /api/v1/ca`.
pub async fn status(join: &JoinService, store: &Store) -> Result<CaStatus, HttpError> {
    let bundle = join.bundle.load_full();
    let rotation = read_record(store)
        .await
        .map_err(|e| HttpError::new(ErrorCode::Internal, format!("{e:#}")))?
        .map(|(rec, _)| rec.info());
    let trusted = fingerprints_pem(&bundle);
    Ok(CaStatus {
        active_fingerprint: trusted.first().cloned().unwrap_or_default(),
        trusted_fingerprints: trusted,
        rotation,
    })
}

/// Brings this server in step with the rotation record, if there is one: the CA it signs
/// with, the bundle it trusts (listeners and clients rebuilt), the files in `DATA_DIR/tls/`
/// and the join tokens there. Returns false when no rotation ever happened.
pub async fn apply(
    sec: &ServerSecurity,
    store: &Store,
    internal: &pier_net::HttpClient,
) -> anyhow::Result<bool> {
    let Some((rec, _)) = read_record(store).await? else {
        return Ok(false);
    };
    let view = rec.view(pier_api::time::now_secs());
    let active_fp = fingerprint_pem(view.cert_pem)?;
    let current_fp = sec
        .join
        .ca
        .load()
        .as_ref()
        .as_ref()
        .map(|c| c.fingerprint());
    if current_fp.as_deref() != Some(active_fp.as_str()) {
        let key = String::from_utf8(seal_key(&sec.join).open(view.key_sealed, view.key_context)?)?;
        let ca = ClusterCa::from_pem(view.cert_pem, &key)?;
        sec.dir.write(files::CA_KEY, &key, 0o600)?;
        sec.join.ca.store(Arc::new(Some(ca)));
        tracing::info!(ca = %active_fp, "signing with CA {active_fp} from now on");
    }
    if sec.join.bundle.load().as_str() != view.bundle {
        sec.dir.write(files::CA_CERT, &view.bundle, 0o644)?;
        sec.join.bundle.store(Arc::new(view.bundle.clone()));
        rewrite_tokens(sec, &active_fp)?;
        // The same certificate, trusting the new bundle on both listeners and every client.
        super::server::install(sec, store, internal, sec.node.load().as_ref().clone())?;
        tracing::info!(
            trusted = ?fingerprints_pem(&view.bundle),
            "trust bundle changed (CA rotation)"
        );
    }
    Ok(true)
}

/// The join token files pin the CA that signs now (the secrets do not change).
fn rewrite_tokens(sec: &ServerSecurity, active_fp: &str) -> anyhow::Result<()> {
    let server = JoinToken::new(Some(active_fp.to_string()), sec.join.server_secret.clone());
    sec.dir
        .write(files::SERVER_TOKEN, &server.to_string(), 0o600)?;
    if let Some(agent) = sec.join.agent_secret.load().as_ref() {
        let agent = JoinToken::new(Some(active_fp.to_string()), agent.clone());
        sec.dir
            .write(files::AGENT_TOKEN, &agent.to_string(), 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_trusts_first_then_signs_then_drops() {
        let old = ClusterCa::generate(1000).unwrap();
        let new = ClusterCa::generate(1000).unwrap();
        let rec = RotationRecord {
            generation: 1,
            new_cert_pem: new.cert_pem().into(),
            new_key_sealed: "n".into(),
            old_cert_pem: old.cert_pem().into(),
            old_key_sealed: "o".into(),
            started_at: 1000,
            switch_at: 1015,
            old_dropped_at: 1045,
        };
        let fps = |now| fingerprints_pem(&rec.view(now).bundle);
        assert_eq!(rec.view(1000).key_sealed, "o");
        assert_eq!(fps(1000), vec![old.fingerprint(), new.fingerprint()]);
        assert_eq!(rec.view(1015).key_sealed, "n");
        assert_eq!(fps(1015), vec![new.fingerprint(), old.fingerprint()]);
        assert_eq!(fps(1045), vec![new.fingerprint()]);
        assert_eq!(trust_phase(Duration::from_secs(45)).as_secs(), 15);
        assert_eq!(trust_phase(Duration::from_secs(86_400)).as_secs(), 3600);
    }
}
