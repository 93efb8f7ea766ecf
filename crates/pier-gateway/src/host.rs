//! Host names as the router compares them: lower case, no port, no trailing
//! dot. Anything that is not a plausible DNS name or IP literal is refused so
//! that odd bytes never reach a lookup, a log line or a backend header.

/// Normalises a `Host` header value or URI authority to the router's form.
/// Returns `None` for values that are not a host name, IPv4 or bracketed
/// IPv6 literal with an optional numeric port.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
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
        return Some(format!("[{}]", literal.to_ascii_lowercase()));
    }
    let name = match raw.rsplit_once(':') {
        Some((name, port)) => {
            if !valid_port(port) {
                return None;
            }
            name
        }
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.starts_with('.')
        || name.contains("..")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    Some(name.to_ascii_lowercase())
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
