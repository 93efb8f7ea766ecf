//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{header, HeaderMap, Method, StatusCode};

use super::{empty, finish, util};
use crate::digest::Digest;
use crate::manifest::MANIFEST_MEDIA_TYPES;
use crate::names::{NameError, Reference, RepoName, Tag};
use crate::{Inner, RegistryError};

/// A reference is a digest when it has a colon (tags cannot), else a tag.
fn reference(
    raw: &str,
    bad_tag: impl FnOnce(NameError) -> RegistryError,
) -> Result<Reference, RegistryError> {
    if raw.contains(':') {
        Ok(Reference::Digest(Digest::parse(raw)?))
    } else {
        Tag::parse(raw).map(Reference::Tag).map_err(bad_tag)
    }
}

/// Whether the client's `Accept` allows `media_type`. A client that lists no
/// manifest type at all (none, `*/*`, `application/json`) gets what is
/// stored; one that lists manifest types gets only those.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut lists_manifest_types = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.eq_ignore_ascii_case(media_type) || t == "*/*" {
                return true;
            }
            if MANIFEST_MEDIA_TYPES
                .iter()
                .any(|m| t.eq_ignore_ascii_case(m))
            {
                lists_manifest_types = true;
            }
        }
    }
    !lists_manifest_types
}

pub(super) async fn get(
    inner: &Inner,
    name: &RepoName,
    raw: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let reference = reference(raw, |_| {
        RegistryError::ManifestUnknown(raw.chars().take(200).collect())
    })?;
    let stored = inner.manifest(name, &reference).await?;
    if !accepts(req.headers(), &stored.record.media_type) {
        return Err(RegistryError::ManifestUnknown(format!(
            "{reference} is a {} manifest, which the Accept header does not allow",
            stored.record.media_type
        )));
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, stored.record.media_type.as_str())
        .header("docker-content-digest", stored.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", stored.digest))
        .header(header::CONTENT_LENGTH, stored.record.size);
    if req.method() == Method::HEAD {
        return finish(builder, Body::empty());
    }
    let bytes = inner.manifest_bytes(&stored).await?;
    inner.metrics.bytes_out.inc_by(bytes.len() as u64);
    finish(builder, Body::from(bytes))
}

async fn read_limited(inner: &Inner, req: Request) -> Result<Bytes, RegistryError> {
    let limit = inner.cfg.max_manifest_bytes;
    if let Some(len) = util::content_length(req.headers()) {
        if len > limit {
            return Err(RegistryError::ManifestTooLarge { size: len, limit });
        }
    }
    let mut body = req.into_body().into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(|e| RegistryError::ClientBody(e.to_string()))?;
        if buf.len() as u64 + frame.len() as u64 > limit {
            return Err(RegistryError::ManifestTooLarge {
                size: buf.len() as u64 + frame.len() as u64,
                limit,
            });
        }
        buf.extend_from_slice(&frame);
    }
    inner.metrics.bytes_in.inc_by(buf.len() as u64);
    Ok(buf.freeze())
}

pub(super) async fn put(
    inner: &Inner,
    name: &RepoName,
    raw: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let reference = reference(raw, |e| {
        RegistryError::ManifestInvalid(crate::manifest::ManifestError::Shape(e.to_string()))
    })?;
    let query = util::Query::parse(req.uri().query());
    let mut extra_tags = Vec::new();
    for t in query.all("tag") {
        extra_tags.push(Tag::parse(t).map_err(|e| {
            RegistryError::ManifestInvalid(crate::manifest::ManifestError::Shape(e.to_string()))
        })?);
    }
    let content_type = util::header_str(req.headers(), &header::CONTENT_TYPE).map(str::to_string);
    let bytes = read_limited(inner, req).await?;
    let pushed = inner
        .put_manifest(
            name,
            &reference,
            content_type.as_deref(),
            bytes,
            extra_tags.clone(),
        )
        .await?;
    let mut builder = empty(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", pushed.digest),
        )
        .header("docker-content-digest", pushed.digest.to_string());
    if let Some(subject) = &pushed.subject {
        builder = builder.header("oci-subject", subject.as_str());
    }
    for tag in &extra_tags {
        builder = builder.header("oci-tag", tag.as_str());
    }
    finish(builder, Body::empty())
}

pub(super) async fn delete(
    inner: &Inner,
    name: &RepoName,
    raw: &str,
) -> Result<Response, RegistryError> {
    let reference = reference(raw, |_| {
        RegistryError::ManifestUnknown(raw.chars().take(200).collect())
    })?;
    inner.delete_manifest(name, &reference).await?;
    finish(empty(StatusCode::ACCEPTED), Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DOCKER_MANIFEST, OCI_MANIFEST};

    fn h(accept: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for a in accept {
            m.append(header::ACCEPT, a.parse().unwrap());
        }
        m
    }

    #[test]
    fn negotiation() {
        assert!(accepts(&h(&[]), OCI_MANIFEST));
        assert!(accepts(&h(&["*/*"]), OCI_MANIFEST));
        assert!(accepts(&h(&["application/json"]), OCI_MANIFEST));
        assert!(accepts(&h(&[DOCKER_MANIFEST, OCI_MANIFEST]), OCI_MANIFEST));
        assert!(accepts(
            &h(&[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5")]),
            OCI_MANIFEST
        ));
        assert!(!accepts(&h(&[DOCKER_MANIFEST]), OCI_MANIFEST));
    }
}
