//! Pier's security core, free of IO and of any server: what the servers, agents, gateways and
//! the CLI need to authenticate each other and their users.
//!
//! * [`ca`]: the cluster certificate authority (made on a cluster's first start), node
//!   certificates signed from CSRs, and the node identity carried in every certificate
//!   (`spiffe://pier.cluster/<role>/<name>` as a URI SAN).
//! * [`token`]: join tokens pinned to the CA (`PIER1.<sha256 of the CA>.<secret>`).
//! * [`seal`]: AES-256-GCM with keys derived (HKDF-SHA256) from a secret, for what the store
//!   must keep but must not give away (the CA key, the cluster key, secrets).
//! * [`acl`]: API tokens (only their hashes are stored) and the policies they carry; one
//!   `allows` decision for every endpoint.
//! * [`jwt`]: the short-lived registry tokens of the Docker token auth spec.
//! * [`acme`]: the self-signed certificate answering an ACME TLS-ALPN-01 challenge.
//! * [`tls`]: rustls configurations for mTLS between pier processes and for HTTPS listeners.
//!
//! **Invariant:** nothing here touches the network, the disk or a clock: callers pass `now`.

pub mod acl;
pub mod acme;
pub mod ca;
mod error;
pub mod jwt;
pub mod local_ca;
pub mod seal;
pub mod tls;
pub mod token;

pub use error::SecurityError;
