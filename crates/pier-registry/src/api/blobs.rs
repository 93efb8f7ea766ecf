//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{header, Method, StatusCode};

use super::{empty, finish, util};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::ByteRange;
use crate::{Inner, RegistryError};

/// Parses a single-range `Range: bytes=...` header. Multiple ranges or an
/// unparsable header are ignored (the whole blob is sent), as RFC 9110 allows.
fn requested_range(value: Option<&str>, size: u64) -> Result<Option<ByteRange>, RegistryError> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = RegistryError::RangeNotSatisfiable { size };
    let range = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let Ok(n) = suffix.parse::<u64>() else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(unsatisfiable);
            }
            ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }
        }
        (start, end) => {
            let Ok(start) = start.parse::<u64>() else {
                return Ok(None);
            };
            let end = if end.is_empty() {
                u64::MAX
            } else {
                match end.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return Ok(None),
                }
            };
            if start >= size {
                return Err(unsatisfiable);
            }
            ByteRange {
                start,
                end: end.min(size - 1),
            }
        }
    };
    Ok(Some(range))
}

pub(super) async fn get(
    inner: &Inner,
    name: &RepoName,
    digest: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let digest = Digest::parse(digest)?;
    let size = inner.blob_size(name, &digest).await?;
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    if req.method() == Method::HEAD {
        return finish(
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size),
            Body::empty(),
        );
    }
    let range = requested_range(util::header_str(req.headers(), &header::RANGE), size)?;
    let read = inner.open_blob(name, &digest, range).await?;
    let (builder, len) = match range {
        Some(r) => (
            builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end),
            ),
            r.len(),
        ),
        None => (builder.status(StatusCode::OK), size),
    };
    inner.metrics.bytes_out.inc_by(len);
    finish(
        builder.header(header::CONTENT_LENGTH, len),
        Body::from_stream(read.stream),
    )
}

pub(super) async fn delete(
    inner: &Inner,
    name: &RepoName,
    digest: &str,
) -> Result<Response, RegistryError> {
    let digest = Digest::parse(digest)?;
    inner.delete_blob(name, &digest).await?;
    finish(empty(StatusCode::ACCEPTED), Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str| requested_range(Some(s), 100);
        assert_eq!(
            r("bytes=0-9").unwrap(),
            Some(ByteRange { start: 0, end: 9 })
        );
        assert_eq!(
            r("bytes=90-").unwrap(),
            Some(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            r("bytes=90-1000").unwrap(),
            Some(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            r("bytes=-10").unwrap(),
            Some(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            r("bytes=-1000").unwrap(),
            Some(ByteRange { start: 0, end: 99 })
        );
        assert!(matches!(
            r("bytes=100-"),
            Err(RegistryError::RangeNotSatisfiable { size: 100 })
        ));
        assert_eq!(r("bytes=0-1,5-6").unwrap(), None);
        assert_eq!(r("items=0-1").unwrap(), None);
        assert_eq!(r("bytes=5-1").unwrap(), None);
    }
}
