//! Host names as the router compares them: lower case, no port, no trailing
//! dot. Anything that is not a plausible DNS name or IP literal is refused so
//! that odd bytes never reach a lookup, a log line or a backend header.

use std::borrow::Cow;

/// Normalises a `Host` header value or URI authority to the router's form.
/// Returns `None` for values that are not a host name, IPv4 or bracketed
/// IPv6 literal with an optional numeric port.
pub fn normalize_host(raw: &str) -> Option<String> {
    normalize_host_ref(raw).map(Cow::into_owned)
}

/// [`normalize_host`] without copying when the value is already lower case
/// (the usual case): the request path looks routes up with a borrowed slice.
pub(crate) fn normalize_host_ref(raw: &str) -> Option<Cow<'_, str>> {
    // Only ASCII is valid below, so ASCII whitespace is all there is to trim.
    let raw = raw.trim_ascii();
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        let (literal, after) = (&rest[..end], &rest[end + 1..]);
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        // `[` + literal + `]`
        return Some(lowercase(&raw[..end + 2]));
    }
    let name = match raw.bytes().rposition(|b| b == b':') {
        Some(colon) => {
            if !valid_port(&raw[colon + 1..]) {
                return None;
            }
            &raw[..colon]
        }
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    // One pass over a class table: allowed bytes, whether a copy is needed;
    // then the rare empty label.
    let mut seen = 0u8;
    for &b in name.as_bytes() {
        let class = HOST_BYTE[usize::from(b)];
        if class == 0 {
            return None;
        }
        seen |= class;
    }
    let upper = seen & UPPER != 0;
    if seen & DOT != 0 && name.contains("..") {
        return None;
    }
    Some(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

const PLAIN: u8 = 1;
const UPPER: u8 = 2;
const DOT: u8 = 4;

/// What each byte may be in a host name: 0 refused, else its class.
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'A'..=b'Z' => UPPER,
            b'.' => DOT,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => PLAIN,
            _ => 0,
        };
        b += 1;
    }
    t
};

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn normalises_case_port_and_trailing_dot() {
        assert_eq!(
            normalize_host("Web.LocalHost:8080").as_deref(),
            Some("web.localhost")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(
            normalize_host("[FE80::A]:443").as_deref(),
            Some("[fe80::a]")
        );
        assert_eq!(normalize_host("a_b-c.d.").as_deref(), Some("a_b-c.d"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "a b",
            "a/b",
            "host:port",
            "host:",
            "[::1",
            "[zz]",
            "a..b",
            ".a",
            "a\"b",
            ":80",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
    }
}
