//! [`Meta`] over the replicated store, and the [`BlobSource`] that fetches
//! blob bytes from the servers holding them.

use std::collections::BTreeSet;

use futures::TryStreamExt;
use pier_store::{Consistency, Entry, Op, StateView, Store, StoreError, Txn};

use super::{
    link_key, referrer_key, tag_key, BlobRecord, BLOBS, ENDPOINTS, LINKS, MANIFESTS, REFERRERS,
    REPOS, TAGS,
};
use crate::digest::Digest;
use crate::index::meta::{Meta, MetaResult};
use crate::index::records::ManifestRecord;
use crate::index::{BlobInfo, GcCandidate, GcSnapshot, IndexError, Page, PutOutcome};
use crate::names::{Reference, Tag};
use crate::storage::{BoxFuture, ByteStream};
use crate::{BlobSource, RegistryError};

/// Guarded writes that lost a race are re-read and retried this often.
pub(super) const WRITE_ATTEMPTS: usize = 16;

/// The path other servers serve their copy of a blob on (their HTTP API, servers only).
pub const PEER_BLOB_PATH: &str = "/api/v1/registry/peer/blobs";

/// The registry metadata of a cluster, kept in the replicated store; also the
/// way to other servers' blob bytes. Cheap to clone.
#[derive(Clone)]
pub struct ClusterMeta {
    pub(crate) store: Store,
    /// This server's node name (as in the store's membership).
    pub(crate) node: String,
    http: pier_net::HttpClient,
}

fn cluster_err(e: StoreError) -> IndexError {
    IndexError::Cluster(e.to_string())
}

fn decode_blob(e: &Entry) -> MetaResult<BlobRecord> {
    serde_json::from_slice(&e.value)
        .map_err(|err| IndexError::Corrupt(format!("cluster blob record: {err}")))
}

pub(super) fn decode_manifest(e: &Entry) -> MetaResult<ManifestRecord> {
    serde_json::from_slice(&e.value)
        .map_err(|err| IndexError::Corrupt(format!("cluster manifest record: {err}")))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> MetaResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| IndexError::Corrupt(format!("encoding a record: {e}")))
}

fn parse_digest(s: &str) -> MetaResult<Digest> {
    Digest::parse(s).map_err(|e| IndexError::Corrupt(format!("stored digest {s:?}: {e}")))
}

/// A blob record with the version (modify index) it was read at.
pub(super) fn blob_at(v: &StateView<'_>, digest: &str) -> MetaResult<Option<(BlobRecord, u64)>> {
    match v.get(&BLOBS, digest) {
        Some(e) => Ok(Some((decode_blob(e)?, e.modify_index))),
        None => Ok(None),
    }
}

fn page_after<'a>(
    keys: impl Iterator<Item = &'a str>,
    last: Option<&str>,
    limit: Option<usize>,
) -> Page {
    let mut page = Page::default();
    for k in keys.filter(|k| last.is_none_or(|l| *k > l)) {
        if limit.is_some_and(|n| page.items.len() >= n) {
            page.more = true;
            break;
        }
        page.items.push(k.to_string());
    }
    page
}

impl ClusterMeta {
    pub fn new(store: Store, node: impl Into<String>, http: pier_net::HttpClient) -> ClusterMeta {
        ClusterMeta {
            store,
            node: node.into(),
            http,
        }
    }

    pub(super) async fn view<R>(
        &self,
        consistency: Consistency,
        f: impl FnOnce(&StateView<'_>) -> MetaResult<R>,
    ) -> MetaResult<R> {
        self.store.read(consistency, f).await.map_err(cluster_err)?
    }

    /// Immutable facts (content-addressed): this server's own state first, the
    /// leader's when it does not have them yet.
    async fn immutable<R>(
        &self,
        f: impl Fn(&StateView<'_>) -> MetaResult<Option<R>>,
    ) -> MetaResult<Option<R>> {
        if let Some(found) = self.view(Consistency::Stale, &f).await? {
            return Ok(Some(found));
        }
        self.view(Consistency::Default, &f).await
    }

    pub(super) async fn write(&self, txn: Txn) -> MetaResult<bool> {
        Ok(self.store.write(txn).await.map_err(cluster_err)?.applied)
    }

    pub(super) fn lost_race(what: &str) -> IndexError {
        IndexError::Cluster(format!(
            "{what}: concurrent writes kept winning after {WRITE_ATTEMPTS} attempts"
        ))
    }

    /// Adds (or removes) this server in the holders of `digest`.
    pub async fn set_holder(&self, digest: &str, held: bool) -> MetaResult<()> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((mut rec, version)) = self
                .view(Consistency::Default, |v| blob_at(v, digest))
                .await?
            else {
                return Ok(());
            };
            let changed = if held {
                rec.holders.insert(self.node.clone())
            } else {
                rec.holders.remove(&self.node)
            };
            if !changed {
                return Ok(());
            }
            let op = Op::put_cas(BLOBS, digest, encode(&rec)?, version);
            if self.write(Txn::single(op)).await? {
                return Ok(());
            }
        }
        Err(Self::lost_race("recording a blob holder"))
    }

    /// Every blob record (this server's state; the replication loop's input).
    pub async fn all_blobs(&self) -> MetaResult<Vec<(String, BlobRecord)>> {
        self.view(Consistency::Stale, |v| {
            v.range_prefix(&BLOBS, "")
                .map(|(k, e)| Ok((k.to_string(), decode_blob(e)?)))
                .collect()
        })
        .await
    }

    /// Records the registry address this server advertises, if it changed.
    pub async fn advertise(&self, addr: &str) -> MetaResult<()> {
        let current = self
            .view(Consistency::Default, |v| {
                Ok(v.get(&ENDPOINTS, &self.node).map(|e| e.value.clone()))
            })
            .await?;
        if current.as_deref() != Some(addr.as_bytes()) {
            let op = Op::put(ENDPOINTS, self.node.clone(), addr.as_bytes().to_vec());
            self.write(Txn::single(op)).await?;
        }
        Ok(())
    }

    /// The registry addresses the servers advertise, by server name.
    pub async fn endpoints(&self) -> MetaResult<Vec<(String, String)>> {
        self.view(Consistency::Stale, |v| {
            Ok(v.range_prefix(&ENDPOINTS, "")
                .map(|(k, e)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(&e.value).into_owned(),
                    )
                })
                .collect())
        })
        .await
    }

    /// The HTTP API address of server `name`, from the store's membership.
    fn api_addr(&self, name: &str) -> Option<String> {
        self.store
            .status()
            .members
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.http_addr)
    }

    /// Names of the servers in the membership.
    pub fn members(&self) -> Vec<String> {
        self.store
            .status()
            .members
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    /// The members whose API answers now (this server always): a copy on a server that does
    /// not answer does not count towards a blob's replicas.
    pub async fn answering_members(&self) -> Vec<String> {
        let members = self.store.status().members;
        let probes = members.into_iter().map(|m| async move {
            if m.name == self.node {
                return Some(m.name);
            }
            let url = format!("{}://{}/api/v1/status", self.http.scheme(), m.http_addr);
            let answered = self
                .http
                .get()
                .get(&url)
                .timeout(MEMBER_PROBE_TIMEOUT)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            answered.then_some(m.name)
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// How long a member's API gets to answer the replication loop's probe.
const MEMBER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl BlobSource for ClusterMeta {
    fn holders<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<String>, RegistryError>> {
        Box::pin(async move {
            let key = digest.to_string();
            let rec = self
                .immutable(|v| Ok(blob_at(v, &key)?.map(|r| r.0)))
                .await?;
            Ok(rec
                .map(|r| r.holders.into_iter().filter(|h| *h != self.node).collect())
                .unwrap_or_default())
        })
    }

    fn open<'a>(
        &'a self,
        holder: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<ByteStream, RegistryError>> {
        Box::pin(async move {
            let Some(addr) = self.api_addr(holder) else {
                return Err(RegistryError::Internal(format!(
                    "server {holder} is not a member"
                )));
            };
            let url = format!("{}://{addr}{PEER_BLOB_PATH}/{digest}", self.http.scheme());
            let resp = self
                .http
                .get()
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| RegistryError::Internal(format!("GET {url}: {e}")))?;
            let stream = resp.bytes_stream().map_err(std::io::Error::other);
            Ok(Box::pin(stream) as ByteStream)
        })
    }

    fn set_held<'a>(
        &'a self,
        digest: &'a Digest,
        held: bool,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move { Ok(self.set_holder(&digest.to_string(), held).await?) })
    }
}

impl Meta for ClusterMeta {
    fn repo_exists(&self, repo: String) -> BoxFuture<'_, MetaResult<bool>> {
        Box::pin(self.view(Consistency::Default, move |v| {
            Ok(v.get(&REPOS, &repo).is_some())
        }))
    }

    fn repo_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<Option<u64>>> {
        let key = digest.to_string();
        Box::pin(self.immutable(move |v| {
            if v.get(&LINKS, &link_key(&repo, &key)).is_none() {
                return Ok(None);
            }
            Ok(blob_at(v, &key)?.map(|(r, _)| r.size))
        }))
    }

    fn blob(&self, digest: String) -> BoxFuture<'_, MetaResult<Option<BlobInfo>>> {
        Box::pin(self.view(Consistency::Default, move |v| {
            Ok(blob_at(v, &digest)?.map(|(r, _)| BlobInfo {
                size: r.size,
                touched_unix_ms: r.touched_unix_ms,
            }))
        }))
    }

    fn resolve_manifest(
        &self,
        repo: String,
        reference: Reference,
    ) -> BoxFuture<'_, MetaResult<Option<(Digest, ManifestRecord)>>> {
        Box::pin(async move {
            let lookup = |v: &StateView<'_>, digest: &Digest| -> MetaResult<_> {
                match v.get(&MANIFESTS, &link_key(&repo, &digest.to_string())) {
                    Some(e) => Ok(Some((digest.clone(), decode_manifest(e)?))),
                    None => Ok(None),
                }
            };
            match &reference {
                Reference::Digest(d) => self.immutable(|v| lookup(v, d)).await,
                Reference::Tag(tag) => {
                    self.view(Consistency::Default, |v| {
                        match v.get(&TAGS, &tag_key(&repo, tag.as_str())) {
                            Some(e) => {
                                lookup(v, &parse_digest(&String::from_utf8_lossy(&e.value))?)
                            }
                            None => Ok(None),
                        }
                    })
                    .await
                }
            }
        })
    }

    fn tags(
        &self,
        repo: String,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Option<Page>>> {
        Box::pin(self.view(Consistency::Default, move |v| {
            if v.get(&REPOS, &repo).is_none() {
                return Ok(None);
            }
            let prefix = tag_key(&repo, "");
            let keys = v
                .range_prefix(&TAGS, &prefix)
                .map(|(k, _)| &k[prefix.len()..]);
            Ok(Some(page_after(keys, last.as_deref(), limit)))
        }))
    }

    fn catalog(
        &self,
        last: Option<String>,
        limit: Option<usize>,
    ) -> BoxFuture<'_, MetaResult<Page>> {
        Box::pin(self.view(Consistency::Default, move |v| {
            let keys = v.range_prefix(&REPOS, "").map(|(k, _)| k);
            Ok(page_after(keys, last.as_deref(), limit))
        }))
    }

    fn referrers(
        &self,
        repo: String,
        subject: Digest,
    ) -> BoxFuture<'_, MetaResult<Vec<(Digest, ManifestRecord)>>> {
        Box::pin(self.view(Consistency::Default, move |v| {
            let prefix = referrer_key(&repo, &subject.to_string(), "");
            let mut out = Vec::new();
            for (k, _) in v.range_prefix(&REFERRERS, &prefix) {
                let referrer = &k[prefix.len()..];
                if let Some(e) = v.get(&MANIFESTS, &link_key(&repo, referrer)) {
                    out.push((parse_digest(referrer)?, decode_manifest(e)?));
                }
            }
            Ok(out)
        }))
    }

    fn publish_blob(
        &self,
        repo: String,
        digest: Digest,
        size: u64,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<()>> {
        Box::pin(self.publish(repo, digest.to_string(), size, now_unix_ms))
    }

    fn mount_blob(
        &self,
        repo: String,
        from: Option<String>,
        digest: Digest,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Option<u64>>> {
        Box::pin(self.mount(repo, from, digest.to_string(), now_unix_ms))
    }

    fn unlink_blob(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>> {
        Box::pin(async move {
            let key = link_key(&repo, &digest.to_string());
            let exists = self
                .view(Consistency::Default, |v| Ok(v.get(&LINKS, &key).is_some()))
                .await?;
            if exists {
                self.write(Txn::single(Op::delete(LINKS, key))).await?;
            }
            Ok(exists)
        })
    }

    fn put_manifest(
        &self,
        repo: String,
        digest: Digest,
        record: ManifestRecord,
        tags: Vec<Tag>,
        now_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<PutOutcome>> {
        Box::pin(self.put_manifest_rec(repo, digest.to_string(), record, tags, now_unix_ms))
    }

    fn delete_manifest(&self, repo: String, digest: Digest) -> BoxFuture<'_, MetaResult<bool>> {
        Box::pin(self.delete_manifest_rec(repo, digest.to_string()))
    }

    fn delete_tag(&self, repo: String, tag: Tag) -> BoxFuture<'_, MetaResult<bool>> {
        Box::pin(async move {
            let key = tag_key(&repo, tag.as_str());
            let exists = self
                .view(Consistency::Default, |v| Ok(v.get(&TAGS, &key).is_some()))
                .await?;
            if exists {
                self.write(Txn::single(Op::delete(TAGS, key))).await?;
            }
            Ok(exists)
        })
    }

    fn gc_snapshot(&self, cutoff_unix_ms: u64) -> BoxFuture<'_, MetaResult<GcSnapshot>> {
        Box::pin(self.view(Consistency::Default, move |v| gc_mark(v, cutoff_unix_ms)))
    }

    fn gc_remove(
        &self,
        candidates: Vec<GcCandidate>,
        cutoff_unix_ms: u64,
    ) -> BoxFuture<'_, MetaResult<Vec<GcCandidate>>> {
        Box::pin(self.gc_sweep(candidates, cutoff_unix_ms))
    }
}

/// GC's mark phase over one consistent view of the store; see [`crate::gc`].
fn gc_mark(v: &StateView<'_>, cutoff_unix_ms: u64) -> MetaResult<GcSnapshot> {
    let mut snap = GcSnapshot::default();
    for (k, e) in v.range_prefix(&MANIFESTS, "") {
        let Some((_, digest)) = k.split_once('@') else {
            continue;
        };
        snap.marked.insert(digest.to_string());
        for target in decode_manifest(e)?.references() {
            snap.marked.insert(target.to_string());
        }
        snap.manifests += 1;
    }
    let mut candidates = std::collections::BTreeMap::new();
    for (digest, e) in v.range_prefix(&BLOBS, "") {
        let rec = decode_blob(e)?;
        snap.blob_count += 1;
        snap.known.insert(digest.to_string());
        if snap.marked.contains(digest) {
            continue;
        }
        if rec.touched_unix_ms >= cutoff_unix_ms {
            snap.young += 1;
            continue;
        }
        candidates.insert(
            digest.to_string(),
            GcCandidate {
                digest: digest.to_string(),
                size: rec.size,
                repos: Vec::new(),
                version: e.modify_index,
            },
        );
    }
    if !candidates.is_empty() {
        for (k, _) in v.range_prefix(&LINKS, "") {
            if let Some((repo, digest)) = k.split_once('@') {
                if let Some(c) = candidates.get_mut(digest) {
                    c.repos.push(repo.to_string());
                }
            }
        }
    }
    snap.candidates = candidates.into_values().collect();
    Ok(snap)
}

impl ClusterMeta {
    async fn publish(
        &self,
        repo: String,
        digest: String,
        size: u64,
        now_unix_ms: u64,
    ) -> MetaResult<()> {
        for _ in 0..WRITE_ATTEMPTS {
            let (found, has_repo) = self
                .view(Consistency::Default, |v| {
                    Ok((blob_at(v, &digest)?, v.get(&REPOS, &repo).is_some()))
                })
                .await?;
            let (mut rec, version) = found.unwrap_or((
                BlobRecord {
                    size,
                    touched_unix_ms: now_unix_ms,
                    holders: BTreeSet::new(),
                },
                0,
            ));
            rec.size = size;
            rec.touched_unix_ms = now_unix_ms;
            rec.holders.insert(self.node.clone());
            let mut txn = Txn::new()
                .with(Op::put_cas(BLOBS, digest.clone(), encode(&rec)?, version))
                .with(Op::put(LINKS, link_key(&repo, &digest), Vec::new()));
            if !has_repo {
                txn = txn.with(Op::put(REPOS, repo.clone(), now_unix_ms.to_string()));
            }
            if self.write(txn).await? {
                return Ok(());
            }
        }
        Err(Self::lost_race("publishing a blob"))
    }

    async fn mount(
        &self,
        repo: String,
        from: Option<String>,
        digest: String,
        now_unix_ms: u64,
    ) -> MetaResult<Option<u64>> {
        for _ in 0..WRITE_ATTEMPTS {
            let (found, from_ok, has_repo) = self
                .view(Consistency::Default, |v| {
                    let from_ok = from
                        .as_ref()
                        .is_none_or(|f| v.get(&LINKS, &link_key(f, &digest)).is_some());
                    Ok((
                        blob_at(v, &digest)?,
                        from_ok,
                        v.get(&REPOS, &repo).is_some(),
                    ))
                })
                .await?;
            let Some((mut rec, version)) = found else {
                return Ok(None);
            };
            if !from_ok {
                return Ok(None);
            }
            // A mount is a use: restart the grace window.
            rec.touched_unix_ms = now_unix_ms;
            let mut txn = Txn::new()
                .with(Op::put_cas(BLOBS, digest.clone(), encode(&rec)?, version))
                .with(Op::put(LINKS, link_key(&repo, &digest), Vec::new()));
            if !has_repo {
                txn = txn.with(Op::put(REPOS, repo.clone(), now_unix_ms.to_string()));
            }
            if self.write(txn).await? {
                return Ok(Some(rec.size));
            }
        }
        Err(Self::lost_race("mounting a blob"))
    }
}
