//! The crate's error type, and its mapping to pier's JSON API errors.

use pier_api::{ApiError, ErrorCode};
use pier_store::StoreError;

use crate::definition::DefinitionError;
use crate::git::GitError;
use crate::service_file::ServiceFileError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no pipeline named {0:?}")]
    NotFound(String),
    #[error("pipeline {0} has no run {1}")]
    RunNotFound(String, u64),
    #[error("a pipeline named {0:?} already exists; remove it first or pick another name")]
    Exists(String),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    ServiceFile(#[from] ServiceFileError),
    #[error("{0}")]
    Invalid(String),
    #[error("the store kept changing under this update; try again")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PipelineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PipelineError::NotFound(_) | PipelineError::RunNotFound(..) => ErrorCode::NotFound,
            PipelineError::Exists(_) | PipelineError::Contended => ErrorCode::Conflict,
            PipelineError::Definition(_)
            | PipelineError::Git(_)
            | PipelineError::ServiceFile(_)
            | PipelineError::Invalid(_) => ErrorCode::InvalidInput,
            PipelineError::Store(e) => match e {
                StoreError::InvalidInput(_) => ErrorCode::InvalidInput,
                StoreError::NoLeader(_) => ErrorCode::NoLeader,
                StoreError::Timeout(_) => ErrorCode::Timeout,
                StoreError::Shutdown => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            },
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}
