//! Blob upload sessions (POST / PATCH / PUT / GET / DELETE on
//! `/v2/<name>/blobs/uploads/<id>`).
//!
//! The bytes go straight from the request body to the upload file; an
//! incremental hasher sees the same bytes, so completing an upload costs no
//! re-read. The hasher lives only in memory: after a restart (or after a
//! failed write, when memory and disk may disagree) the session continues
//! from the file's length and the file is hashed once on completion.
//! Nothing is visible under a digest before it has been verified.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::RepoName;
use crate::{now_unix_ms, Inner, RegistryError};

pub(crate) struct UploadSession {
    pub id: String,
    pub repo: String,
    /// Mirrors `state.size` so status requests need not wait for a PATCH.
    size: AtomicU64,
    started: Instant,
    state: tokio::sync::Mutex<SessionState>,
}

struct SessionState {
    size: u64,
    /// None when the bytes on disk cannot be vouched for by memory.
    hasher: Option<Hasher>,
    closed: bool,
}

impl UploadSession {
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
}

#[derive(Default)]
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Arc<UploadSession>>>,
}

impl Uploads {
    fn get(&self, id: &str) -> Option<Arc<UploadSession>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn insert(&self, session: Arc<UploadSession>) -> Arc<UploadSession> {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(session.id.clone()).or_insert(session).clone()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// For GC: ends the session unless a request is using it right now.
    pub(crate) fn try_close(&self, id: &str) -> bool {
        let Some(session) = self.get(id) else {
            return true;
        };
        let Ok(mut state) = session.state.try_lock() else {
            return false;
        };
        state.closed = true;
        drop(state);
        self.remove(id);
        true
    }
}

/// An inclusive chunk range from `Content-Range`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

impl Inner {
    pub(crate) async fn start_upload(
        &self,
        repo: &RepoName,
        algorithm: Algorithm,
    ) -> Result<Arc<UploadSession>, RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .upload_create(&id, repo.as_str(), now_unix_ms())
            .await?;
        let session = Arc::new(UploadSession {
            id,
            repo: repo.as_str().to_string(),
            size: AtomicU64::new(0),
            started: Instant::now(),
            state: tokio::sync::Mutex::new(SessionState {
                size: 0,
                hasher: Some(algorithm.hasher()),
                closed: false,
            }),
        });
        Ok(self.uploads.insert(session))
    }

    /// The live session `id` of `repo`, recovered from disk after a restart.
    pub(crate) async fn upload_session(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Arc<UploadSession>, RegistryError> {
        let unknown = || RegistryError::BlobUploadUnknown(id.chars().take(80).collect());
        if let Some(session) = self.uploads.get(id) {
            return if session.repo == repo.as_str() {
                Ok(session)
            } else {
                Err(unknown())
            };
        }
        let record = match self.store.upload_record(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(unknown()),
            Err(e) => {
                tracing::warn!(upload = id, error = %e, "unreadable upload record");
                return Err(unknown());
            }
        };
        if record.repo != repo.as_str() {
            return Err(unknown());
        }
        tracing::info!(
            upload = id,
            size = record.size,
            "resuming an upload from disk; it will be re-hashed on completion"
        );
        let session = Arc::new(UploadSession {
            id: id.to_string(),
            repo: record.repo,
            size: AtomicU64::new(record.size),
            started: Instant::now(),
            state: tokio::sync::Mutex::new(SessionState {
                size: record.size,
                hasher: None,
                closed: false,
            }),
        });
        Ok(self.uploads.insert(session))
    }

    /// Appends a chunk (PATCH). Returns the upload's new size.
    pub(crate) async fn append_upload<S, E>(
        &self,
        session: &UploadSession,
        body: S,
        range: Option<ChunkRange>,
        content_length: Option<u64>,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut state = session.state.lock().await;
        if state.closed {
            return Err(RegistryError::BlobUploadUnknown(session.id.clone()));
        }
        self.append_locked(session, &mut state, body, range, content_length)
            .await
    }

    async fn append_locked<S, E>(
        &self,
        session: &UploadSession,
        state: &mut SessionState,
        mut body: S,
        range: Option<ChunkRange>,
        content_length: Option<u64>,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        if let Some(r) = range {
            if r.start != state.size {
                return Err(RegistryError::ChunkOutOfOrder {
                    start: r.start,
                    size: state.size,
                });
            }
            if r.end < r.start {
                return Err(RegistryError::BlobUploadInvalid(format!(
                    "Content-Range {}-{} ends before it starts",
                    r.start, r.end
                )));
            }
            if let Some(len) = content_length {
                if len != r.end - r.start + 1 {
                    return Err(RegistryError::SizeInvalid(format!(
                        "Content-Range {}-{} is {} bytes, Content-Length is {len}",
                        r.start,
                        r.end,
                        r.end - r.start + 1
                    )));
                }
            }
        }
        // The sink hashes what it writes (in the blocking pool, off the
        // receive path) and hands the hasher back after the flush.
        let mut sink = self
            .store
            .upload_append(&session.id, state.size, state.hasher.take())
            .await?;
        let mut written: u64 = 0;
        let mut client_error = None;
        let mut write_error = None;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(bytes) => {
                    if let Err(e) = sink.write_all(&bytes).await {
                        write_error = Some(e);
                        break;
                    }
                    written += bytes.len() as u64;
                    self.metrics.bytes_in.inc_by(bytes.len() as u64);
                }
                Err(e) => {
                    client_error = Some(e.to_string());
                    break;
                }
            }
        }
        if write_error.is_none() {
            match sink.flush().await {
                Ok(()) => state.hasher = sink.as_mut().take_hasher(),
                Err(e) => write_error = Some(e),
            }
        }
        drop(sink);
        if let Some(e) = write_error {
            // Memory and disk may now disagree: trust the file; the hasher
            // stays with the failed sink (state.hasher is None).
            if let Ok(Some(record)) = self.store.upload_record(&session.id).await {
                state.size = record.size;
                session.size.store(state.size, Ordering::Release);
            }
            return Err(RegistryError::Io {
                context: format!("writing upload {}", session.id),
                source: e,
            });
        }
        state.size += written;
        session.size.store(state.size, Ordering::Release);
        if let Some(e) = client_error {
            // What arrived is kept: the client can ask for the status and resume.
            return Err(RegistryError::ClientBody(format!(
                "upload body ended early after {written} bytes: {e}"
            )));
        }
        Ok(state.size)
    }

    /// Completes an upload (PUT ?digest=), with an optional last chunk.
    /// Returns the blob size.
    pub(crate) async fn finish_upload<S, E>(
        &self,
        session: &UploadSession,
        expected: &Digest,
        last_chunk: Option<(S, Option<ChunkRange>, Option<u64>)>,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut state = session.state.lock().await;
        if state.closed {
            return Err(RegistryError::BlobUploadUnknown(session.id.clone()));
        }
        if let Some((body, range, len)) = last_chunk {
            self.append_locked(session, &mut state, body, range, len)
                .await?;
        }
        let computed = match state.hasher.take() {
            Some(h) if h.algorithm() == expected.algorithm() => h.finish(),
            _ => {
                self.rehash_upload(&session.id, expected.algorithm())
                    .await?
            }
        };
        let size = state.size;
        // Whatever happens next, this session is over.
        state.closed = true;
        self.uploads.remove(&session.id);
        if &computed != expected {
            self.store.upload_delete(&session.id).await?;
            return Err(RegistryError::DigestInvalid(format!(
                "expected {expected}, the uploaded bytes are {computed}"
            )));
        }
        self.publish_upload(session, expected, size).await?;
        self.metrics
            .upload_seconds
            .observe(session.started.elapsed().as_secs_f64());
        Ok(size)
    }

    async fn rehash_upload(&self, id: &str, algorithm: Algorithm) -> Result<Digest, RegistryError> {
        let mut stream = self.store.upload_read(id).await?;
        let mut hasher = algorithm.hasher();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Io {
                context: format!("re-reading upload {id}"),
                source: e,
            })?;
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    async fn publish_upload(
        &self,
        session: &UploadSession,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let key = digest.to_string();
        let _guard = self.locks.lock(&key).await;
        let have_record = self
            .index
            .blob(key.clone())
            .await?
            .is_some_and(|b| b.size == size);
        let have_file = have_record && self.store.stat(digest).await? == Some(size);
        if have_file {
            self.store.upload_delete(&session.id).await?;
        } else {
            self.store.upload_commit(&session.id, digest).await?;
        }
        Ok(self
            .index
            .publish_blob(session.repo.clone(), digest.clone(), size, now_unix_ms())
            .await?)
    }

    pub(crate) async fn cancel_upload(&self, session: &UploadSession) -> Result<(), RegistryError> {
        let mut state = session.state.lock().await;
        if state.closed {
            return Err(RegistryError::BlobUploadUnknown(session.id.clone()));
        }
        state.closed = true;
        self.uploads.remove(&session.id);
        self.store.upload_delete(&session.id).await?;
        Ok(())
    }
}
