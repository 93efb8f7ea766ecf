//! Understanding a pushed manifest just enough to index it: its media type,
//! the blobs and manifests it references, its `subject` and the fields the
//! referrers API reports. The bytes themselves are stored untouched.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Non-distributable layers (OCI's `nondistributable` types in every compression, Docker's
/// "foreign" layers) live elsewhere (their `urls`); a registry does not hold them, so they are
/// not required to exist. Prefixes: the compression suffix (`+gzip`, `+zstd`, none) varies.
const FOREIGN_LAYER_TYPE_PREFIXES: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

fn is_non_distributable(media_type: &str) -> bool {
    FOREIGN_LAYER_TYPE_PREFIXES
        .iter()
        .any(|prefix| media_type.starts_with(prefix))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest is invalid: {0}")]
    Shape(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: ManifestKind,
    /// Config and layers that must exist as blobs in the repository.
    pub blobs: Vec<Digest>,
    /// Index children that must exist as manifests in the repository.
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    /// What the referrers API reports: `artifactType`, or for an image
    /// manifest without one, its config media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<WireDescriptor>,
    layers: Option<Vec<WireDescriptor>>,
    manifests: Option<Vec<WireDescriptor>>,
    subject: Option<WireDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

struct Descriptor {
    media_type: String,
    digest: Digest,
    foreign: bool,
}

fn descriptor(field: &str, d: &WireDescriptor) -> Result<Descriptor, ManifestError> {
    let media_type = match d.media_type.as_deref() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(ManifestError::Shape(format!(
                "{field}: descriptor without mediaType"
            )))
        }
    };
    let digest = d
        .digest
        .as_deref()
        .ok_or_else(|| ManifestError::Shape(format!("{field}: descriptor without digest")))
        .and_then(|s| {
            Digest::parse(s).map_err(|e| ManifestError::Shape(format!("{field}: {e}")))
        })?;
    match &d.size {
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {}
        _ => {
            return Err(ManifestError::Shape(format!(
                "{field}: descriptor size must be a non-negative integer"
            )))
        }
    }
    let foreign = is_non_distributable(&media_type);
    Ok(Descriptor {
        media_type,
        digest,
        foreign,
    })
}

/// The media type without parameters, lower-cased; None for "no opinion"
/// (absent, or a generic JSON/binary type some clients send).
fn specific_content_type(content_type: Option<&str>) -> Option<String> {
    let ct = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    match ct.as_str() {
        "" | "application/json" | "application/octet-stream" | "*/*" => None,
        _ => Some(ct),
    }
}

pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(ManifestError::Shape(
            "a manifest must be a JSON object".into(),
        ));
    }
    let wire: WireManifest =
        serde_json::from_value(value).map_err(|e| ManifestError::Shape(e.to_string()))?;
    match &wire.schema_version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(2) => {}
        _ => return Err(ManifestError::Shape("schemaVersion must be 2".into())),
    }

    let header_type = specific_content_type(content_type);
    let body_type = wire.media_type.clone().filter(|m| !m.is_empty());
    let media_type = match (header_type, body_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::Shape(format!(
                "Content-Type {h:?} differs from the manifest's mediaType {b:?}"
            )))
        }
        (Some(h), _) => h,
        (None, Some(b)) => b,
        (None, None) if wire.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_LIST => ManifestKind::Index,
        _ => return Err(ManifestError::UnsupportedMediaType(media_type)),
    };

    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut artifact_type = wire.artifact_type.clone().filter(|a| !a.is_empty());
    match kind {
        ManifestKind::Image => {
            let config = wire
                .config
                .as_ref()
                .ok_or_else(|| ManifestError::Shape("image manifest without config".into()))?;
            let config = descriptor("config", config)?;
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
            blobs.push(config.digest);
            let layers = wire
                .layers
                .as_ref()
                .ok_or_else(|| ManifestError::Shape("image manifest without layers".into()))?;
            for (i, layer) in layers.iter().enumerate() {
                let layer = descriptor(&format!("layers[{i}]"), layer)?;
                if !layer.foreign {
                    blobs.push(layer.digest);
                }
            }
        }
        ManifestKind::Index => {
            let children = wire
                .manifests
                .as_ref()
                .ok_or_else(|| ManifestError::Shape("index without manifests".into()))?;
            for (i, child) in children.iter().enumerate() {
                manifests.push(descriptor(&format!("manifests[{i}]"), child)?.digest);
            }
        }
    }
    let subject = match &wire.subject {
        Some(s) => Some(descriptor("subject", s)?.digest),
        None => None,
    };
    blobs.sort();
    blobs.dedup();
    manifests.sort();
    manifests.dedup();
    Ok(ParsedManifest {
        media_type,
        kind,
        blobs,
        manifests,
        subject,
        artifact_type,
        annotations: wire.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::sha256_of(&[n]).to_string()
    }

    #[test]
    fn image_manifest_with_subject() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/x-sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d(1), "size": 2},
            "layers": [{"mediaType": "x", "digest": d(2), "size": 5}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d(3), "size": 7},
            "annotations": {"a": "b"}
        });
        let m = parse(Some(OCI_MANIFEST), body.to_string().as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.subject.unwrap().to_string(), d(3));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
    }

    #[test]
    fn every_non_distributable_layer_type_is_foreign() {
        for media_type in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d(1), "size": 2},
                "layers": [{"mediaType": media_type, "digest": d(2), "size": 5,
                            "urls": ["https://example.com/layer"]}],
            });
            let m = parse(Some(OCI_MANIFEST), body.to_string().as_bytes()).unwrap();
            let required: Vec<String> = m.blobs.iter().map(|b| b.to_string()).collect();
            assert_eq!(
                required,
                vec![d(1)],
                "{media_type}: only the config is required, the non-distributable layer is not"
            );
        }
        assert!(!is_non_distributable(
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(parse(None, b"{"), Err(ManifestError::Json(_))));
        assert!(matches!(parse(None, b"[]"), Err(ManifestError::Shape(_))));
        assert!(matches!(
            parse(None, br#"{"schemaVersion":1}"#),
            Err(ManifestError::Shape(_))
        ));
        let no_layers = serde_json::json!({"schemaVersion":2,"config":{"mediaType":"x","digest":d(1),"size":1}});
        assert!(matches!(
            parse(Some(OCI_MANIFEST), no_layers.to_string().as_bytes()),
            Err(ManifestError::Shape(_))
        ));
        let mismatch = serde_json::json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[]});
        assert!(matches!(
            parse(Some(OCI_MANIFEST), mismatch.to_string().as_bytes()),
            Err(ManifestError::Shape(_))
        ));
        let ok = parse(Some("application/json"), mismatch.to_string().as_bytes()).unwrap();
        assert_eq!(ok.kind, ManifestKind::Index);
        let bad_digest = serde_json::json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]});
        assert!(parse(None, bad_digest.to_string().as_bytes()).is_err());
    }
}
