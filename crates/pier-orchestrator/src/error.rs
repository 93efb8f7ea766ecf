//! The orchestrator's error type, mapped to HTTP statuses by the API layer.

use pier_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{0}")]
    Unavailable(String),
}
