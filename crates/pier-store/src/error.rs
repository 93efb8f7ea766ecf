//! The one error type of the store.

use std::path::PathBuf;

/// Everything that can go wrong in the store, worded for the person who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller sent something the store refuses to write; nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// No leader could be reached within the time allowed.
    #[error(
        "no raft leader reachable: {0}; check that a majority of the servers are running and can reach \
         each other's raft addresses, or wait for an election to finish"
    )]
    NoLeader(String),

    /// The operation did not finish in time; for a write the outcome may be unknown.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A file of the store could not be read or written.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The data directory holds something the store cannot use.
    #[error(
        "data in {} is corrupt or not a pier-store data directory: {detail}; move the directory away to \
         start this server fresh (it will re-sync from the cluster), or restore it from a backup",
        path.display()
    )]
    CorruptData { path: PathBuf, detail: String },

    /// A stored value could not be decoded as the type a typed table expects.
    #[error("value at {table}/{key} does not decode as the expected type: {detail}")]
    Decode {
        table: String,
        key: String,
        detail: String,
    },

    /// Raft or the peer RPC layer reported an error.
    #[error("raft: {0}")]
    Raft(String),

    /// The store has been shut down.
    #[error("the store is shut down")]
    Shutdown,
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        StoreError::CorruptData {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
