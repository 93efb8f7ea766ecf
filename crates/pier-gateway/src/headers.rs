//! Header rules of the proxy: hop-by-hop removal, `X-Forwarded-*`, request
//! ids. Framing headers are never copied between sides: hyper frames each
//! side itself from the body's known length, so a backend never sees the
//! client's `Transfer-Encoding` or a second `Content-Length`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names. With `keep_upgrade` the `Upgrade` header and a
/// `Connection: upgrade` survive, for WebSocket handshakes.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            // Never let a client make the proxy drop its own forwarding
            // headers or the request id by naming them in `Connection`.
            if name == X_FORWARDED_FOR
                || name == X_FORWARDED_PROTO
                || name == X_FORWARDED_HOST
                || name == X_REQUEST_ID
                || name == header::HOST
            {
                continue;
            }
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets `X-Forwarded-For/-Proto/-Host`. Untrusted (the default): the
/// client's values are replaced, so a client cannot claim another address.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: &HeaderValue,
    original_host: &HeaderValue,
    trust_client: bool,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) if trust_client => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + peer_ip.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer_ip.clone())
        }
        _ => peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !(trust_client && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !(trust_client && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST.clone(), original_host.clone());
    }
}

pub(crate) fn ip_header(ip: IpAddr) -> HeaderValue {
    // An IP address renders as ASCII digits, dots, colons and hex.
    HeaderValue::from_str(&ip.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A client's request id is kept when it is 1–128 characters of
/// `[A-Za-z0-9._:+/=-]`; anything else is replaced so that ids are safe to
/// log and to pass on.
pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._:+/=-".contains(c))
}

pub(crate) fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, x-forwarded-for"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.2.3.4"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, ["x-forwarded-for", "x-kept"]);
    }

    #[test]
    fn keeps_upgrade_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_headers_untrusted_and_trusted() {
        let ip = ip_header("10.1.2.3".parse().unwrap());
        let host = HeaderValue::from_static("web.localhost:8080");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        let mut trusted = h.clone();
        set_forwarded(&mut h, &ip, &host, false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "web.localhost:8080");
        set_forwarded(&mut trusted, &ip, &host, true);
        assert_eq!(trusted[&X_FORWARDED_FOR], "6.6.6.6, 10.1.2.3");
        assert_eq!(trusted[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_bytes(&[b'a'; 129]).unwrap()
        ));
        let id = new_request_id();
        assert!(valid_request_id(&id));
        assert_eq!(id.len(), 36);
        assert_ne!(new_request_id(), id);
        assert_eq!(ip_header("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1");
    }
}
