//! Filesystem blob store.
//!
//! Layout under the root:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: published blobs, immutable.
//! - `uploads/<id>.data` + `uploads/<id>.json`: an upload session's bytes and
//!   its record (repository, start time).
//! - `tmp/`: manifests on their way to `blobs/`; emptied at open.
//!
//! Every publish is write → fsync → rename → fsync(directory), so a crash
//! leaves either no blob or a complete one under its digest.

use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::sink::{UploadFile, UploadFileSink};
use super::{
    BlobRead, BlobStore, BoxFuture, ByteRange, ByteStream, StorageError, StoredBlob, UploadRecord,
    UploadSink,
};
use crate::digest::{Digest, Hasher};

/// Read buffer for serving blobs: large enough that a 64 MiB layer is a few
/// hundred reads, small enough that 64 concurrent pulls stay cheap.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Upload write buffer: batches the small frames HTTP delivers into large writes.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// On-disk form of an upload record (`uploads/<id>.json`).
#[derive(Serialize, Deserialize)]
struct UploadRecordFile {
    repo: String,
    started_unix_ms: u64,
}

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    blobs: PathBuf,
    uploads: PathBuf,
    tmp: PathBuf,
}

impl FsBlobStore {
    /// Creates the layout under `root` if needed and clears `tmp/`.
    pub fn open(root: &Path) -> Result<FsBlobStore, StorageError> {
        let store = FsBlobStore {
            blobs: root.join("blobs"),
            uploads: root.join("uploads"),
            tmp: root.join("tmp"),
        };
        for dir in [&store.blobs, &store.uploads, &store.tmp] {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir.display(), e))?;
        }
        let entries =
            std::fs::read_dir(&store.tmp).map_err(|e| StorageError::io(store.tmp.display(), e))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(store)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_paths(&self, id: &str) -> Result<(PathBuf, PathBuf), StorageError> {
        // Ids come from URLs: allow nothing that could leave the directory.
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(StorageError::UploadUnknown(id.chars().take(80).collect()));
        }
        Ok((
            self.uploads.join(format!("{id}.data")),
            self.uploads.join(format!("{id}.json")),
        ))
    }
}

fn not_found_to_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Moves a fully written, fsynced file to its blob path and makes the rename durable.
fn publish_file(src: &Path, dest: &Path) -> io::Result<()> {
    let shard = dest
        .parent()
        .ok_or_else(|| io::Error::other("blob path without parent"))?;
    if !shard.exists() {
        std::fs::create_dir_all(shard)?;
        if let Some(alg_dir) = shard.parent() {
            fsync_dir(alg_dir)?;
        }
    }
    std::fs::rename(src, dest)?;
    fsync_dir(shard)
}

/// Asks the kernel to start reading `len` bytes at `offset` (0: to the end)
/// into the page cache now rather than 128 KiB at a time as the reads come:
/// uploads are written with direct I/O (see sink.rs), so a freshly pushed
/// blob is on disk but not in memory. A hint: failure changes nothing.
fn read_ahead(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own for the duration of the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
    }
}

async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| StorageError::io(what, e)),
        Err(join) => Err(StorageError::io(what, io::Error::other(join.to_string()))),
    }
}

impl BlobStore for FsBlobStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            let meta = not_found_to_none(tokio::fs::metadata(&path).await)
                .map_err(|e| StorageError::io(path.display(), e))?;
            Ok(meta.map(|m| m.len()))
        })
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<BlobRead>, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            // Open, hint and seek in one trip to the blocking pool.
            let opened = blocking(path.display().to_string(), move || {
                let Some(mut file) = not_found_to_none(std::fs::File::open(&path))? else {
                    return Ok(None);
                };
                let (offset, len) = range.map_or((0, 0), |r| (r.start, r.len()));
                read_ahead(&file, offset, len);
                if range.is_some() {
                    file.seek(SeekFrom::Start(offset))?;
                }
                Ok(Some(file))
            })
            .await?;
            let Some(file) = opened else {
                return Ok(None);
            };
            let file = tokio::fs::File::from_std(file);
            let stream: ByteStream = match range {
                None => Box::pin(ReaderStream::with_capacity(file, READ_CHUNK_BYTES)),
                Some(r) => Box::pin(ReaderStream::with_capacity(
                    file.take(r.len()),
                    READ_CHUNK_BYTES,
                )),
            };
            Ok(Some(BlobRead { stream }))
        })
    }

    fn read_all<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            let bytes = not_found_to_none(tokio::fs::read(&path).await)
                .map_err(|e| StorageError::io(path.display(), e))?;
            Ok(bytes.map(Bytes::from))
        })
    }

    fn put_verified<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let dest = self.blob_path(digest);
            let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
            blocking(dest.display().to_string(), move || {
                let result = (|| {
                    use std::io::Write;
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    publish_file(&tmp, &dest)
                })();
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            })
            .await
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            let removed = not_found_to_none(tokio::fs::remove_file(&path).await)
                .map_err(|e| StorageError::io(path.display(), e))?;
            Ok(removed.is_some())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredBlob>, StorageError>> {
        let root = self.blobs.clone();
        Box::pin(blocking(root.display().to_string(), move || {
            let mut out = Vec::new();
            for alg_entry in std::fs::read_dir(&root)? {
                let alg_entry = alg_entry?;
                let alg = alg_entry.file_name().to_string_lossy().into_owned();
                if !alg_entry.file_type()?.is_dir() {
                    continue;
                }
                for shard in std::fs::read_dir(alg_entry.path())? {
                    let shard = shard?;
                    if !shard.file_type()?.is_dir() {
                        continue;
                    }
                    for file in std::fs::read_dir(shard.path())? {
                        let file = file?;
                        let name = file.file_name().to_string_lossy().into_owned();
                        // Files that are no digest are not ours to judge.
                        let Ok(digest) = Digest::parse(&format!("{alg}:{name}")) else {
                            continue;
                        };
                        let Some(meta) = not_found_to_none(file.metadata())? else {
                            continue;
                        };
                        out.push(StoredBlob {
                            digest,
                            size: meta.len(),
                            modified: meta.modified()?,
                        });
                    }
                }
            }
            Ok(out)
        }))
    }

    fn upload_create<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
        started_unix_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (data, record) = self.upload_paths(id)?;
            let json = serde_json::to_vec(&UploadRecordFile {
                repo: repo.to_string(),
                started_unix_ms,
            })
            .map_err(|e| StorageError::io(record.display(), io::Error::other(e)))?;
            let tmp = self.tmp.join(format!("{id}.json"));
            blocking(record.display().to_string(), move || {
                use std::io::Write;
                std::fs::File::create(&data)?.sync_all()?;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&json)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &record)?;
                let dir = record
                    .parent()
                    .ok_or_else(|| io::Error::other("upload path without parent"))?;
                fsync_dir(dir)
            })
            .await
        })
    }

    fn upload_record<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, StorageError>> {
        Box::pin(async move {
            let Ok((data, record)) = self.upload_paths(id) else {
                return Ok(None);
            };
            let Some(json) = not_found_to_none(tokio::fs::read(&record).await)
                .map_err(|e| StorageError::io(record.display(), e))?
            else {
                return Ok(None);
            };
            let parsed: UploadRecordFile =
                serde_json::from_slice(&json).map_err(|e| StorageError::CorruptUpload {
                    path: record.display().to_string(),
                    reason: e.to_string(),
                })?;
            let Some(meta) = not_found_to_none(tokio::fs::metadata(&data).await)
                .map_err(|e| StorageError::io(data.display(), e))?
            else {
                return Ok(None);
            };
            Ok(Some(UploadRecord {
                repo: parsed.repo,
                started_unix_ms: parsed.started_unix_ms,
                size: meta.len(),
                modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
            }))
        })
    }

    fn upload_append<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        hasher: Option<Hasher>,
    ) -> BoxFuture<'a, Result<UploadSink, StorageError>> {
        Box::pin(async move {
            let (data, _) = self.upload_paths(id)?;
            let path = data.display().to_string();
            let opened = blocking(path, move || {
                let Some(file) = not_found_to_none(UploadFile::open(&data))? else {
                    return Ok(None);
                };
                if file.buffered.metadata()?.len() != offset {
                    file.buffered.set_len(offset)?;
                }
                Ok(Some(file))
            })
            .await?;
            let Some(file) = opened else {
                return Err(StorageError::UploadUnknown(id.to_string()));
            };
            let sink: UploadSink = Box::pin(UploadFileSink::new(
                file,
                offset,
                WRITE_BUFFER_BYTES,
                hasher,
            ));
            Ok(sink)
        })
    }

    fn upload_read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ByteStream, StorageError>> {
        Box::pin(async move {
            let (data, _) = self.upload_paths(id)?;
            let file = tokio::fs::File::open(&data)
                .await
                .map_err(|e| StorageError::io(data.display(), e))?;
            let stream: ByteStream =
                Box::pin(ReaderStream::with_capacity(file, WRITE_BUFFER_BYTES).fuse());
            Ok(stream)
        })
    }

    fn upload_commit<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (data, record) = self.upload_paths(id)?;
            let dest = self.blob_path(digest);
            blocking(dest.display().to_string(), move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&data)?
                    .sync_all()?;
                publish_file(&data, &dest)?;
                let _ = std::fs::remove_file(&record);
                Ok(())
            })
            .await
        })
    }

    fn upload_delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (data, record) = self.upload_paths(id)?;
            for path in [data, record] {
                not_found_to_none(tokio::fs::remove_file(&path).await)
                    .map_err(|e| StorageError::io(path.display(), e))?;
            }
            Ok(())
        })
    }

    fn upload_list(&self) -> BoxFuture<'_, Result<Vec<(String, SystemTime)>, StorageError>> {
        let dir = self.uploads.clone();
        Box::pin(blocking(dir.display().to_string(), move || {
            let mut ids: std::collections::BTreeMap<String, SystemTime> = Default::default();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name
                    .strip_suffix(".data")
                    .or_else(|| name.strip_suffix(".json"))
                else {
                    continue;
                };
                let Some(meta) = not_found_to_none(entry.metadata())? else {
                    continue;
                };
                let modified = meta.modified()?;
                let newest = ids.entry(id.to_string()).or_insert(modified);
                if modified > *newest {
                    *newest = modified;
                }
            }
            Ok(ids.into_iter().collect())
        }))
    }
}
