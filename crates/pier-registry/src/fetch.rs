//! Blobs this server lacks, fetched from the other servers of a cluster that
//! hold them: streamed into a private upload file, hashed on the way in,
//! published under their digest only when the bytes match it, and recorded as
//! held here. Also the local checks the cluster's replication loop runs
//! (stat, re-hash, delete).

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::storage::{BoxFuture, ByteStream};
use crate::{now_unix_ms, Inner, Registry, RegistryError};

/// A peer that sends nothing for this long is given up on (the next holder is tried).
const PEER_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where blob bytes this server lacks come from, and where it says it holds one.
pub trait BlobSource: Send + Sync + 'static {
    /// The servers recorded as holding `digest`, best first (never this one).
    fn holders<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<String>, RegistryError>>;
    /// The blob's bytes from server `holder`.
    fn open<'a>(
        &'a self,
        holder: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ByteStream, RegistryError>>;
    /// `digest` is now durable in this server's blob store (`true`) or no longer is.
    fn set_held<'a>(
        &'a self,
        digest: &'a Digest,
        held: bool,
    ) -> BoxFuture<'a, Result<(), RegistryError>>;
}

impl Inner {
    /// Fetches `digest` from a server that holds it. Ok(false) when this is no
    /// cluster or no holder delivered bytes that match the digest. One fetch
    /// per digest at a time; a second caller finds the blob already here.
    pub(crate) async fn fetch_from_peers(&self, digest: &Digest) -> Result<bool, RegistryError> {
        let Some(source) = self.source.clone() else {
            return Ok(false);
        };
        let _guard = self.fetch_locks.lock(&digest.to_string()).await;
        if self.store.stat(digest).await?.is_some() {
            return Ok(true);
        }
        for holder in source.holders(digest).await? {
            let stream = match source.open(&holder, digest).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%digest, %holder, error = %e, "cannot fetch a blob from a peer");
                    continue;
                }
            };
            match self.store_verified(digest, stream).await {
                Ok(()) => {
                    source.set_held(digest, true).await?;
                    tracing::info!(%digest, from = %holder, "blob fetched from a peer");
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(%digest, %holder, error = %e, "blob from a peer refused")
                }
            }
        }
        Ok(false)
    }

    /// Streams `stream` into an upload file and publishes it as `digest` if
    /// (and only if) its bytes hash to it.
    async fn store_verified(
        &self,
        digest: &Digest,
        mut stream: ByteStream,
    ) -> Result<(), RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .upload_create(&id, "_peer", now_unix_ms())
            .await?;
        let outcome = async {
            let mut sink = self
                .store
                .upload_append(&id, 0, Some(digest.algorithm().hasher()))
                .await?;
            loop {
                let next = tokio::time::timeout(PEER_STALL_TIMEOUT, stream.next())
                    .await
                    .map_err(|_| {
                        RegistryError::Internal(format!(
                            "the peer sent nothing for {PEER_STALL_TIMEOUT:?}"
                        ))
                    })?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|source| RegistryError::Io {
                    context: "receiving a blob from a peer".into(),
                    source,
                })?;
                sink.write_all(&chunk)
                    .await
                    .map_err(|source| RegistryError::Io {
                        context: format!("writing upload {id}"),
                        source,
                    })?;
            }
            sink.flush().await.map_err(|source| RegistryError::Io {
                context: format!("writing upload {id}"),
                source,
            })?;
            let computed = match sink.as_mut().take_hasher() {
                Some(h) => h.finish(),
                None => return Err(RegistryError::Internal("upload hasher lost".into())),
            };
            drop(sink);
            if &computed != digest {
                return Err(RegistryError::DigestInvalid(format!(
                    "a peer sent {computed} for {digest}"
                )));
            }
            let _publish = self.locks.lock(&digest.to_string()).await;
            self.store.upload_commit(&id, digest).await?;
            Ok(())
        }
        .await;
        if outcome.is_err() {
            let _ = self.store.upload_delete(&id).await;
        }
        outcome
    }
}

impl Registry {
    /// The size of `digest` in this server's blob store, if it is here.
    pub async fn local_size(&self, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        Ok(self.inner.store.stat(digest).await?)
    }

    /// This server's copy of `digest` (for other servers), if it has one.
    pub async fn read_local(
        &self,
        digest: &Digest,
    ) -> Result<Option<(u64, ByteStream)>, RegistryError> {
        let Some(size) = self.inner.store.stat(digest).await? else {
            return Ok(None);
        };
        Ok(self
            .inner
            .store
            .read(digest, None)
            .await?
            .map(|r| (size, r.stream)))
    }

    /// Fetches `digest` from a server holding it (see [`BlobSource`]).
    pub async fn fetch(&self, digest: &Digest) -> Result<bool, RegistryError> {
        self.inner.fetch_from_peers(digest).await
    }

    /// Re-hashes the local copy of `digest`. Ok(None): not here; Ok(Some(false)):
    /// the bytes on disk no longer matched their digest: the copy was deleted and
    /// fetched again from a server that holds it (or, failing that, this server
    /// no longer counts as holding it).
    pub async fn scrub(&self, digest: &Digest) -> Result<Option<bool>, RegistryError> {
        let Some(read) = self.inner.store.read(digest, None).await? else {
            return Ok(None);
        };
        let mut stream = read.stream;
        let mut hasher = digest.algorithm().hasher();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Io {
                context: format!("re-reading blob {digest}"),
                source,
            })?;
            hasher.update(&chunk);
        }
        let computed = hasher.finish();
        if &computed == digest {
            return Ok(Some(true));
        }
        tracing::error!(%digest, %computed, "blob corrupt on disk; deleting this copy and fetching it again from a peer");
        {
            let _guard = self.inner.locks.lock(&digest.to_string()).await;
            self.inner.store.delete(digest).await?;
        }
        if !self.inner.fetch_from_peers(digest).await? {
            if let Some(source) = &self.inner.source {
                source.set_held(digest, false).await?;
            }
        }
        Ok(Some(false))
    }
}
