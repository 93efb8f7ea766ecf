//! One registry for a whole cluster of servers.
//!
//! - Repositories, tags, manifests, blob records and reverse references live in
//!   the replicated store (tables `registry_*`), so every server answers the
//!   same and a push on one is visible on all once acknowledged.
//! - A blob record lists the servers holding the bytes (`holders`). A push is
//!   acknowledged once the bytes are durable on the server that took it;
//!   [`replicate`] then makes sure, level-triggered, that every blob has
//!   `replicas` holders: each server compares the records with its own disk on
//!   every pass, fetches what it was picked to hold, drops itself from records
//!   whose file it lost, and (every `scrub_every`) re-hashes what it holds.
//! - A pull of a blob the contacted server lacks streams it from a holder
//!   (verified, then kept): see [`crate::fetch`].
//! - GC runs on records in the store (guarded by each record's version, so a
//!   manifest push that touched a blob since the mark saves it); each server's
//!   GC deletes the files that no record lists any more.

mod meta;
mod replicate;
mod writes;

use std::collections::BTreeSet;

use pier_store::Table;
use serde::{Deserialize, Serialize};

pub use meta::{ClusterMeta, PEER_BLOB_PATH};
pub use replicate::{replicate, ReplicationConfig};

pub const REPOS: Table = Table::from_static("registry_repos");
pub const BLOBS: Table = Table::from_static("registry_blobs");
/// `repo@digest`: the blob may be fetched through that repository.
pub const LINKS: Table = Table::from_static("registry_links");
/// `repo@digest` → manifest record (JSON).
pub const MANIFESTS: Table = Table::from_static("registry_manifests");
/// `repo:tag` → digest.
pub const TAGS: Table = Table::from_static("registry_tags");
/// `repo@subject@referrer`.
pub const REFERRERS: Table = Table::from_static("registry_referrers");
/// `target@repo@manifest`: what keeps a blob alive (GC re-checks it).
pub const REFS: Table = Table::from_static("registry_refs");
/// server name → the registry address it advertises (`host:port`).
pub const ENDPOINTS: Table = Table::from_static("registry_endpoints");

/// A blob as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    /// Published, re-uploaded, mounted or referenced by a new manifest; GC's
    /// grace window runs from here.
    pub touched_unix_ms: u64,
    /// Servers whose blob store holds the verified bytes.
    #[serde(default)]
    pub holders: BTreeSet<String>,
}

pub(crate) fn link_key(repo: &str, digest: &str) -> String {
    format!("{repo}@{digest}")
}

pub(crate) fn tag_key(repo: &str, tag: &str) -> String {
    format!("{repo}:{tag}")
}

pub(crate) fn ref_key(target: &str, repo: &str, manifest: &str) -> String {
    format!("{target}@{repo}@{manifest}")
}

pub(crate) fn referrer_key(repo: &str, subject: &str, referrer: &str) -> String {
    format!("{repo}@{subject}@{referrer}")
}
