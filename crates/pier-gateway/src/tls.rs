//! TLS termination: certificates per host name, picked by SNI from a map that
//! whoever follows the store swaps whole ([`CertResolver::replace`]), so a new
//! certificate is used by the next handshake and no connection is touched.
//!
//! Lookup order for a client's SNI name: the exact name, then a wildcard one
//! label up (`*.example.com` for `a.example.com`), then the on-demand issuer
//! if one is set (`pier dev`'s local CA for `*.localhost`).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::challenge::{AcmeChallenges, ACME_TLS_ALPN};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the PEM text")]
    NoCertificate,
    #[error("cannot read the certificate PEM: {0}")]
    CertPem(String),
    #[error("no private key found in the PEM text (PKCS#8, PKCS#1 or SEC1 expected)")]
    NoKey,
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("cannot parse the certificate: {0}")]
    BadCert(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("the certificate does not cover {host} (it names {names})")]
    NotCovered { host: String, names: String },
}

/// What a certificate says about itself, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names of the subject alternative names (the common name if none).
    pub names: Vec<String>,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Whether one of the names covers `host` (a wildcard covers one label).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(base) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
                None => n == host,
            }
        })
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Parses a PEM chain (leaf first) and its private key, checks that they
/// belong together, and reads the leaf's names, issuer and expiry.
pub fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem(e.to_string()))?;
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let info = cert_info(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        other => TlsError::BadKey(other.to_string()),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| TlsError::KeyMismatch)?;
    Ok((Arc::new(ck), info))
}

/// A TLS-ALPN-01 validation certificate and its key, for
/// [`AcmeChallenges::replace_tls_alpn`]. Not checked as [`certified_key`] does: webpki
/// refuses to parse a certificate with an unknown critical extension, and the
/// `acmeIdentifier` one is critical by definition (RFC 8737); the certificate is only shown
/// to the CA's validator, which reads it itself.
pub fn acme_validation_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        other => TlsError::BadKey(other.to_string()),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| TlsError::BadCert(e.to_string()))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
        );
    }
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Makes certificates on demand for names no stored certificate covers.
pub trait OnDemandIssuer: Send + Sync {
    /// A certificate for `host`, or None when this issuer does not serve it.
    fn issue(&self, host: &str) -> Option<Arc<CertifiedKey>>;
}

/// Picks a certificate by SNI. Cheap to share; swap the whole map with
/// [`CertResolver::replace`].
pub struct CertResolver {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    on_demand: Option<Box<dyn OnDemandIssuer>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("hosts", &self.certs.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(on_demand: Option<Box<dyn OnDemandIssuer>>) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            certs: ArcSwap::from_pointee(HashMap::new()),
            on_demand,
        })
    }

    /// Replaces every stored certificate; host names in lower case
    /// (`*.example.com` for a wildcard).
    pub fn replace(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        self.certs.store(Arc::new(certs));
    }

    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let certs = self.certs.load();
        if let Some(ck) = certs.get(&name) {
            return Some(Arc::clone(ck));
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = certs.get(&format!("*.{parent}")) {
                return Some(Arc::clone(ck));
            }
        }
        self.on_demand.as_ref()?.issue(&name)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (a client connecting by IP address) there is no name to
        // pick by: the handshake fails rather than showing another host's
        // certificate.
        self.lookup(hello.server_name()?)
    }
}

/// The HTTPS listener's resolver: `certs` for ordinary handshakes, and with `acme` the
/// TLS-ALPN-01 validation certificates for handshakes that offer only `acme-tls/1`.
#[derive(Debug)]
struct ListenerResolver {
    certs: Arc<CertResolver>,
    acme: Option<Arc<AcmeChallenges>>,
}

/// Whether a ClientHello is an ACME TLS-ALPN-01 validation: RFC 8737 has the validator offer
/// `acme-tls/1` alone. A client that also offers h2 or http/1.1 gets one of those (the server
/// picks by its own order) and so an ordinary certificate.
fn is_acme_validation(hello: &ClientHello<'_>) -> bool {
    let Some(mut protocols) = hello.alpn() else {
        return false;
    };
    let (mut acme, mut other) = (false, false);
    for p in &mut protocols {
        if p == ACME_TLS_ALPN {
            acme = true;
        } else if p == b"h2" || p == b"http/1.1" {
            other = true;
        }
    }
    acme && !other
}

impl ResolvesServerCert for ListenerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_validation(&hello) {
            // Only a pending challenge's certificate: an ordinary one would make the
            // validation fail later and less clearly.
            return self.acme.as_ref()?.tls_alpn_cert(hello.server_name()?);
        }
        self.certs.resolve(hello)
    }
}

/// The HTTPS listener's configuration: certificates from `resolver`, HTTP/2
/// and HTTP/1.1 offered by ALPN (HTTP/2 preferred), and with `acme` also
/// `acme-tls/1`, answered with the pending TLS-ALPN-01 challenges' certificates.
pub fn server_config(
    resolver: Arc<CertResolver>,
    acme: Option<Arc<AcmeChallenges>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme.is_some() {
        alpn.push(ACME_TLS_ALPN.to_vec());
    }
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ListenerResolver {
            certs: resolver,
            acme,
        }));
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(names: &[&str]) -> CertInfo {
        CertInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            issuer: String::new(),
            not_after: 0,
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        let w = info(&["*.example.com"]);
        assert!(w.covers("a.example.com"));
        assert!(w.covers("A.Example.COM"));
        assert!(!w.covers("example.com"));
        assert!(!w.covers("a.b.example.com"));
        assert!(info(&["shop.example.com"]).covers("shop.example.com"));
        assert!(!info(&["shop.example.com"]).covers("x.example.com"));
    }
}
