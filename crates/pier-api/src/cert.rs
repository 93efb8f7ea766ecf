//! Gateway TLS certificates: `pier cert add|ls|rm`.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/certs`: a provided certificate for `host`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertAddRequest {
    /// Lower-case host name (`*.example.com` for a wildcard).
    pub host: String,
    /// PEM chain, leaf first.
    pub cert_pem: String,
    /// PEM private key of the leaf.
    pub key_pem: String,
}

/// One stored certificate as `GET /api/v1/certs` shows it: never the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertView {
    pub host: String,
    /// Names the certificate covers.
    pub names: Vec<String>,
    pub issuer: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// `provided` (`pier cert add`) or `acme` (`tls = "acme"` routes; a host whose first
    /// order has not succeeded yet is listed with no names, expiry 0 and its last error).
    pub source: String,
    /// Whether the private key is sealed in the store (a secure cluster) or stored as given.
    pub key_sealed: bool,
    pub added_at_ms: u64,
    /// The last problem with this certificate (e.g. a key that no longer opens), if any.
    pub last_error: Option<String>,
}

/// `GET /api/v1/gateway/certs`: what a standalone `pier gateway` serves, keys included (so
/// only for management tokens; the answer carries `X-Pier-Index` for blocking reads).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertMaterial {
    pub host: String,
    pub cert_pem: String,
    pub key_pem: String,
}
