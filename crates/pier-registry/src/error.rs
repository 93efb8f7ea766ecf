//! The registry's error type. Every client-caused variant maps to one of the
//! distribution spec's error codes (see `api::errors`); the rest are server
//! faults and answer 500.

use crate::digest::DigestError;
use crate::index::IndexError;
use crate::manifest::ManifestError;
use crate::names::NameError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references unknown blobs or manifests: {}", .0.join(", "))]
    ManifestBlobUnknown(Vec<String>),
    #[error(transparent)]
    ManifestInvalid(#[from] ManifestError),
    #[error("manifest unknown to registry: {0}")]
    ManifestUnknown(String),
    #[error(transparent)]
    NameInvalid(#[from] NameError),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("manifest of {size} bytes is over the limit of {limit} bytes")]
    ManifestTooLarge { size: u64, limit: u64 },
    /// An upload chunk that does not start where the upload ends (416).
    #[error("chunk starts at {start}, but the upload holds {size} bytes")]
    ChunkOutOfOrder { start: u64, size: u64 },
    /// A blob `Range` request outside the blob (416).
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("client body: {0}")]
    ClientBody(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::DigestInvalid(e.to_string())
    }
}
