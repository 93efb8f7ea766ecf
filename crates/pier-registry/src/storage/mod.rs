//! Where blob bytes live. The registry only talks to [`BlobStore`]: blobs are
//! addressed by digest and never change once published; uploads are private,
//! append-only files that become a blob in one atomic step. The trait is
//! object-safe (boxed futures) so an S3 implementation can slot in later.

mod fs;
mod sink;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;
use tokio::io::AsyncWrite;

use crate::digest::{Digest, Hasher};

pub use fs::FsBlobStore;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
pub type UploadSink = Pin<Box<dyn UploadWrite>>;

/// Where an upload's bytes go: in order, and through the hasher handed to
/// [`BlobStore::upload_append`], so the bytes are digested exactly as they
/// are written, in the same pass.
pub trait UploadWrite: AsyncWrite + Send {
    /// After a successful flush: the hasher, having seen every byte written
    /// so far. None if there was none, or a write failed (memory and disk
    /// may then disagree).
    fn take_hasher(self: Pin<&mut Self>) -> Option<Hasher>;
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("upload {0} is unknown to the store")]
    UploadUnknown(String),
    #[error("corrupt upload record {path}: {reason}")]
    CorruptUpload { path: String, reason: String },
}

impl StorageError {
    pub(crate) fn io(path: impl std::fmt::Display, source: io::Error) -> StorageError {
        StorageError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// An inclusive byte range `start..=end`, already checked against the blob size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A blob opened for reading: `stream` yields only the requested range.
pub struct BlobRead {
    pub stream: ByteStream,
}

/// A blob file as found when walking the store (for GC).
#[derive(Clone, Debug)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// What the store remembers about an upload session, so that a session
/// outlives a restart of the process.
#[derive(Clone, Debug)]
pub struct UploadRecord {
    pub repo: String,
    pub started_unix_ms: u64,
    /// Bytes currently in the upload file.
    pub size: u64,
    /// Last write to the upload file.
    pub modified: SystemTime,
}

pub trait BlobStore: Send + Sync + 'static {
    /// Size of a published blob, or None.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// Opens a published blob, optionally only a range of it.
    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<BlobRead>, StorageError>>;

    /// Reads a whole published blob into memory; for manifests, which are
    /// bounded by the manifest size limit.
    fn read_all<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>>;

    /// Publishes `bytes` under `digest`. The caller has verified the digest.
    /// Durable when it returns (fsync + atomic rename).
    fn put_verified<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes a published blob. Returns whether it existed.
    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Every published blob file; only GC calls this.
    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredBlob>, StorageError>>;

    fn upload_create<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
        started_unix_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    fn upload_record<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, StorageError>>;

    /// A sink that appends to the upload at `offset`; anything beyond
    /// `offset` (a torn earlier write) is cut off first. `hasher` (the
    /// upload's digest state up to `offset`) sees every byte written.
    fn upload_append<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        hasher: Option<Hasher>,
    ) -> BoxFuture<'a, Result<UploadSink, StorageError>>;

    /// The upload's bytes, for re-hashing when the in-memory hasher is gone.
    fn upload_read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ByteStream, StorageError>>;

    /// Makes the upload durable and publishes it as `digest` (replacing an
    /// identical existing blob is harmless). The upload is gone afterwards.
    fn upload_commit<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    fn upload_delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every upload session on disk with the time of its last write; only GC calls this.
    fn upload_list(&self) -> BoxFuture<'_, Result<Vec<(String, SystemTime)>, StorageError>>;
}
