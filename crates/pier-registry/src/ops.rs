//! Registry operations behind the HTTP handlers: blobs, manifests, listings.

use bytes::Bytes;

use crate::digest::{Algorithm, Digest};
use crate::index::records::ManifestRecord;
use crate::index::{Page, PutOutcome};
use crate::manifest;
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{BlobRead, ByteRange};
use crate::{now_unix_ms, Inner, RegistryError};

pub(crate) struct StoredManifest {
    pub digest: Digest,
    pub record: ManifestRecord,
}

pub(crate) struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<String>,
}

impl Inner {
    /// NAME_UNKNOWN for a repository never pushed to, else `otherwise`.
    async fn unknown(&self, repo: &RepoName, otherwise: RegistryError) -> RegistryError {
        match self.index.repo_exists(repo.to_string()).await {
            Ok(false) => RegistryError::NameUnknown(repo.to_string()),
            Ok(true) => otherwise,
            Err(e) => e.into(),
        }
    }

    pub(crate) async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        match self
            .index
            .repo_blob(repo.to_string(), digest.clone())
            .await?
        {
            Some(size) => Ok(size),
            None => Err(self
                .unknown(repo, RegistryError::BlobUnknown(digest.to_string()))
                .await),
        }
    }

    pub(crate) async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobRead, RegistryError> {
        if let Some(read) = self.store.read(digest, range).await? {
            return Ok(read);
        }
        // A cluster: another server holds it; fetched (verified) and kept here.
        if self.fetch_from_peers(digest).await? {
            if let Some(read) = self.store.read(digest, range).await? {
                return Ok(read);
            }
        }
        // Indexed but gone: GC took it between the lookup and the open.
        tracing::debug!(repo = %repo, digest = %digest, "blob vanished before it could be opened");
        Err(RegistryError::BlobUnknown(digest.to_string()))
    }

    /// Cross-repository mount; Ok(None) when it cannot be mounted (the
    /// caller then starts an ordinary upload).
    pub(crate) async fn mount_blob(
        &self,
        repo: &RepoName,
        from: Option<&RepoName>,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        Ok(self
            .index
            .mount_blob(
                repo.to_string(),
                from.map(|f| f.to_string()),
                digest.clone(),
                now_unix_ms(),
            )
            .await?)
    }

    pub(crate) async fn delete_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        if self
            .index
            .unlink_blob(repo.to_string(), digest.clone())
            .await?
        {
            Ok(())
        } else {
            Err(self
                .unknown(repo, RegistryError::BlobUnknown(digest.to_string()))
                .await)
        }
    }

    pub(crate) async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, RegistryError> {
        match self
            .index
            .resolve_manifest(repo.to_string(), reference.clone())
            .await?
        {
            Some((digest, record)) => Ok(StoredManifest { digest, record }),
            None => Err(self
                .unknown(repo, RegistryError::ManifestUnknown(reference.to_string()))
                .await),
        }
    }

    pub(crate) async fn manifest_bytes(&self, m: &StoredManifest) -> Result<Bytes, RegistryError> {
        let mut bytes = self.store.read_all(&m.digest).await?;
        if bytes.is_none() && self.fetch_from_peers(&m.digest).await? {
            bytes = self.store.read_all(&m.digest).await?;
        }
        match bytes {
            Some(bytes) => Ok(bytes),
            None => {
                tracing::error!(digest = %m.digest, "indexed manifest has no bytes in the blob store");
                Err(RegistryError::ManifestUnknown(m.digest.to_string()))
            }
        }
    }

    pub(crate) async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        extra_tags: Vec<Tag>,
    ) -> Result<PushedManifest, RegistryError> {
        let parsed = manifest::parse(content_type, &bytes)?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let computed = Digest::of(expected.algorithm(), &bytes);
                if &computed != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest pushed as {expected} has digest {computed}"
                    )));
                }
                computed
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &bytes),
        };
        let mut tags = extra_tags;
        if let Reference::Tag(tag) = reference {
            tags.push(tag.clone());
        }
        let size = bytes.len() as u64;
        let now = now_unix_ms();
        let record = ManifestRecord::new(&parsed, size, now);
        let key = digest.to_string();
        let _guard = self.locks.lock(&key).await;
        if self.store.stat(&digest).await? != Some(size) {
            self.store.put_verified(&digest, bytes).await?;
        }
        let outcome = self
            .index
            .put_manifest(repo.to_string(), digest.clone(), record, tags, now)
            .await?;
        match outcome {
            // The file stays until GC finds it unindexed past the grace window.
            PutOutcome::Missing(missing) => Err(RegistryError::ManifestBlobUnknown(missing)),
            PutOutcome::Stored => Ok(PushedManifest {
                digest,
                subject: parsed.subject.map(|s| s.to_string()),
            }),
        }
    }

    pub(crate) async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        let r = repo.to_string();
        let deleted = match reference.clone() {
            Reference::Digest(d) => self.index.delete_manifest(r, d).await?,
            Reference::Tag(t) => self.index.delete_tag(r, t).await?,
        };
        if deleted {
            Ok(())
        } else {
            Err(self
                .unknown(repo, RegistryError::ManifestUnknown(reference.to_string()))
                .await)
        }
    }

    pub(crate) async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page, RegistryError> {
        self.index
            .tags(repo.to_string(), last.map(str::to_string), limit)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.to_string()))
    }

    pub(crate) async fn catalog(
        &self,
        last: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page, RegistryError> {
        Ok(self.index.catalog(last.map(str::to_string), limit).await?)
    }

    pub(crate) async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<(Digest, ManifestRecord)>, RegistryError> {
        Ok(self
            .index
            .referrers(repo.to_string(), subject.clone())
            .await?)
    }
}
