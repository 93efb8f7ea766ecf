//! Secrets (`pier secret set|ls|rm`, `/api/v1/secrets`): what the API accepts and shows. A
//! secret's value goes in once (`PUT /api/v1/secrets/NAME`) and comes out only to the agent
//! of a node running a task that uses it (`GET /api/v1/nodes/NODE/tasks/ID/secrets`): no
//! listing, inspect or error message ever carries it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Where a task's secret files are mounted (each as `/run/secrets/NAME`).
pub const SECRETS_MOUNT: &str = "/run/secrets";

/// Whether `name` is a valid secret name: like a service name (1-63 of a-z, 0-9 and '-',
/// starting with a letter, not ending with '-'), so it is also a safe file name.
pub fn is_valid_secret_name(name: &str) -> bool {
    crate::service::is_valid_name(name)
}

/// Why a secret name or value is refused, in words for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretInputError {
    #[error("secret name {0:?} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'")]
    Name(String),
    #[error("the value of secret {name} is {size_bytes} bytes, above the limit of {max} bytes (64 KiB)", max = MAX_SECRET_BYTES)]
    TooLarge { name: String, size_bytes: usize },
    #[error("the value of secret {0} is empty")]
    Empty(String),
}

/// Checks a name and a value before anything is stored.
pub fn check_secret(name: &str, value: &[u8]) -> Result<(), SecretInputError> {
    if !is_valid_secret_name(name) {
        return Err(SecretInputError::Name(name.to_string()));
    }
    if value.is_empty() {
        return Err(SecretInputError::Empty(name.to_string()));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(SecretInputError::TooLarge {
            name: name.to_string(),
            size_bytes: value.len(),
        });
    }
    Ok(())
}

/// Body of `PUT /api/v1/secrets/NAME`: the value, base64 (standard alphabet, padded), so any
/// bytes can be a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecretRequest {
    pub value_base64: String,
}

impl fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SetSecretRequest { value_base64: (redacted) }")
    }
}

/// A secret as `pier secret ls` shows it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// 1 when created, +1 on every `set`.
    pub version: u64,
    pub size_bytes: u64,
    /// Whether the stored value is sealed (AES-256-GCM under a key derived from the server
    /// secret). False only in a cluster without one (`pier dev`, `--insecure`).
    pub sealed: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Services whose current revision uses it.
    pub used_by: Vec<String>,
}

/// Answer of `PUT /api/v1/secrets/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSecretResponse {
    pub secret: SecretInfo,
    /// `created`, `updated` or `unchanged` (the same value again).
    pub outcome: String,
    /// The services rolled to the new value: (service, new revision, deployment).
    pub rolled: Vec<super::service::DeployResponse>,
}

/// Answer of `GET /api/v1/nodes/NODE/tasks/ID/secrets`: the values the task's revision uses,
/// base64, by secret name. Only the task's own node may read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSecrets {
    pub values_base64: BTreeMap<String, String>,
}

impl fmt::Debug for TaskSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSecrets")
            .field("names", &self.values_base64.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes_are_checked() {
        assert!(check_secret("db-password", b"x").is_ok());
        for bad in ["", "DB", "1db", "db-", "db_password", "a/b", "../x"] {
            assert!(
                matches!(check_secret(bad, b"x"), Err(SecretInputError::Name(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_secret("db", b""),
            Err(SecretInputError::Empty("db".into()))
        );
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        let err = check_secret("db", &big).unwrap_err();
        assert!(err.to_string().contains("64 KiB"), "{err}");
        assert!(check_secret("db", &big[..MAX_SECRET_BYTES]).is_ok());
        let req = SetSecretRequest {
            value_base64: "c2VjcmV0".into(),
        };
        assert!(!format!("{req:?}").contains("c2VjcmV0"));
    }
}
