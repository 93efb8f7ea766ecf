//! [`Meta`]: where the registry keeps repositories, tags, manifests and blob
//! records. One server alone uses the redb [`Index`](super::Index) in its data
//! directory ([`LocalMeta`]); a cluster keeps them in the replicated store
//! (`crate::cluster::ClusterMeta`), so every server answers the same.

use std::sync::Arc;

use super::records::ManifestRecord;
use super::{BlobInfo, GcCandidate, GcSnapshot, Index, IndexError, Page, PutOutcome};
use crate::digest::Digest;
use crate::names::{Reference, Tag};
use crate::storage::BoxFuture;

pub type MetaResult<T> = Result<T, IndexError>;

/// The registry's metadata operations; see [`Index`] for what each one means.
/// Arguments are owned so the futures borrow only `self`.
pub trait Meta: Send + Sync + 'static {
    fn repo_exists(&self, repo: String) -> BoxFuture<'_, MetaResult<bool>>;
    /// The blob's size when `repo` may serve it.
    fn repo_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<Option<u64>>>;
    fn blob(&self, digest: String) -> BoxFuture<'_, MetaResult<Option<BlobInfo>>>;
    fn resolve_manifest(
        &self,
        repo: String,
        reference: Reference,
    ) -> BoxFuture<'_, MetaResult<Option<(Digest, ManifestRecord)>>>;
    fn tags(
        &self,
        repo: String,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Option<Page>>>;
    fn catalog(
        &self,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Page>>;
    fn referrers(
        &self,
        repo: String,
        subject: Digest,
    ) -> BoxFuture<'_, MetaResult<Vec<(Digest, ManifestRecord)>>>;
    /// The blob is durable in this server's blob store: record it (and that this
    /// server holds it) and link it to `repo`.
    fn publish_blob(
        &self,
        repo: String,
        digest: Digest,
        size: u64,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<()>>;
    fn mount_blob(
        &self,
        repo: String,
        from: Option<String>,
        digest: Digest,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Option<u64>>>;
    fn unlink_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>>;
    fn put_manifest(
        &self,
        repo: String,
        digest: Digest,
        record: ManifestRecord,
        tags: Vec<Tag>,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<PutOutcome>>;
    fn delete_manifest(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>>;
    fn delete_tag(&self, repo: String, tag: Tag) -> BoxFuture<'_, MetaResult<bool>>;
    fn gc_snapshot(&self, cutoff_unix_ms: u64) -> BoxFuture<'_, MetaResult<GcSnapshot>>;
    fn gc_remove(
        &self,
        candidates: Vec<GcCandidate>,
        cutoff_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Vec<GcCandidate>>>;
}

/// The metadata of a registry on its own: the redb index in its data directory.
pub struct LocalMeta {
    index: Arc<Index>,
}

impl LocalMeta {
    pub fn new(index: Index) -> LocalMeta {
        LocalMeta {
            index: Arc::new(index),
        }
    }

    /// Runs a write (which waits for redb's single writer and fsyncs) off the async threads.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> MetaResult<T> + Send + 'static,
    ) -> BoxFuture<'_, MetaResult<T>> {
        let index = self.index.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&index)).await {
                Ok(r) => r,
                Err(e) => Err(IndexError::Corrupt(format!("index task: {e}"))),
            }
        })
    }

    /// Reads run on an MVCC snapshot and never wait for a writer: done in place.
    fn read<T: Send + 'static>(&self, r: MetaResult<T>) -> BoxFuture<'_, MetaResult<T>> {
        Box::pin(std::future::ready(r))
    }
}

impl Meta for LocalMeta {
    fn repo_exists(&self, repo: String) -> BoxFuture<'_, MetaResult<bool>> {
        self.read(self.index.repo_exists(&repo))
    }

    fn repo_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<Option<u64>>> {
        self.read(self.index.repo_blob(&repo, &digest))
    }

    fn blob(&self, digest: String) -> BoxFuture<'_, MetaResult<Option<BlobInfo>>> {
        self.read(self.index.blob(&digest))
    }

    fn resolve_manifest(
        &self,
        repo: String,
        reference: Reference,
    ) -> BoxFuture<'_, MetaResult<Option<(Digest, ManifestRecord)>>> {
        self.read(self.index.resolve_manifest(&repo, &reference))
    }

    fn tags(
        &self,
        repo: String,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Option<Page>>> {
        self.read(self.index.tags(&repo, last.as_deref(), limit))
    }

    fn catalog(
        &self,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Page>> {
        self.read(self.index.catalog(last.as_deref(), limit))
    }

    fn referrers(
        &self,
        repo: String,
        subject: Digest,
    ) -> BoxFuture<'_, MetaResult<Vec<(Digest, ManifestRecord)>>> {
        self.read(self.index.referrers(&repo, &subject))
    }

    fn publish_blob(
        &self,
        repo: String,
        digest: Digest,
        size: u64,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<()>> {
        self.write(move |i| i.publish_blob(&repo, &digest, size, now_unix_ms))
    }

    fn mount_blob(
        &self,
        repo: String,
        from: Option<String>,
        digest: Digest,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Option<u64>>> {
        self.write(move |i| i.mount_blob(&repo, from.as_deref(), &digest, now_unix_ms))
    }

    fn unlink_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>> {
        self.write(move |i| i.unlink_blob(&repo, &digest))
    }

    fn put_manifest(
        &self,
        repo: String,
        digest: Digest,
        record: ManifestRecord,
        tags: Vec<Tag>,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<PutOutcome>> {
        self.write(move |i| i.put_manifest(&repo, &digest, &record, &tags, now_unix_ms))
    }

    fn delete_manifest(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>> {
        self.write(move |i| i.delete_manifest(&repo, &digest))
    }

    fn delete_tag(&self, repo: String, tag: Tag) -> BoxFuture<'_, MetaResult<bool>> {
        self.write(move |i| i.delete_tag(&repo, &tag))
    }

    fn gc_snapshot(&self, cutoff_unix_ms: u64) -> BoxFuture<'_, MetaResult<GcSnapshot>> {
        self.write(move |i| i.gc_snapshot(cutoff_unix_ms))
    }

    fn gc_remove(
        &self,
        candidates: Vec<GcCandidate>,
        cutoff_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Vec<GcCandidate>>> {
        self.write(move |i| i.gc_remove(&candidates, cutoff_unix_ms))
    }
}
