//! The orchestrator's wire types: the service file users write (`pier deploy hello.toml`),
//! its validated and normalised form (stored in every revision), and the records the
//! orchestrator keeps and serves (services, revisions, deployments, tasks, nodes).

mod env_file;
mod file;
mod records;
pub mod template;
mod units;
mod validate;

pub use env_file::{env_file_of, merge_env_file, parse_env_file, EnvFileError};
pub use file::ServiceFile;
pub use records::*;
pub use units::{format_duration_ms, parse_duration_ms, parse_memory_mb};
pub use validate::{
    is_clean_absolute_path, is_under, is_valid_name, parse_service_file, Amount, ConstraintOp,
    ConstraintSpec, DeploySpec, FileSpec, HealthKind, HealthSpec, Limits, OnChange, PlacementSpec,
    PlacementStrategy, ServiceSpec, SpecError, VolumeSpec, DEFAULT_MAX_COUNT,
    IMPLICIT_CHECK_INTERVAL_MS, MAX_FILES, MAX_TEMPLATE_BYTES,
};

/// Request extension set by the API's auth layer: whether the caller may see secret values
/// (a service's `env`). Handlers that return them redact when it is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretsVisible(pub bool);

/// Request extension set by the API's auth layer: whether the caller may read a KV key. A
/// service's `[files]` templates show the keys they read to whoever reads its containers, so
/// giving a service a template that reads a key takes read access to that key.
#[derive(Clone)]
pub struct KeysReadable(pub std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for KeysReadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeysReadable(..)")
    }
}
