//! Small HTTP helpers: percent-decoding, query strings, common headers.

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderMap, StatusCode};

use crate::uploads::ChunkRange;
use crate::RegistryError;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; None for a broken escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let needs_work = s.contains('%') || (plus_is_space && s.contains('+'));
    if !needs_work {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Query parameters in order; undecodable ones are dropped.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let pairs = q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((decode(k, true)?, decode(v, true)?))
            })
            .collect();
        Query(pairs)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range` of an upload chunk: `<start>-<end>` as the spec writes
/// it, also accepting the RFC form `bytes <start>-<end>/<total>`.
pub(crate) fn chunk_range(headers: &HeaderMap) -> Result<Option<ChunkRange>, RegistryError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || RegistryError::BlobUploadInvalid(format!("malformed Content-Range {value:?}"));
    let s = value.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes").map(str::trim_start).unwrap_or(s);
    let s = s.split_once('/').map_or(s, |(r, _)| r);
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    Ok(Some(ChunkRange { start, end }))
}

/// The `Range` answer of an upload: the inclusive range of bytes held.
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let len = body.len();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
        let q = Query::parse(Some(
            "n=2&last=a%2Bb&tag=x&tag=y&artifactType=application%2Fvnd.x",
        ));
        assert_eq!(q.get("n"), Some("2"));
        assert_eq!(q.get("last"), Some("a+b"));
        assert_eq!(q.all("tag").collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(q.get("artifactType"), Some("application/vnd.x"));
    }
}
