//! Header rules of the proxy: hop-by-hop removal, `X-Forwarded-*`, request
//! ids. Framing headers are never copied between sides: `upstream` writes the
//! framing of each request to a backend itself and hyper frames each response
//! to a client, so a backend never sees the client's `Transfer-Encoding` or a
//! second `Content-Length`.

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

/// True for the headers that [`strip_hop_by_hop`] always removes or rewrites.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Whether a header map has any hop-by-hop header: one pass over the names,
/// so the common message without any skips the removals (each a hash
/// lookup) altogether.
pub(crate) fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop)
}

/// What one pass over a request's headers found. The request path decides
/// from this which checks and rewrites it needs, instead of looking each
/// header up by name.
#[derive(Default)]
pub(crate) struct RequestScan {
    pub(crate) transfer_encodings: usize,
    /// A `Transfer-Encoding` value other than plain `chunked`.
    pub(crate) odd_transfer_encoding: bool,
    pub(crate) content_length: Option<HeaderValue>,
    pub(crate) hop_by_hop: bool,
    pub(crate) connection: bool,
    pub(crate) upgrade: bool,
    pub(crate) expect: bool,
    pub(crate) hosts: usize,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) forwarded: bool,
    pub(crate) accept_json: bool,
}

impl RequestScan {
    pub(crate) fn of(headers: &HeaderMap) -> RequestScan {
        let mut s = RequestScan::default();
        for (name, value) in headers {
            if *name == header::HOST {
                s.hosts += 1;
                if s.host.is_none() {
                    s.host = Some(value.clone());
                }
            } else if *name == header::ACCEPT {
                s.accept_json |= value.to_str().is_ok_and(|v| v.contains("application/json"));
            } else if *name == header::CONTENT_LENGTH {
                if s.content_length.is_none() {
                    s.content_length = Some(value.clone());
                }
            } else if *name == header::EXPECT {
                s.expect = true;
            } else if is_hop_by_hop(name) {
                s.hop_by_hop = true;
                if *name == header::TRANSFER_ENCODING {
                    s.transfer_encodings += 1;
                    s.odd_transfer_encoding |= !value
                        .as_bytes()
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"chunked");
                } else if *name == header::CONNECTION {
                    s.connection = true;
                } else if *name == header::UPGRADE {
                    s.upgrade = true;
                }
            } else if *name == X_REQUEST_ID {
                if s.request_id.is_none() {
                    s.request_id = Some(value.clone());
                }
            } else if *name == X_FORWARDED_FOR
                || *name == X_FORWARDED_PROTO
                || *name == X_FORWARDED_HOST
            {
                s.forwarded = true;
            }
        }
        s
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

/// The fields the gateway adds to a forwarded request (`Host` when it is
/// rewritten, `X-Forwarded-For/-Proto/-Host`, `X-Request-Id`), and which of
/// the client's own fields they replace. They are written straight into the
/// request head after the client's fields, so the request's header map is
/// never grown or rehashed for them.
pub(crate) struct Forwarding {
    host: Option<HeaderValue>,
    xff: HeaderValue,
    /// `X-Forwarded-Proto` is added, with this value.
    xfp: bool,
    proto: &'static HeaderValue,
    xfh: Option<HeaderValue>,
    id: HeaderValue,
    /// `SKIP_*` bits: client fields left out of the forwarded head.
    skip: u8,
}

const SKIP_HOST: u8 = 1;
const SKIP_XFF: u8 = 2;
const SKIP_XFP: u8 = 4;
const SKIP_XFH: u8 = 8;
const SKIP_ID: u8 = 16;

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

impl Forwarding {
    /// Untrusted (the default): the client's `X-Forwarded-*` values are
    /// replaced, so a client cannot claim another address. Trusted: the
    /// peer is appended to the client's `X-Forwarded-For` and its
    /// `-Proto`/`-Host` are kept.
    pub(crate) fn new(
        headers: &HeaderMap,
        scan: &RequestScan,
        peer_ip: &HeaderValue,
        original_host: &HeaderValue,
        rewrite_host: bool,
        request_id: &HeaderValue,
        trust_client: bool,
    ) -> Forwarding {
        let mut skip = 0;
        if rewrite_host {
            skip |= SKIP_HOST;
        }
        let (mut prev_xff, mut has_xfp, mut has_xfh) = (None, false, false);
        if scan.forwarded {
            skip |= SKIP_XFF;
            if trust_client {
                prev_xff = headers.get(&X_FORWARDED_FOR);
                has_xfp = headers.contains_key(&X_FORWARDED_PROTO);
                has_xfh = headers.contains_key(&X_FORWARDED_HOST);
            }
            if !has_xfp {
                skip |= SKIP_XFP;
            }
            if !has_xfh {
                skip |= SKIP_XFH;
            }
        }
        if scan.request_id.is_some() {
            skip |= SKIP_ID;
        }
        let xff = match prev_xff {
            Some(prev) => {
                let mut joined = Vec::with_capacity(prev.len() + 2 + peer_ip.len());
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(peer_ip.as_bytes());
                HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer_ip.clone())
            }
            None => peer_ip.clone(),
        };
        Forwarding {
            host: rewrite_host.then(|| original_host.clone()),
            xff,
            xfp: !has_xfp,
            proto: &HTTP,
            xfh: (!has_xfh).then(|| original_host.clone()),
            id: request_id.clone(),
            skip,
        }
    }

    /// The client came over TLS: `X-Forwarded-Proto: https`.
    pub(crate) fn over_https(mut self, https: bool) -> Forwarding {
        if https {
            self.proto = &HTTPS;
        }
        self
    }

    /// Whether the client's field `name` is left out (replaced by ours).
    #[inline]
    pub(crate) fn skips(&self, name: &HeaderName) -> bool {
        if self.skip == 0 {
            return false;
        }
        let bit = if *name == header::HOST {
            SKIP_HOST
        } else if *name == X_FORWARDED_FOR {
            SKIP_XFF
        } else if *name == X_FORWARDED_PROTO {
            SKIP_XFP
        } else if *name == X_FORWARDED_HOST {
            SKIP_XFH
        } else if *name == X_REQUEST_ID {
            SKIP_ID
        } else {
            0
        };
        self.skip & bit != 0
    }

    /// The gateway's own fields, in the order they are written.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> {
        [
            ("host", self.host.as_ref()),
            ("x-forwarded-for", Some(&self.xff)),
            ("x-forwarded-proto", self.xfp.then_some(self.proto)),
            ("x-forwarded-host", self.xfh.as_ref()),
            ("x-request-id", Some(&self.id)),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
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
    // A random (version 4) UUID in its hyphenated lower-case form, formatted
    // with fixed positions (uuid's formatter costs several times as much).
    let mut b = id_random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [b'-'; 36];
    for (byte, at) in b.iter().zip(AT) {
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
    }
    HeaderValue::from_maybe_shared(id_bytes(&out)).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Sixteen bytes for a request id from a per-thread `SmallRng` seeded from
/// the thread RNG. Request ids must be unique, not unguessable (they are
/// logged and passed on in the clear), and this costs a fraction of the
/// ChaCha-based thread RNG per request.
fn id_random_bytes() -> [u8; 16] {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    RNG.with_borrow_mut(|rng| rng.random())
}

/// Ids are cut from a per-thread block so that a new id is not an
/// allocation of its own; a block is freed once every id cut from it is gone.
fn id_bytes(id: &[u8]) -> bytes::Bytes {
    const IDS_PER_BLOCK: usize = 64;
    thread_local! {
        static BLOCK: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    BLOCK.with_borrow_mut(|block| {
        if block.capacity() < id.len() {
            *block = bytes::BytesMut::with_capacity(id.len() * IDS_PER_BLOCK);
        }
        block.extend_from_slice(id);
        block.split().freeze()
    })
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
    fn one_pass_scan_finds_what_needs_handling() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("web.localhost"));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        let plain = RequestScan::of(&h);
        assert!(!plain.hop_by_hop && !plain.forwarded && !plain.accept_json);
        assert_eq!(plain.hosts, 1);
        assert!(!has_hop_by_hop(&h));

        h.append(header::HOST, HeaderValue::from_static("other"));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(X_FORWARDED_HOST.clone(), HeaderValue::from_static("x"));
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc"));
        let s = RequestScan::of(&h);
        assert_eq!(s.hosts, 2);
        assert_eq!(s.host.as_ref().unwrap(), "web.localhost");
        assert!(s.accept_json && s.hop_by_hop && s.forwarded);
        assert!(s.odd_transfer_encoding);
        assert_eq!(s.transfer_encodings, 1);
        assert_eq!(s.request_id.as_ref().unwrap(), "abc");
        assert!(has_hop_by_hop(&h));
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

    fn forwarded(f: &Forwarding, h: &HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = h
            .iter()
            .filter(|(n, _)| !f.skips(n))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        out.extend(
            f.fields()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string())),
        );
        out.sort();
        out
    }

    #[test]
    fn forwarded_headers_untrusted_and_trusted() {
        let ip = ip_header("10.1.2.3".parse().unwrap());
        let host = HeaderValue::from_static("web.localhost:8080");
        let id = HeaderValue::from_static("id-1");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("web.localhost:8080"));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("client-id"));
        let scan = RequestScan::of(&h);
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());

        let f = Forwarding::new(&h, &scan, &ip, &host, false, &id, false);
        assert_eq!(
            forwarded(&f, &h),
            [
                pair("host", "web.localhost:8080"),
                pair("x-forwarded-for", "10.1.2.3"),
                pair("x-forwarded-host", "web.localhost:8080"),
                pair("x-forwarded-proto", "http"),
                pair("x-request-id", "id-1"),
            ]
        );

        let f = Forwarding::new(&h, &scan, &ip, &host, true, &id, true);
        assert_eq!(
            forwarded(&f, &h),
            [
                pair("host", "web.localhost:8080"),
                pair("x-forwarded-for", "6.6.6.6, 10.1.2.3"),
                pair("x-forwarded-host", "web.localhost:8080"),
                pair("x-forwarded-proto", "https"),
                pair("x-request-id", "id-1"),
            ]
        );

        // A plain request: nothing of the client's is skipped.
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("web.localhost"));
        let f = Forwarding::new(
            &plain,
            &RequestScan::of(&plain),
            &ip,
            &host,
            false,
            &id,
            false,
        );
        assert!(!f.skips(&header::HOST));
        assert_eq!(forwarded(&f, &plain).len(), 5);
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
        let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        // Ids cut from several blocks stay distinct and well-formed.
        let ids: std::collections::HashSet<_> = (0..200).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 200);
        assert!(ids.iter().all(|v| valid_request_id(v) && v.len() == 36));
        assert_eq!(ip_header("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1");
    }
}
