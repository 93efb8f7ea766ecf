//! The registry listener's TLS with a certificate the operator provides
//! (`pier server --registry-cert F --registry-key F`), for clients that trust a CA of the
//! operator's rather than the cluster's.
//!
//! A client that names a host the operator's certificate covers (SNI) gets that certificate;
//! every other handshake (agents and servers reach the registry by address, so they send no
//! name) gets the server's cluster certificate, with the cluster's client-certificate
//! verification unchanged. Level-triggered: every [`POLL`] (and on SIGHUP) the files are read
//! again when they changed, and the configuration is derived again when the cluster one
//! changed (renewal, CA rotation). A bad new pair is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files' modification times and the cluster configuration are looked at.
const POLL: Duration = Duration::from_secs(2);

/// The operator's certificate chain and key files.
#[derive(Clone, Debug)]
pub struct OperatorCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded operator certificate.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    info: pier_gateway::CertInfo,
}

/// Reads and checks the pair: both parse, the key is the certificate's, it has not expired.
fn load(files: &OperatorCertFiles) -> anyhow::Result<Loaded> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let (chain, key) = (read(&files.cert)?, read(&files.key)?);
    let (key, info) = pier_gateway::certified_key(&chain, &key).with_context(|| {
        format!(
            "--registry-cert {} with --registry-key {}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    let now = i64::try_from(pier_api::time::now_secs()).unwrap_or(i64::MAX);
    if info.not_after <= now {
        anyhow::bail!(
            "--registry-cert {} expired {} s ago (not after {} Unix time): give a current one",
            files.cert.display(),
            now - info.not_after,
            info.not_after
        );
    }
    Ok(Loaded { key, info })
}

/// Whether the pair can be served (see [`load`]): for a clear error before anything starts.
pub fn check(files: &OperatorCertFiles) -> anyhow::Result<()> {
    load(files).map(|_| ())
}

#[derive(Debug)]
struct SniResolver {
    operator: Arc<CertifiedKey>,
    covers: pier_gateway::CertInfo,
    /// The cluster certificate's resolver.
    cluster: Arc<dyn ResolvesServerCert>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name().is_some_and(|n| self.covers.covers(n)) {
            Some(Arc::clone(&self.operator))
        } else {
            self.cluster.resolve(hello)
        }
    }
}

/// The listener configuration: the cluster's, with the operator's certificate for the names it
/// covers.
fn derive(cluster: &rustls::ServerConfig, op: &Loaded) -> Arc<rustls::ServerConfig> {
    let mut config = cluster.clone();
    config.cert_resolver = Arc::new(SniResolver {
        operator: Arc::clone(&op.key),
        covers: op.info.clone(),
        cluster: Arc::clone(&cluster.cert_resolver),
    });
    Arc::new(config)
}

fn modified(files: &OperatorCertFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// Checks the pair now (an error stops the server from starting), and returns the registry
/// listener's TLS (derived from `cluster`, the server's API listener configuration), kept
/// current by a task until the process ends.
pub fn start(
    files: OperatorCertFiles,
    cluster: pier_net::ServerTls,
) -> anyhow::Result<pier_net::ServerTls> {
    let mut op = load(&files)?;
    tracing::info!(names = ?op.info.names, not_after = op.info.not_after, "registry serves the operator's certificate");
    let base = cluster.load_full();
    let tls = pier_net::server_tls(derive(&base, &op));
    let out = Arc::clone(&tls);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        let (mut seen_files, mut seen_base) = (modified(&files), base);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = hangup.recv() => seen_files = None,
            }
            let now_files = modified(&files);
            let now_base = cluster.load_full();
            let files_changed = now_files != seen_files;
            if !files_changed && Arc::ptr_eq(&now_base, &seen_base) {
                continue;
            }
            if files_changed {
                match load(&files) {
                    Ok(new) => {
                        tracing::info!(names = ?new.info.names, not_after = new.info.not_after, "registry certificate reloaded");
                        op = new;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "registry certificate not reloaded; keeping the one in use")
                    }
                }
            }
            tls.store(derive(&now_base, &op));
            (seen_files, seen_base) = (now_files, now_base);
        }
    });
    Ok(out)
}
