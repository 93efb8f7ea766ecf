//! The guarded multi-key writes of [`ClusterMeta`]: a manifest push, a
//! manifest delete and GC's sweep. Each reads, builds one transaction guarded
//! by the versions it read, and starts over when a concurrent write won.

use std::collections::BTreeSet;

use pier_store::{Consistency, Op, StateView, Txn};

use super::meta::{blob_at, decode_manifest, encode, ClusterMeta, WRITE_ATTEMPTS};
use super::{
    link_key, ref_key, referrer_key, tag_key, BlobRecord, BLOBS, LINKS, MANIFESTS, REFERRERS, REFS,
    REPOS, TAGS,
};
use crate::index::meta::MetaResult;
use crate::index::records::ManifestRecord;
use crate::index::{GcCandidate, PutOutcome};
use crate::names::Tag;

/// What a manifest push writes, given what it read.
struct ManifestPut<'a> {
    repo: &'a str,
    digest: &'a str,
    record: &'a ManifestRecord,
    encoded: &'a [u8],
    tags: &'a [Tag],
    now_unix_ms: u64,
}

impl ManifestPut<'_> {
    /// The guarded transaction, or the references that do not exist in the repository.
    fn plan(&self, v: &StateView<'_>, node: &str) -> MetaResult<Result<Txn, Vec<String>>> {
        let (repo, digest, now) = (self.repo, self.digest, self.now_unix_ms);
        let mut missing = Vec::new();
        let mut txn = Txn::new();
        let blobs: BTreeSet<&String> = self.record.blobs.iter().collect();
        for b in blobs {
            let link = v.get(&LINKS, &link_key(repo, b));
            match (link, blob_at(v, b)?) {
                (Some(l), Some((mut rec, version))) => {
                    // Touching the record is what a concurrent GC sweep's guard sees.
                    rec.touched_unix_ms = now;
                    txn = txn
                        .with(Op::check(LINKS, link_key(repo, b), l.modify_index))
                        .with(Op::put_cas(BLOBS, b.clone(), encode(&rec)?, version));
                }
                _ => missing.push(b.clone()),
            }
        }
        let children: BTreeSet<&String> = self.record.manifests.iter().collect();
        for c in children {
            match v.get(&MANIFESTS, &link_key(repo, c)) {
                Some(e) => txn = txn.with(Op::check(MANIFESTS, link_key(repo, c), e.modify_index)),
                None => missing.push(c.clone()),
            }
        }
        if !missing.is_empty() {
            return Ok(Err(missing));
        }
        let (mut own, version) = blob_at(v, digest)?.unwrap_or((
            BlobRecord {
                size: self.record.size,
                touched_unix_ms: now,
                holders: BTreeSet::new(),
            },
            0,
        ));
        own.size = self.record.size;
        own.touched_unix_ms = now;
        own.holders.insert(node.to_string());
        txn = txn.with(Op::put_cas(BLOBS, digest, encode(&own)?, version));
        if v.get(&REPOS, repo).is_none() {
            txn = txn.with(Op::put(REPOS, repo, now.to_string()));
        }
        txn = txn.with(Op::put(
            MANIFESTS,
            link_key(repo, digest),
            self.encoded.to_vec(),
        ));
        let mut targets: BTreeSet<&str> = self.record.references().collect();
        targets.insert(digest);
        for t in targets {
            txn = txn.with(Op::put(REFS, ref_key(t, repo, digest), Vec::new()));
        }
        if let Some(subject) = &self.record.subject {
            txn = txn.with(Op::put(
                REFERRERS,
                referrer_key(repo, subject, digest),
                Vec::new(),
            ));
        }
        let tags: BTreeSet<&str> = self.tags.iter().map(Tag::as_str).collect();
        for tag in tags {
            txn = txn.with(Op::put(
                TAGS,
                tag_key(repo, tag),
                digest.as_bytes().to_vec(),
            ));
        }
        Ok(Ok(txn))
    }
}

fn delete_cas(table: pier_store::Table, key: String, version: u64) -> Op {
    Op::Delete {
        table,
        key,
        cas: Some(version),
    }
}

/// The transaction deleting manifest `digest` from `repo` with its tags, or None if absent.
fn plan_manifest_delete(v: &StateView<'_>, repo: &str, digest: &str) -> MetaResult<Option<Txn>> {
    let key = link_key(repo, digest);
    let Some(e) = v.get(&MANIFESTS, &key) else {
        return Ok(None);
    };
    let record = decode_manifest(e)?;
    let mut txn = Txn::new().with(delete_cas(MANIFESTS, key, e.modify_index));
    let mut targets: BTreeSet<&str> = record.references().collect();
    targets.insert(digest);
    for t in targets {
        txn = txn.with(Op::delete(REFS, ref_key(t, repo, digest)));
    }
    if let Some(subject) = &record.subject {
        txn = txn.with(Op::delete(REFERRERS, referrer_key(repo, subject, digest)));
    }
    for (k, e) in v.range_prefix(&TAGS, &tag_key(repo, "")) {
        if e.value == digest.as_bytes() {
            txn = txn.with(Op::delete(TAGS, k.to_string()));
        }
    }
    Ok(Some(txn))
}

impl ClusterMeta {
    pub(super) async fn put_manifest_rec(
        &self,
        repo: String,
        digest: String,
        record: ManifestRecord,
        tags: Vec<Tag>,
        now_unix_ms: u64,
    ) -> MetaResult<PutOutcome> {
        let encoded = encode(&record)?;
        let put = ManifestPut {
            repo: &repo,
            digest: &digest,
            record: &record,
            encoded: &encoded,
            tags: &tags,
            now_unix_ms,
        };
        for _ in 0..WRITE_ATTEMPTS {
            let plan = self
                .view(Consistency::Default, |v| put.plan(v, &self.node))
                .await?;
            match plan {
                Err(missing) => return Ok(PutOutcome::Missing(missing)),
                Ok(txn) => {
                    if self.write(txn).await? {
                        return Ok(PutOutcome::Stored);
                    }
                }
            }
        }
        Err(Self::lost_race("storing a manifest"))
    }

    pub(super) async fn delete_manifest_rec(
        &self,
        repo: String,
        digest: String,
    ) -> MetaResult<bool> {
        for _ in 0..WRITE_ATTEMPTS {
            let plan = self
                .view(Consistency::Default, |v| {
                    plan_manifest_delete(v, &repo, &digest)
                })
                .await?;
            let Some(txn) = plan else { return Ok(false) };
            if self.write(txn).await? {
                return Ok(true);
            }
        }
        Err(Self::lost_race("deleting a manifest"))
    }

    /// GC's sweep: removes each candidate's record only if it is the version
    /// the mark saw, still old, and nothing references it.
    pub(super) async fn gc_sweep(
        &self,
        candidates: Vec<GcCandidate>,
        cutoff_unix_ms: u64,
    ) -> MetaResult<Vec<GcCandidate>> {
        let mut removed = Vec::new();
        for c in candidates {
            let plan = self
                .view(Consistency::Default, |v| {
                    let Some((rec, version)) = blob_at(v, &c.digest)? else {
                        return Ok(None);
                    };
                    let referenced = v
                        .range_prefix(&REFS, &format!("{}@", c.digest))
                        .next()
                        .is_some();
                    if version != c.version || rec.touched_unix_ms >= cutoff_unix_ms || referenced {
                        return Ok(None);
                    }
                    let mut txn = Txn::new().with(delete_cas(BLOBS, c.digest.clone(), version));
                    for repo in &c.repos {
                        txn = txn.with(Op::delete(LINKS, link_key(repo, &c.digest)));
                    }
                    Ok(Some(txn))
                })
                .await?;
            if let Some(txn) = plan {
                if self.write(txn).await? {
                    removed.push(c);
                }
            }
        }
        Ok(removed)
    }
}
