//! Joining a secure cluster (`/pier/v1/ca`, `/pier/v1/join`, `/pier/v1/renew`), API tokens
//! (`/api/v1/acl/...`), join tokens (`/api/v1/tokens/...`) and the audit log.

use serde::{Deserialize, Serialize};

/// `GET /pier/v1/ca[?challenge=NONCE]`: the CA certificate(s), not trusted by the asker until
/// it has compared their hash with its join token. With a challenge (servers formed with a
/// shared bootstrap secret, whose token pins no CA yet), `proof` is
/// hex(HMAC-SHA256(secret, "pier-ca-proof:" NONCE ":" fingerprint)): only a holder of the
/// secret can answer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaResponse {
    pub ca_pem: String,
    #[serde(default)]
    pub proof: Option<String>,
}

/// `POST /pier/v1/join`, over TLS verified against the pinned CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// "server", "agent" or "gateway".
    pub role: String,
    pub name: String,
    pub csr_pem: String,
    /// The join token's secret.
    pub secret: String,
    /// Addresses (IPs or DNS names) the node is reached at, for its certificate.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The signed certificate and the CA bundle to trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}

/// `POST /pier/v1/renew` with the current certificate (mTLS): a new certificate for the same
/// identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `POST /api/v1/acl/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    #[serde(default)]
    pub description: String,
    /// Policies in their command-line form (`deploy:web*`, `read`, ...).
    pub policies: Vec<String>,
    /// Lifetime, e.g. "1h" (none: until revoked).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token as listings show it (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub accessor: String,
    pub description: String,
    pub policies: Vec<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

/// A token just made: the only time its secret is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub secret: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /api/v1/join-tokens`: a join token for servers, agents or gateways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJoinToken {
    /// "server", "agent" or "gateway".
    pub role: String,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: String,
    pub role: String,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedJoinToken {
    /// `PIER1.<CA hash>.<secret>`: shown once.
    pub token: String,
    #[serde(flatten)]
    pub info: JoinTokenInfo,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// `token:<accessor>`, `node:<role>/<name>`, `local` (pier dev) or `anonymous`.
    pub who: String,
    pub method: String,
    pub path: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// The server that served it.
    pub server: String,
}

/// `POST /api/v1/ca/rotate`: replace the cluster CA, trusting both for `overlap`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateCa {
    /// How long the old CA stays trusted (e.g. "24h").
    pub overlap: String,
}

/// Where a CA rotation stands. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotationInfo {
    /// Counts rotations: 1 after the first.
    pub generation: u64,
    /// SHA-256 of the new CA certificate.
    pub new_fingerprint: String,
    /// SHA-256 of the CA it replaces.
    pub old_fingerprint: String,
    pub started_at: u64,
    /// From here on every process signs with and renews to the new CA; until then both are
    /// only trusted, so every process has learnt the new CA before anyone presents it.
    pub switch_at: u64,
    /// The old CA leaves every trust bundle at this time.
    pub old_dropped_at: u64,
}

/// `GET /api/v1/ca`: the CA that signs now and every CA trusted now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    pub active_fingerprint: String,
    pub trusted_fingerprints: Vec<String>,
    #[serde(default)]
    pub rotation: Option<CaRotationInfo>,
}

/// The answer to a rotation: its schedule and the join tokens that pin the new CA (the
/// secrets are the same; only the CA hash changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotated {
    pub rotation: CaRotationInfo,
    pub server_token: String,
    #[serde(default)]
    pub agent_token: Option<String>,
}
