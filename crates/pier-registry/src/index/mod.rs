//! The metadata index: repositories, blob links, manifests, tags, referrers,
//! kept in one redb file so that listing and existence checks never touch the
//! blob store. redb readers work on an MVCC snapshot and never wait for a
//! writer, which is what keeps HEAD/GET independent of pushes.
//!
//! Tables:
//! - `repos`: repository → creation time.
//! - `blobs`: digest → (size, last touched). "Touched" is the publish time,
//!   refreshed by a re-upload or a mount; GC's grace window is measured from it.
//! - `repo_blobs`: (repository, digest): the blob may be fetched through that repository.
//! - `manifests`: (repository, digest) → [`ManifestRecord`].
//! - `tags`: (repository, tag) → digest.
//! - `referrers`: (repository, subject digest, referrer digest).
//! - `refs`: (target digest, repository, manifest digest): reverse references,
//!   including each manifest's reference to itself. GC re-checks a candidate
//!   against this table inside its write transaction, so a manifest committed
//!   after GC's mark snapshot still protects its blobs.
//!
//! Writes are synchronous and block on redb's single writer: call them from
//! `spawn_blocking`.

pub mod meta;
pub mod records;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::digest::Digest;
use crate::names::{Reference, Tag};
use records::{ManifestRecord, SCHEMA_VERSION};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
const REPO_BLOBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("repo_blobs");
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
const REFERRERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("referrers");
const REFS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("refs");

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    #[error("index is corrupt: {0}")]
    Corrupt(String),
    #[error("index schema version {found} is not supported (expected {SCHEMA_VERSION})")]
    Schema { found: u64 },
    /// The cluster's replicated store could not serve the operation (no leader, say).
    #[error("cluster metadata: {0}")]
    Cluster(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

type Result<T> = std::result::Result<T, IndexError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
    pub touched_unix_ms: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// More entries follow the last one returned.
    pub more: bool,
}

pub enum PutOutcome {
    Stored,
    /// References that do not exist in the repository; nothing was written.
    Missing(Vec<String>),
}

/// What GC's mark phase saw in one consistent snapshot.
#[derive(Debug, Default)]
pub struct GcSnapshot {
    pub manifests: usize,
    pub marked: HashSet<String>,
    pub blob_count: usize,
    /// Unmarked blobs touched before the cutoff, with their size and the
    /// repositories linking them.
    pub candidates: Vec<GcCandidate>,
    /// Unmarked blobs still inside the grace window.
    pub young: usize,
    pub known: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct GcCandidate {
    pub digest: String,
    pub size: u64,
    pub repos: Vec<String>,
    /// The version of the blob's record the snapshot saw (a cluster removes it
    /// only if unchanged since); 0 for the local index, which re-checks in one
    /// write transaction instead.
    pub version: u64,
}

pub struct Index {
    db: Database,
}

fn corrupt(what: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt(what.to_string())
}

fn decode_record(bytes: &[u8]) -> Result<ManifestRecord> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("manifest record: {e}")))
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| corrupt(format!("stored digest {s:?}: {e}")))
}

fn collect_page<'a>(
    iter: impl Iterator<Item = std::result::Result<String, redb::StorageError>> + 'a,
    limit: Option<usize>,
) -> Result<Page> {
    let mut page = Page::default();
    for item in iter {
        let item = item?;
        if limit.is_some_and(|n| page.items.len() >= n) {
            page.more = true;
            break;
        }
        page.items.push(item);
    }
    Ok(page)
}

impl Index {
    pub fn open(path: &Path) -> Result<Index> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(found) => return Err(IndexError::Schema { found }),
            }
            txn.open_table(REPOS)?;
            txn.open_table(BLOBS)?;
            txn.open_table(REPO_BLOBS)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(TAGS)?;
            txn.open_table(REFERRERS)?;
            txn.open_table(REFS)?;
        }
        txn.commit()?;
        Ok(Index { db })
    }

    // ---- reads: snapshot transactions, never blocked by writers ----

    pub fn repo_exists(&self, repo: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(REPOS)?.get(repo)?.is_some())
    }

    /// The blob's size when `repo` may serve it.
    pub fn repo_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let key = digest.to_string();
        if txn
            .open_table(REPO_BLOBS)?
            .get((repo, key.as_str()))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(txn
            .open_table(BLOBS)?
            .get(key.as_str())?
            .map(|v| v.value().0))
    }

    pub fn blob(&self, digest: &str) -> Result<Option<BlobInfo>> {
        let txn = self.db.begin_read()?;
        let info = txn.open_table(BLOBS)?.get(digest)?.map(|v| {
            let (size, touched_unix_ms) = v.value();
            BlobInfo {
                size,
                touched_unix_ms,
            }
        });
        Ok(info)
    }

    pub fn resolve_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<(Digest, ManifestRecord)>> {
        let txn = self.db.begin_read()?;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => match txn.open_table(TAGS)?.get((repo, tag.as_str()))? {
                Some(v) => parse_digest(v.value())?,
                None => return Ok(None),
            },
        };
        let key = digest.to_string();
        let record = match txn.open_table(MANIFESTS)?.get((repo, key.as_str()))? {
            Some(v) => decode_record(v.value())?,
            None => return Ok(None),
        };
        Ok(Some((digest, record)))
    }

    /// Tags of `repo` in byte order after `last`; None when the repository is unknown.
    pub fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<Page>> {
        let txn = self.db.begin_read()?;
        if txn.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let table = txn.open_table(TAGS)?;
        let start = match last {
            Some(last) => Bound::Excluded((repo, last)),
            None => Bound::Included((repo, "")),
        };
        let range = table.range::<(&str, &str)>((start, Bound::Unbounded))?;
        let iter = range
            .map(|r| {
                r.map(|(k, _)| {
                    let (r, tag) = k.value();
                    (r == repo).then(|| tag.to_string())
                })
            })
            .take_while(|r| !matches!(r, Ok(None)))
            .map(|r| r.map(Option::unwrap_or_default));
        collect_page(iter, limit).map(Some)
    }

    pub fn catalog(&self, last: Option<&str>, limit: Option<usize>) -> Result<Page> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPOS)?;
        let start = match last {
            Some(last) => Bound::Excluded(last),
            None => Bound::Unbounded,
        };
        let range = table.range::<&str>((start, Bound::Unbounded))?;
        collect_page(range.map(|r| r.map(|(k, _)| k.value().to_string())), limit)
    }

    /// Manifests of `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>> {
        let txn = self.db.begin_read()?;
        let subject = subject.to_string();
        let referrers = txn.open_table(REFERRERS)?;
        let manifests = txn.open_table(MANIFESTS)?;
        let mut out = Vec::new();
        for entry in referrers.range::<(&str, &str, &str)>((repo, subject.as_str(), "")..)? {
            let (key, _) = entry?;
            let (r, s, referrer) = key.value();
            if r != repo || s != subject {
                break;
            }
            if let Some(v) = manifests.get((repo, referrer))? {
                out.push((parse_digest(referrer)?, decode_record(v.value())?));
            }
        }
        Ok(out)
    }

    // ---- writes ----

    fn ensure_repo(txn: &redb::WriteTransaction, repo: &str, now_unix_ms: u64) -> Result<()> {
        let mut repos = txn.open_table(REPOS)?;
        if repos.get(repo)?.is_none() {
            repos.insert(repo, now_unix_ms)?;
        }
        Ok(())
    }

    /// Records a blob that is now durable in the store and links it to `repo`.
    pub fn publish_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        now_unix_ms: u64,
    ) -> Result<()> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        Self::ensure_repo(&txn, repo, now_unix_ms)?;
        txn.open_table(BLOBS)?
            .insert(key.as_str(), (size, now_unix_ms))?;
        txn.open_table(REPO_BLOBS)?
            .insert((repo, key.as_str()), ())?;
        txn.commit()?;
        Ok(())
    }

    /// Links an existing blob into `repo`. With `from`, only if that
    /// repository has it. Returns its size, or None when it cannot be mounted.
    pub fn mount_blob(
        &self,
        repo: &str,
        from: Option<&str>,
        digest: &Digest,
        now_unix_ms: u64,
    ) -> Result<Option<u64>> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        let size = {
            let mut blobs = txn.open_table(BLOBS)?;
            let size = blobs.get(key.as_str())?.map(|v| v.value().0);
            let Some(size) = size else { return Ok(None) };
            if let Some(from) = from {
                if txn
                    .open_table(REPO_BLOBS)?
                    .get((from, key.as_str()))?
                    .is_none()
                {
                    return Ok(None);
                }
            }
            // A mount is a use: restart the grace window so GC does not take
            // the blob away before the manifest that needs it arrives.
            blobs.insert(key.as_str(), (size, now_unix_ms))?;
            size
        };
        Self::ensure_repo(&txn, repo, now_unix_ms)?;
        txn.open_table(REPO_BLOBS)?
            .insert((repo, key.as_str()), ())?;
        txn.commit()?;
        Ok(Some(size))
    }

    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        let removed = txn
            .open_table(REPO_BLOBS)?
            .remove((repo, key.as_str()))?
            .is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Stores a manifest (its bytes are already durable in the blob store)
    /// after checking, in the same transaction, that everything it
    /// references exists in the repository.
    pub fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        record: &ManifestRecord,
        tags: &[Tag],
        now_unix_ms: u64,
    ) -> Result<PutOutcome> {
        let key = digest.to_string();
        let encoded = serde_json::to_vec(record)
            .map_err(|e| corrupt(format!("encoding manifest record: {e}")))?;
        let txn = self.db.begin_write()?;
        {
            let mut missing = Vec::new();
            let repo_blobs = txn.open_table(REPO_BLOBS)?;
            let blobs = txn.open_table(BLOBS)?;
            for blob in &record.blobs {
                let linked = repo_blobs.get((repo, blob.as_str()))?.is_some();
                if !linked || blobs.get(blob.as_str())?.is_none() {
                    missing.push(blob.clone());
                }
            }
            let manifests = txn.open_table(MANIFESTS)?;
            for child in &record.manifests {
                if manifests.get((repo, child.as_str()))?.is_none() {
                    missing.push(child.clone());
                }
            }
            if !missing.is_empty() {
                drop((repo_blobs, blobs, manifests));
                txn.abort()?;
                return Ok(PutOutcome::Missing(missing));
            }
        }
        Self::ensure_repo(&txn, repo, now_unix_ms)?;
        txn.open_table(BLOBS)?
            .insert(key.as_str(), (record.size, now_unix_ms))?;
        {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let previous = manifests
                .insert((repo, key.as_str()), encoded.as_slice())?
                .map(|v| v.value().to_vec());
            let mut refs = txn.open_table(REFS)?;
            if let Some(previous) = previous {
                // Identical bytes, so identical references; still drop the
                // old entries in case an older build indexed them differently.
                for target in decode_record(&previous)?.references() {
                    refs.remove((target, repo, key.as_str()))?;
                }
            }
            refs.insert((key.as_str(), repo, key.as_str()), ())?;
            for target in record.references() {
                refs.insert((target, repo, key.as_str()), ())?;
            }
        }
        if let Some(subject) = &record.subject {
            txn.open_table(REFERRERS)?
                .insert((repo, subject.as_str(), key.as_str()), ())?;
        }
        {
            let mut table = txn.open_table(TAGS)?;
            for tag in tags {
                table.insert((repo, tag.as_str()), key.as_str())?;
            }
        }
        txn.commit()?;
        Ok(PutOutcome::Stored)
    }

    /// Deletes a manifest from `repo` with every tag pointing at it.
    pub fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let Some(removed) = manifests
                .remove((repo, key.as_str()))?
                .map(|v| v.value().to_vec())
            else {
                drop(manifests);
                txn.abort()?;
                return Ok(false);
            };
            let record = decode_record(&removed)?;
            let mut refs = txn.open_table(REFS)?;
            refs.remove((key.as_str(), repo, key.as_str()))?;
            for target in record.references() {
                refs.remove((target, repo, key.as_str()))?;
            }
            if let Some(subject) = &record.subject {
                txn.open_table(REFERRERS)?
                    .remove((repo, subject.as_str(), key.as_str()))?;
            }
            let mut tags = txn.open_table(TAGS)?;
            let mut pointing = Vec::new();
            for entry in tags.range::<(&str, &str)>((repo, "")..)? {
                let (k, v) = entry?;
                let (r, tag) = k.value();
                if r != repo {
                    break;
                }
                if v.value() == key {
                    pointing.push(tag.to_string());
                }
            }
            for tag in pointing {
                tags.remove((repo, tag.as_str()))?;
            }
        }
        txn.commit()?;
        Ok(true)
    }

    pub fn delete_tag(&self, repo: &str, tag: &Tag) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let removed = txn
            .open_table(TAGS)?
            .remove((repo, tag.as_str()))?
            .is_some();
        txn.commit()?;
        Ok(removed)
    }

    // ---- garbage collection ----

    /// Mark phase: every manifest is a root (untagged manifests are kept
    /// until deleted, as in distribution); it marks itself, its config and
    /// layers, its index children and its subject.
    pub fn gc_snapshot(&self, cutoff_unix_ms: u64) -> Result<GcSnapshot> {
        let txn = self.db.begin_read()?;
        let mut snap = GcSnapshot::default();
        for entry in txn.open_table(MANIFESTS)?.iter()? {
            let (k, v) = entry?;
            let (_, digest) = k.value();
            snap.marked.insert(digest.to_string());
            for target in decode_record(v.value())?.references() {
                snap.marked.insert(target.to_string());
            }
            snap.manifests += 1;
        }
        let mut candidates: HashMap<String, GcCandidate> = HashMap::new();
        for entry in txn.open_table(BLOBS)?.iter()? {
            let (k, v) = entry?;
            let digest = k.value();
            let (size, touched) = v.value();
            snap.blob_count += 1;
            snap.known.insert(digest.to_string());
            if snap.marked.contains(digest) {
                continue;
            }
            if touched >= cutoff_unix_ms {
                snap.young += 1;
                continue;
            }
            candidates.insert(
                digest.to_string(),
                GcCandidate {
                    digest: digest.to_string(),
                    size,
                    repos: Vec::new(),
                    version: 0,
                },
            );
        }
        if !candidates.is_empty() {
            for entry in txn.open_table(REPO_BLOBS)?.iter()? {
                let (k, _) = entry?;
                let (repo, digest) = k.value();
                if let Some(c) = candidates.get_mut(digest) {
                    c.repos.push(repo.to_string());
                }
            }
        }
        snap.candidates = candidates.into_values().collect();
        snap.candidates.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(snap)
    }

    /// Sweep, in one short write transaction: removes the records of the
    /// candidates that are still unreferenced and still older than the
    /// cutoff (a manifest or a re-upload since the snapshot saves a blob).
    /// Returns the digests whose files may now be deleted.
    pub fn gc_remove(
        &self,
        candidates: &[GcCandidate],
        cutoff_unix_ms: u64,
    ) -> Result<Vec<GcCandidate>> {
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let refs = txn.open_table(REFS)?;
            let mut links = txn.open_table(REPO_BLOBS)?;
            for c in candidates {
                let touched = match blobs.get(c.digest.as_str())? {
                    Some(v) => v.value().1,
                    None => continue,
                };
                if touched >= cutoff_unix_ms {
                    continue;
                }
                let referenced = match refs
                    .range::<(&str, &str, &str)>((c.digest.as_str(), "", "")..)?
                    .next()
                {
                    Some(entry) => entry?.0.value().0 == c.digest,
                    None => false,
                };
                if referenced {
                    continue;
                }
                blobs.remove(c.digest.as_str())?;
                for repo in &c.repos {
                    links.remove((repo.as_str(), c.digest.as_str()))?;
                }
                removed.push(c.clone());
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn record(blobs: &[&Digest], subject: Option<&Digest>) -> ManifestRecord {
        let parsed = manifest::ParsedManifest {
            media_type: manifest::OCI_MANIFEST.into(),
            kind: manifest::ManifestKind::Image,
            blobs: blobs.iter().map(|d| (*d).clone()).collect(),
            manifests: vec![],
            subject: subject.cloned(),
            artifact_type: Some("x".into()),
            annotations: None,
        };
        ManifestRecord::new(&parsed, 10, 1)
    }

    #[test]
    fn tags_pages_and_gc_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.redb")).unwrap();
        let layer = Digest::sha256_of(b"layer");
        let m = Digest::sha256_of(b"m");
        index.publish_blob("a/b", &layer, 5, 100).unwrap();
        assert_eq!(index.repo_blob("a/b", &layer).unwrap(), Some(5));
        assert_eq!(index.repo_blob("other", &layer).unwrap(), None);
        let tags: Vec<Tag> = ["v1", "v2", "v3"]
            .iter()
            .map(|t| Tag::parse(t).unwrap())
            .collect();
        assert!(matches!(
            index
                .put_manifest("a/b", &m, &record(&[&layer], None), &tags, 100)
                .unwrap(),
            PutOutcome::Stored
        ));
        let page = index.tags("a/b", None, Some(2)).unwrap().unwrap();
        assert_eq!(
            page,
            Page {
                items: vec!["v1".into(), "v2".into()],
                more: true
            }
        );
        let page = index.tags("a/b", Some("v2"), Some(2)).unwrap().unwrap();
        assert_eq!(
            page,
            Page {
                items: vec!["v3".into()],
                more: false
            }
        );
        assert!(index.tags("nope", None, None).unwrap().is_none());

        // The layer is referenced: a stale snapshot that lists it as a
        // candidate must not remove it.
        let stale = GcCandidate {
            digest: layer.to_string(),
            size: 5,
            repos: vec!["a/b".into()],
            version: 0,
        };
        assert!(index
            .gc_remove(std::slice::from_ref(&stale), 1_000)
            .unwrap()
            .is_empty());
        assert!(index.delete_manifest("a/b", &m).unwrap());
        assert!(index
            .tags("a/b", None, None)
            .unwrap()
            .unwrap()
            .items
            .is_empty());
        let snap = index.gc_snapshot(1_000).unwrap();
        let digests: Vec<_> = snap.candidates.iter().map(|c| c.digest.clone()).collect();
        assert!(digests.contains(&layer.to_string()));
        let removed = index.gc_remove(&snap.candidates, 1_000).unwrap();
        assert!(removed.iter().any(|c| c.digest == layer.to_string()));
        assert_eq!(index.repo_blob("a/b", &layer).unwrap(), None);
    }
}
