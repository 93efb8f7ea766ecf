//! A task's secrets on this node: fetched from the servers just before its container is
//! created (only the task's own node may read them), given as environment variables or
//! written as files (mode 0400) into the task's own directory under the agent's secrets
//! directory — a tmpfs such as `/run/pier/secrets`, as Docker Swarm does — which is
//! bind-mounted read-only at `/run/secrets`. The directory is removed with the container.
//! Values are never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pier_api::service::ServiceSpec;

/// The default secrets directory: `/run/pier/secrets` (a tmpfs on most systems) when the
/// agent may write there, else the user's runtime directory, else the temp directory.
pub fn default_dir() -> PathBuf {
    let run = Path::new("/run");
    let writable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_dir())
            && std::fs::create_dir_all(p.join("pier")).is_ok()
    };
    if writable(run) {
        return run.join("pier/secrets");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("pier/secrets"),
        None => std::env::temp_dir().join("pier-secrets"),
    }
}

/// The suffix of a task's rendered-files directory beside its secrets directory (task ids
/// have no '.').
const FILES_SUFFIX: &str = ".files";

/// Why a task's secrets could not be put in place (never containing a value).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0} was not delivered by the server")]
    Missing(String),
    #[error("secret {secret} is not UTF-8 text, so it cannot be the environment variable {var}; mount it as a file (secret_files) instead")]
    NotText { secret: String, var: String },
    #[error("cannot write the secret files of task {task} under {dir}: {source}")]
    Io {
        task: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("cannot read the task's secrets from the server: {0}")]
    Fetch(String),
}

/// The agent's secrets directory.
#[derive(Clone, Debug)]
pub struct SecretsDir {
    root: PathBuf,
}

impl SecretsDir {
    pub fn new(root: PathBuf) -> SecretsDir {
        SecretsDir { root }
    }

    /// `<root>/<task id>`: the host side of the task's `/run/secrets` (the agent's root is
    /// `--secrets-dir/<node>`).
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    /// `<root>/<task id>.files`: the host side of the task's rendered `[files]` (see
    /// [`crate::files`]); removed with its secrets.
    pub fn files_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(format!("{task_id}{FILES_SUFFIX}"))
    }

    /// Writes the files of `spec.secret_files` for `task_id` (replacing any left from an
    /// earlier attempt) and returns the directory to mount.
    pub fn write_files(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
        values: &BTreeMap<String, Vec<u8>>,
    ) -> Result<PathBuf, SecretError> {
        let dir = self.task_dir(task_id);
        let io = |source: std::io::Error| SecretError::Io {
            task: task_id.to_string(),
            dir: dir.display().to_string(),
            source,
        };
        // Only root (the agent) may look into the directory of all tasks' secrets.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let owner = numeric_owner(spec.deploy.user.as_deref());
        for name in &spec.secret_files {
            let value = values
                .get(name)
                .ok_or_else(|| SecretError::Missing(name.clone()))?;
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(io)?;
            file.write_all(value).map_err(io)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), gid).map_err(io)?;
            }
        }
        // The container's user must be able to open files in it (it sees only this directory).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        Ok(dir)
    }

    /// Tasks with a secrets or rendered-files directory written more than `min_age` ago (a directory being
    /// prepared for a container not created yet is younger).
    pub fn tasks_older_than(&self, min_age: std::time::Duration) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|name| match name.strip_suffix(FILES_SUFFIX) {
                Some(task) => task.to_string(),
                None => name,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Removes the task's secret files and rendered files, if any.
    pub fn remove(&self, task_id: &str) {
        for dir in [self.task_dir(task_id), self.files_dir(task_id)] {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(task = %task_id, dir = %dir.display(), error = %e, "cannot remove a task's secret or rendered files");
                }
            }
        }
    }
}

/// `uid[:gid]` of a numeric `deploy.user`: secret files are given to it so a process that
/// does not run as root can read them. A user name is resolved inside the image, not here:
/// then the files stay root's.
fn numeric_owner(user: Option<&str>) -> Option<(u32, Option<u32>)> {
    let (uid, gid) = match user?.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user?, None),
    };
    let uid = uid.parse().ok()?;
    let gid = match gid {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid, gid))
}

/// The environment variables of `spec.secrets`.
pub fn env(
    spec: &ServiceSpec,
    values: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, String>, SecretError> {
    let mut out = BTreeMap::new();
    for (var, secret) in &spec.secrets {
        let value = values
            .get(secret)
            .ok_or_else(|| SecretError::Missing(secret.clone()))?;
        let text = String::from_utf8(value.clone()).map_err(|_| SecretError::NotText {
            secret: secret.clone(),
            var: var.clone(),
        })?;
        out.insert(var.clone(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spec() -> ServiceSpec {
        let mut spec = pier_api::service::parse_service_file(
            "name = \"web\"\nimage = \"x\"\nsecret_files = [\"tls-key\"]\n[secrets]\nDB_PASSWORD = \"db\"\n",
            Default::default(),
        )
        .unwrap();
        spec.deploy.user = Some("1234:5678".into());
        spec
    }

    #[test]
    fn files_are_0400_in_the_tasks_own_directory_and_removed_with_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = SecretsDir::new(root.path().join("secrets"));
        let values = BTreeMap::from([
            ("tls-key".to_string(), b"KEY".to_vec()),
            ("db".to_string(), b"pw".to_vec()),
        ]);
        let spec = spec();
        let task_dir = dir.write_files("t1", &spec, &values).unwrap();
        let file = task_dir.join("tls-key");
        assert_eq!(std::fs::read(&file).unwrap(), b"KEY");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o400);
        assert_eq!(
            (meta.uid(), meta.gid()),
            (1234, 5678),
            "given to deploy.user"
        );
        assert!(
            !task_dir.join("db").exists(),
            "env-only secrets are no files"
        );
        let root_mode = std::fs::metadata(root.path().join("secrets"))
            .unwrap()
            .mode();
        assert_eq!(root_mode & 0o777, 0o700);
        // A second attempt replaces the files.
        dir.write_files("t1", &spec, &values).unwrap();
        assert!(dir
            .tasks_older_than(std::time::Duration::from_secs(60))
            .is_empty());
        assert_eq!(dir.tasks_older_than(std::time::Duration::ZERO), vec!["t1"]);
        dir.remove("t1");
        assert!(!task_dir.exists());

        assert_eq!(
            env(&spec, &values).unwrap(),
            BTreeMap::from([("DB_PASSWORD".to_string(), "pw".to_string())])
        );
        let binary = BTreeMap::from([("db".to_string(), vec![0xff, 0xfe])]);
        let err = env(&spec, &binary).unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && !err.contains('\u{fffd}'),
            "{err}"
        );
        assert!(matches!(
            env(&spec, &BTreeMap::new()),
            Err(SecretError::Missing(_))
        ));
    }
}
