//! The catalog's one error type. HTTP handlers map it to a status code: `BadRequest` → 400 with
//! the message as plain text (Consul style), `NotFound` → 404, store unavailability → 503.

use pier_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The caller sent something invalid; nothing was written.
    #[error("{0}")]
    BadRequest(String),

    /// The named node, instance, check or key does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The request contradicts what another service owns (a route host); nothing was written.
    #[error("{0}")]
    Conflict(String),

    /// A stored record does not decode; written by an incompatible version or corrupted.
    #[error("stored record {table}/{key} does not decode: {detail}")]
    CorruptRecord {
        table: String,
        key: String,
        detail: String,
    },

    /// The leader could not be reached to forward a heartbeat.
    #[error("cannot forward to the leader at {addr}: {detail}")]
    Forward { addr: String, detail: String },

    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CatalogError {
    pub(crate) fn bad(msg: impl Into<String>) -> CatalogError {
        CatalogError::BadRequest(msg.into())
    }
}
