//! On-disk record formats kept in the index. These are a storage format, not
//! a wire format: change them only together with a schema version bump.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::ParsedManifest;

pub const SCHEMA_VERSION: u64 = 1;

/// A manifest as known to one repository. The bytes live in the blob store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    pub created_unix_ms: u64,
    /// Config and layers.
    pub blobs: Vec<String>,
    /// Index children.
    pub manifests: Vec<String>,
    pub subject: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ManifestRecord {
    pub fn new(parsed: &ParsedManifest, size: u64, now_unix_ms: u64) -> ManifestRecord {
        ManifestRecord {
            media_type: parsed.media_type.clone(),
            size,
            created_unix_ms: now_unix_ms,
            blobs: parsed.blobs.iter().map(Digest::to_string).collect(),
            manifests: parsed.manifests.iter().map(Digest::to_string).collect(),
            subject: parsed.subject.as_ref().map(Digest::to_string),
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
        }
    }

    /// Everything this manifest keeps alive in the blob store.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.blobs
            .iter()
            .chain(self.manifests.iter())
            .chain(self.subject.iter())
            .map(String::as_str)
    }
}
