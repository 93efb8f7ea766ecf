//! Backups of the whole cluster state: `pier snapshot save|restore`, `GET /api/v1/snapshot`,
//! `POST /api/v1/snapshot/restore`, and the scheduled snapshots every server keeps in its data
//! directory.
//!
//! A snapshot is a tar archive: `pier-snapshot/meta.json` (format, time, index, size) and
//! `pier-snapshot/store.jsonl` (one line per key of every table: services, revisions,
//! deployments, tasks, nodes, catalog, KV, pipelines, registry metadata). It is read from
//! the store with a consistent read, so it is one point in the cluster's history.
//!
//! A restore writes every key back through Raft in bounded transactions (so it works on a
//! cluster of any size and replicates like any write); keys get new indexes, as they would in
//! any other cluster. It refuses a cluster that already holds services, KV or pipelines unless
//! forced, in which case the tables in the snapshot are emptied first.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use pier_store::{Consistency, Op, Store, Table, Txn};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "pier-snapshot/1";
const META_PATH: &str = "pier-snapshot/meta.json";
const STORE_PATH: &str = "pier-snapshot/store.jsonl";
/// Keys written per restore transaction, and the byte budget of one (the store's value limit
/// is 512 KiB, so one large value still fits).
const RESTORE_KEYS_PER_TXN: usize = 256;
const RESTORE_BYTES_PER_TXN: usize = 2 * 1024 * 1024;
/// Tables whose content means "this cluster is in use": a restore onto it must be forced.
const IN_USE_TABLES: [&str; 3] = ["orch.services", "kv", "pipelines"];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] pier_store::StoreError),
    #[error("the snapshot is not usable: {0}")]
    Invalid(String),
    #[error(
        "the cluster already holds {0}; restore onto a fresh cluster, or pass --force to replace what the snapshot covers"
    )]
    NotEmpty(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub format: String,
    pub created_at_ms: u64,
    /// Raft index of the state the snapshot holds.
    pub index: u64,
    pub keys: u64,
    pub server: String,
}

/// One key of one table, as a line of `store.jsonl`.
#[derive(Serialize, Deserialize)]
struct Line {
    t: String,
    k: String,
    /// Value, base64.
    v: String,
    #[serde(default)]
    f: u64,
}

use pier_api::time::now_ms;

/// The whole state as a tar archive, read with a consistent read.
pub async fn build(store: &Store, server: &str) -> Result<Vec<u8>, SnapshotError> {
    // Copy under the read lock (cheap), encode outside it so applies are not held up.
    let (index, rows) = store
        .read(Consistency::Consistent, |v| {
            let mut rows: Vec<(String, String, Vec<u8>, u64)> = Vec::new();
            for table in v.tables() {
                for (key, e) in v.range_prefix(table, "") {
                    rows.push((table.to_string(), key.to_string(), e.value.clone(), e.flags));
                }
            }
            (v.applied_index(), rows)
        })
        .await?;
    let mut jsonl = Vec::with_capacity(rows.len() * 128);
    for (t, k, value, f) in &rows {
        let line = Line {
            t: t.clone(),
            k: k.clone(),
            v: base64::engine::general_purpose::STANDARD.encode(value),
            f: *f,
        };
        serde_json::to_writer(&mut jsonl, &line)
            .map_err(|e| SnapshotError::Invalid(format!("encoding {t}/{k}: {e}")))?;
        jsonl.push(b'\n');
    }
    let meta = Meta {
        format: FORMAT.to_string(),
        created_at_ms: now_ms(),
        index,
        keys: rows.len() as u64,
        server: server.to_string(),
    };
    let meta_bytes = serde_json::to_vec_pretty(&meta)
        .map_err(|e| SnapshotError::Invalid(format!("encoding meta: {e}")))?;
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, META_PATH, &meta_bytes, meta.created_at_ms)?;
    append(&mut tar, STORE_PATH, &jsonl, meta.created_at_ms)?;
    tar.into_inner().map_err(|e| SnapshotError::Io {
        path: "snapshot archive".into(),
        source: e,
    })
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
    mtime_ms: u64,
) -> Result<(), SnapshotError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(mtime_ms / 1000);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes)
        .map_err(|e| SnapshotError::Io {
            path: path.to_string(),
            source: e,
        })
}

/// The parts of an archive a restore needs.
pub struct Parsed {
    pub meta: Meta,
    store_jsonl: Vec<u8>,
}

/// Reads and checks an archive (format, every line decodable) before anything is written.
pub fn parse(archive: &[u8]) -> Result<Parsed, SnapshotError> {
    let mut meta: Option<Meta> = None;
    let mut store_jsonl: Option<Vec<u8>> = None;
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| SnapshotError::Invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| SnapshotError::Invalid(format!("damaged archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| SnapshotError::Invalid(format!("bad path in archive: {e}")))?
            .to_string_lossy()
            .into_owned();
        let mut bytes = Vec::new();
        if path == META_PATH || path == STORE_PATH {
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| SnapshotError::Invalid(format!("reading {path}: {e}")))?;
        }
        if path == META_PATH {
            meta = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| SnapshotError::Invalid(format!("{META_PATH}: {e}")))?,
            );
        } else if path == STORE_PATH {
            store_jsonl = Some(bytes);
        }
    }
    let meta = meta.ok_or_else(|| SnapshotError::Invalid(format!("{META_PATH} is missing")))?;
    if meta.format != FORMAT {
        return Err(SnapshotError::Invalid(format!(
            "format {:?}, this pier reads {FORMAT:?}",
            meta.format
        )));
    }
    let store_jsonl =
        store_jsonl.ok_or_else(|| SnapshotError::Invalid(format!("{STORE_PATH} is missing")))?;
    let parsed = Parsed { meta, store_jsonl };
    let keys = parsed.lines().try_fold(0u64, |n, l| l.map(|_| n + 1))?;
    if keys != parsed.meta.keys {
        return Err(SnapshotError::Invalid(format!(
            "meta.json says {} keys, store.jsonl holds {keys} (truncated?)",
            parsed.meta.keys
        )));
    }
    Ok(parsed)
}

impl Parsed {
    fn lines(
        &self,
    ) -> impl Iterator<Item = Result<(Table, String, Vec<u8>, u64), SnapshotError>> + '_ {
        self.store_jsonl
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(n, l)| {
                let line: Line = serde_json::from_slice(l).map_err(|e| {
                    SnapshotError::Invalid(format!("store.jsonl line {}: {e}", n + 1))
                })?;
                let table = Table::new(line.t.clone()).map_err(|e| {
                    SnapshotError::Invalid(format!("store.jsonl line {}: {e}", n + 1))
                })?;
                let value = base64::engine::general_purpose::STANDARD
                    .decode(line.v.as_bytes())
                    .map_err(|e| {
                        SnapshotError::Invalid(format!("store.jsonl line {}: {e}", n + 1))
                    })?;
                Ok((table, line.k, value, line.f))
            })
    }
}

/// Writes a parsed snapshot into the cluster. Returns the number of keys written.
pub async fn restore(store: &Store, parsed: &Parsed, force: bool) -> Result<u64, SnapshotError> {
    let tables: std::collections::BTreeSet<String> = parsed
        .lines()
        .map(|l| l.map(|(t, ..)| t.as_str().to_string()))
        .collect::<Result<_, _>>()?;
    let in_use: Vec<String> = store
        .read(Consistency::Consistent, |v| {
            IN_USE_TABLES
                .iter()
                .filter(|t| v.range_prefix(**t, "").next().is_some())
                .map(|t| t.to_string())
                .collect()
        })
        .await?;
    if !in_use.is_empty() && !force {
        return Err(SnapshotError::NotEmpty(in_use.join(", ")));
    }
    if force {
        for t in &tables {
            let table = Table::new(t.clone()).map_err(SnapshotError::Store)?;
            store
                .write(Txn::single(Op::delete_prefix(table, "")))
                .await?;
        }
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut bytes = 0usize;
    let mut written = 0u64;
    for line in parsed.lines() {
        let (table, key, value, flags) = line?;
        bytes += key.len() + value.len();
        ops.push(Op::Put {
            table,
            key,
            value,
            flags,
            cas: None,
        });
        if ops.len() >= RESTORE_KEYS_PER_TXN || bytes >= RESTORE_BYTES_PER_TXN {
            written += ops.len() as u64;
            store
                .write(Txn {
                    ops: std::mem::take(&mut ops),
                })
                .await?;
            bytes = 0;
        }
    }
    if !ops.is_empty() {
        written += ops.len() as u64;
        store.write(Txn { ops }).await?;
    }
    Ok(written)
}

/// Every `every`, writes a snapshot into `<data_dir>/snapshots/` (temp, fsync, rename) and
/// keeps the newest `keep`. Every server does it for itself, leader or not: any server may
/// be the one that survives.
pub async fn schedule(store: Store, server: String, dir: PathBuf, every: Duration, keep: usize) {
    if every.is_zero() || keep == 0 {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        match build(&store, &server).await {
            Ok(archive) => {
                let name = format!("pier-{}.tar", now_ms());
                match write_atomically(&dir, &name, &archive) {
                    Ok(path) => {
                        tracing::info!(path = %path.display(), bytes = archive.len(), "scheduled snapshot written")
                    }
                    Err(e) => tracing::warn!(error = %e, "scheduled snapshot not written"),
                }
                if let Err(e) = prune(&dir, keep) {
                    tracing::warn!(error = %e, "old snapshots not pruned");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduled snapshot not taken; next try in one period")
            }
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `dir/name` through a temp file, fsynced, renamed, directory fsynced.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(path)
}

/// Deletes all but the newest `keep` `pier-*.tar` files (their names sort by time).
fn prune(dir: &Path, keep: usize) -> Result<(), SnapshotError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pier-") && n.ends_with(".tar"))
        .collect();
    names.sort_by_key(|n| {
        n.trim_start_matches("pier-")
            .trim_end_matches(".tar")
            .parse::<u64>()
            .unwrap_or(0)
    });
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        let p = dir.join(n);
        std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_foreign_archive_is_refused_before_anything_is_written() {
        assert!(matches!(
            parse(b"not a tar"),
            Err(SnapshotError::Invalid(_))
        ));
        let mut tar = tar::Builder::new(Vec::new());
        let meta = Meta {
            format: FORMAT.into(),
            created_at_ms: 1,
            index: 5,
            keys: 2,
            server: "s1".into(),
        };
        append(&mut tar, META_PATH, &serde_json::to_vec(&meta).unwrap(), 1).unwrap();
        let one_line = br#"{"t":"kv","k":"a","v":"eA=="}
"#;
        append(&mut tar, STORE_PATH, one_line, 1).unwrap();
        let archive = tar.into_inner().unwrap();
        match parse(&archive) {
            Err(SnapshotError::Invalid(m)) => assert!(m.contains("truncated"), "{m}"),
            other => panic!(
                "a truncated snapshot was accepted: {:?}",
                other.map(|p| p.meta)
            ),
        }
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for t in [5u64, 100, 20, 7] {
            write_atomically(dir.path(), &format!("pier-{t}.tar"), b"x").unwrap();
        }
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["pier-100.tar", "pier-20.tar"]);
    }
}
