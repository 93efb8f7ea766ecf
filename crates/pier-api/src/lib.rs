//! Wire types shared by pier's servers, agents and CLI. Everything here is a
//! serde type that crosses a process boundary (HTTP bodies, files on disk that
//! users write); internal types elsewhere are deliberately not serialisable.

pub mod cert;
pub mod error;
pub mod kv;
pub mod pipeline;
pub mod secret;
pub mod security;
pub mod service;
pub mod status;
pub mod time;

pub use error::{ApiError, ErrorCode};
