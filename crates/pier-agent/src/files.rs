//! A task's `[files]`: rendered from their templates before the container is created, then
//! rendered again whenever what they read changes, and the worker told what to do then
//! (restart, a signal, nothing).
//!
//! Files live in `<secrets dir>/<task>.files/<i>/`, one host directory per distinct directory
//! of the task's files (`ServiceSpec::file_dirs`), bind-mounted read-only at that directory:
//! a changed file is written to a temporary file, fsynced and renamed over the old one, and
//! the container sees the new file at once. (A bind mount of the file itself would keep
//! showing the old inode after the rename.)
//!
//! Watching uses the servers' blocking queries, one per dependency (`/v1/health/service/:name`
//! and `/v1/kv/:key`, the catalog's own): each answer updates the shared values and wakes the
//! renderer, which renders every file and compares it with what is on disk (level-triggered:
//! a lost wake-up costs nothing, the next one renders the same truth).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_api::service::template::{Dependency, Instance, Template, TemplateData};
use pier_api::service::{FileSpec, OnChange, ServiceSpec};
use tokio::sync::{mpsc, Notify};

use crate::client::{ClientError, ServerClient};

/// How long one blocking read waits on the server before it is asked again.
const WATCH_WAIT_MS: u64 = 60_000;
/// Pause after a failed read (server unreachable, say) before the next attempt.
const RETRY_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("[files] {path:?}: {message}")]
    Template { path: String, message: String },
    #[error("cannot write the rendered file {path:?} under {dir}: {source}")]
    Io {
        path: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("cannot read {dependency} for the task's [files]: {error}")]
    Fetch {
        dependency: String,
        error: ClientError,
    },
}

/// The parsed templates of one task and where their files go on the host.
pub struct TaskFiles {
    files: Vec<(FileSpec, Template)>,
    /// The container directory of each host subdirectory `<root>/<i>`.
    dirs: Vec<String>,
    root: PathBuf,
    node: String,
}

impl TaskFiles {
    /// None when the service has no `[files]`.
    pub fn new(
        spec: &ServiceSpec,
        root: PathBuf,
        node: &str,
    ) -> Result<Option<TaskFiles>, FilesError> {
        if spec.files.is_empty() {
            return Ok(None);
        }
        let mut files = Vec::new();
        for f in &spec.files {
            // Validated at deploy; parsed again here because revisions are data.
            let t = Template::parse(&f.template).map_err(|e| FilesError::Template {
                path: f.path.clone(),
                message: e.to_string(),
            })?;
            files.push((f.clone(), t));
        }
        Ok(Some(TaskFiles {
            files,
            dirs: spec.file_dirs(),
            root,
            node: node.to_string(),
        }))
    }

    /// Everything the task's templates read.
    pub fn dependencies(&self) -> BTreeSet<Dependency> {
        self.files
            .iter()
            .flat_map(|(_, t)| t.dependencies())
            .collect()
    }

    /// The binds of the container: each host directory, read-only, at its directory.
    pub fn binds(&self) -> Vec<String> {
        self.dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| format!("{}:{dir}:ro", self.root.join(i.to_string()).display()))
            .collect()
    }

    fn host_path(&self, f: &FileSpec) -> PathBuf {
        let i = self.dirs.iter().position(|d| d == f.dir()).unwrap_or(0);
        self.root.join(i.to_string()).join(f.file_name())
    }

    /// Renders every file for `data` and replaces those whose content differs from the disk.
    /// Returns what to do for each file that changed. A file that cannot be rendered keeps
    /// its last content (the error says which).
    pub fn write(&self, data: &TemplateData) -> Result<Vec<OnChange>, FilesError> {
        let io = |path: &str, source: std::io::Error| FilesError::Io {
            path: path.to_string(),
            dir: self.root.display().to_string(),
            source,
        };
        for i in 0..self.dirs.len() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(self.root.join(i.to_string()))
                .map_err(|e| io("", e))?;
        }
        let mut changed = Vec::new();
        let mut first_error = None;
        for (f, t) in &self.files {
            let text = match t.render(data) {
                Ok(text) => text,
                Err(e) => {
                    first_error.get_or_insert(FilesError::Template {
                        path: f.path.clone(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let path = self.host_path(f);
            if std::fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
                continue;
            }
            replace(&path, text.as_bytes()).map_err(|e| io(&f.path, e))?;
            changed.push(f.on_change.clone());
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

/// temp file → fsync → rename → fsync of the directory: a reader sees the old or the new
/// file, never a part.
fn replace(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.pier-tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The value one dependency had at `index`.
enum Value {
    Instances(Vec<Instance>),
    Key(Option<String>),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    node: String,
    address: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

/// One read of `dep`; blocks until its index moves past `index` (None: answers at once).
async fn fetch(
    client: &ServerClient,
    dep: &Dependency,
    here: &str,
    index: Option<u64>,
    wait_ms: u64,
) -> Result<(u64, Value), ClientError> {
    match dep {
        Dependency::Service(name) => {
            let answer = client
                .blocking_read(&["health", "service", name], "passing=1", index, wait_ms)
                .await?;
            let entries: Vec<HealthEntry> = match &answer.body {
                Some(body) => {
                    serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))?
                }
                None => Vec::new(),
            };
            let instances = entries
                .into_iter()
                .filter_map(|e| {
                    let address = if e.service.address.is_empty() {
                        &e.node.address
                    } else {
                        &e.service.address
                    };
                    let network = e
                        .service
                        .meta
                        .as_ref()
                        .and_then(|m| m.get(pier_api::service::template::NETWORK_ADDR_META));
                    let at = pier_api::service::template::reachable_from(
                        here,
                        &e.node.node,
                        network.map(String::as_str),
                        address,
                        e.service.port,
                    )?;
                    Some(Instance {
                        address: at.ip().to_string(),
                        port: at.port(),
                        id: e.service.id,
                        node: e.node.node,
                    })
                })
                .collect();
            Ok((answer.index, Value::Instances(instances)))
        }
        Dependency::Key(key) => {
            let segments: Vec<&str> = std::iter::once("kv").chain(key.split('/')).collect();
            let answer = client
                .blocking_read(&segments, "raw=1", index, wait_ms)
                .await?;
            let value = answer
                .body
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            Ok((answer.index, Value::Key(value)))
        }
    }
}

fn apply(data: &mut TemplateData, dep: &Dependency, value: Value) {
    match (dep, value) {
        (Dependency::Service(name), Value::Instances(list)) => {
            data.services.insert(name.clone(), list);
        }
        (Dependency::Key(key), Value::Key(Some(v))) => {
            data.keys.insert(key.clone(), v);
        }
        (Dependency::Key(key), Value::Key(None)) => {
            data.keys.remove(key);
        }
        _ => {}
    }
}

/// Every dependency read once (no waiting): the data of the first render.
pub async fn fetch_all(
    client: &ServerClient,
    files: &TaskFiles,
) -> Result<TemplateData, FilesError> {
    let mut data = TemplateData::default();
    for dep in files.dependencies() {
        let (_, value) = fetch(client, &dep, &files.node, None, 0)
            .await
            .map_err(|error| FilesError::Fetch {
                dependency: dep.to_string(),
                error,
            })?;
        apply(&mut data, &dep, value);
    }
    Ok(data)
}

/// What the followers of one task's dependencies have read so far.
#[derive(Default)]
struct Seen {
    data: TemplateData,
    read: BTreeSet<Dependency>,
}

/// Follows one dependency with blocking reads, for ever, updating `seen` and waking the
/// renderer on every answer.
async fn follow(
    client: ServerClient,
    dep: Dependency,
    here: String,
    seen: Arc<Mutex<Seen>>,
    wake: Arc<Notify>,
) {
    let mut index: Option<u64> = None;
    loop {
        match fetch(&client, &dep, &here, index, WATCH_WAIT_MS).await {
            Ok((new_index, value)) => {
                // An index that went backwards (a restored snapshot, another server) starts
                // over with a read that answers at once, as Consul's clients do.
                index = match index {
                    Some(old) if new_index < old => None,
                    _ => Some(new_index),
                };
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                apply(&mut s.data, &dep, value);
                s.read.insert(dep.clone());
                drop(s);
                wake.notify_one();
            }
            Err(ClientError::Switched(_)) => index = None,
            Err(e) => {
                tracing::debug!(dependency = %dep, error = %e, "cannot follow a template dependency; retrying");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    }
}

/// Keeps the task's files rendered until dropped (aborted): every change of a dependency
/// renders them again, and the `on_change` of the files that changed is sent to the worker.
pub async fn watch(
    files: Arc<TaskFiles>,
    client: ServerClient,
    task: String,
    changes: mpsc::Sender<Vec<OnChange>>,
) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let wake = Arc::new(Notify::new());
    let deps = files.dependencies();
    // Dropped with this future: the followers end with it.
    let mut followers = tokio::task::JoinSet::new();
    for dep in deps.iter().cloned() {
        followers.spawn(follow(
            client.clone(),
            dep,
            files.node.clone(),
            seen.clone(),
            wake.clone(),
        ));
    }
    if deps.is_empty() {
        // Nothing to follow: the files were rendered before the container was created.
        return std::future::pending().await;
    }
    loop {
        wake.notified().await;
        let data = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            // Only once every dependency has been read: a partial view would render a
            // service as having no instance and restart the task for nothing.
            if s.read.len() < deps.len() {
                continue;
            }
            s.data.clone()
        };
        match files.write(&data) {
            Ok(changed) if changed.is_empty() => {}
            Ok(changed) => {
                tracing::info!(task = %task, files = changed.len(), "rendered files changed");
                if changes.send(changed).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(task = %task, error = %e, "cannot render the task's files; the last ones stay")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_written_per_directory_and_replaced_only_when_they_change() {
        let spec = pier_api::service::parse_service_file(
            "name = \"web\"\nimage = \"x\"\n[files]\n\"/etc/app/up.conf\" = '{{ service \"api\" }}'\n\"/etc/app/k\" = { template = '{{ key \"k\" }}', on_change = \"signal:HUP\" }\n\"/srv/static\" = { template = 'same', on_change = \"none\" }\n",
            Default::default(),
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t1.files");
        let files = TaskFiles::new(&spec, root.clone(), "n1").unwrap().unwrap();
        assert_eq!(
            files.binds(),
            vec![
                format!("{}:/etc/app:ro", root.join("0").display()),
                format!("{}:/srv:ro", root.join("1").display()),
            ]
        );
        let mut data = TemplateData::default();
        let first = files.write(&data).unwrap();
        assert_eq!(first.len(), 3, "every file is new");
        assert_eq!(std::fs::read_to_string(root.join("0/up.conf")).unwrap(), "");
        let meta = std::fs::metadata(root.join("1/static")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
        let inode = std::fs::metadata(root.join("0/up.conf")).unwrap().ino();
        assert!(files.write(&data).unwrap().is_empty(), "nothing changed");

        data.services.insert(
            "api".into(),
            vec![Instance {
                address: "10.1.0.5".into(),
                port: 8080,
                id: "api-1".into(),
                node: "n1".into(),
            }],
        );
        data.keys.insert("k".into(), "v2".into());
        let changed = files.write(&data).unwrap();
        assert_eq!(
            changed,
            vec![OnChange::Signal("SIGHUP".into()), OnChange::Restart]
        );
        assert_eq!(
            std::fs::read_to_string(root.join("0/up.conf")).unwrap(),
            "10.1.0.5:8080"
        );
        assert_ne!(
            std::fs::metadata(root.join("0/up.conf")).unwrap().ino(),
            inode,
            "replaced by rename, never rewritten in place"
        );
        let leftovers: Vec<_> = std::fs::read_dir(root.join("0"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("pier-tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // Too large to render: the last content stays, the error names the file.
        data.keys.insert("k".into(), "x".repeat(70 * 1024));
        let err = files.write(&data).unwrap_err().to_string();
        assert!(
            err.contains("/etc/app/k") && err.contains("64 KiB"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(root.join("0/k")).unwrap(), "v2");
    }
}
