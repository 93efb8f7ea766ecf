//! Fabio-style route tags: `urlprefix-<host><path> [strip=<prefix>] [proto=http]`.
//!
//! The catalog adapter turns Consul tags into [`RouteSpec`]s with these
//! functions. Only HTTP routes to plain-HTTP backends are understood; tags
//! that ask for something else (TCP routes, TLS upstreams, redirects, access
//! rules, glob hosts) are refused with a reason rather than half-applied,
//! because ignoring e.g. an access rule would expose a service.

use crate::host::normalize_host;

/// One HTTP route: requests for `host` (any host when `None`) whose path
/// starts with `path_prefix` (on a segment boundary) go to the service;
/// `strip_prefix` is removed from the path before forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: Option<String>,
    /// `https=redirect`: plain HTTP requests get 308 to the same URL over HTTPS.
    pub redirect_https: bool,
    /// `hsts=true`: responses over HTTPS carry `Strict-Transport-Security`.
    pub hsts: bool,
    /// `tls=acme`: the cluster's ACME manager obtains a certificate for the host.
    pub acme: bool,
}

impl RouteSpec {
    /// All paths of one host.
    pub fn host(host: impl Into<String>) -> Self {
        RouteSpec {
            host: Some(host.into()),
            path_prefix: "/".to_string(),
            strip_prefix: None,
            redirect_https: false,
            hsts: false,
            acme: false,
        }
    }
}

/// Why a `urlprefix-` tag was not turned into a route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("tag has no route after `urlprefix-`")]
    Empty,
    #[error("TCP routes (`urlprefix-:PORT`) are not supported by the HTTP gateway")]
    TcpRoute,
    #[error("glob host `{0}` is not supported; list each host")]
    GlobHost(String),
    #[error("`{0}` is not a valid host name")]
    InvalidHost(String),
    #[error("path `{0}` must start with `/` and contain no spaces, `?` or `#`")]
    InvalidPath(String),
    #[error("option `{0}` is not supported (only `strip=`, `proto=http`, `https=redirect`, `hsts=true` and `tls=acme`)")]
    UnsupportedOption(String),
    #[error("strip prefix `{strip}` is not a prefix of the route path `{path}`")]
    StripNotPrefix { strip: String, path: String },
}

const TAG_PREFIX: &str = "urlprefix-";

/// Parses a fabio `urlprefix-` tag. `None` for tags that are not route tags
/// or that cannot be honoured (see [`try_parse_urlprefix_tag`] for why).
pub fn parse_urlprefix_tag(tag: &str) -> Option<RouteSpec> {
    try_parse_urlprefix_tag(tag).ok().flatten()
}

/// Like [`parse_urlprefix_tag`] but tells why a route tag was refused.
/// `Ok(None)`: not a `urlprefix-` tag at all.
pub fn try_parse_urlprefix_tag(tag: &str) -> Result<Option<RouteSpec>, TagError> {
    let Some(rest) = tag.trim().strip_prefix(TAG_PREFIX) else {
        return Ok(None);
    };
    let mut parts = rest.split_ascii_whitespace();
    let route = parts.next().ok_or(TagError::Empty)?;
    if route.starts_with(':') {
        return Err(TagError::TcpRoute);
    }
    let (host, path) = match route.find('/') {
        Some(0) => (None, route),
        Some(i) => (Some(&route[..i]), &route[i..]),
        None => (Some(route), "/"),
    };
    let host = match host {
        None => None,
        Some(h) if h.contains('*') => return Err(TagError::GlobHost(h.to_string())),
        Some(h) => Some(normalize_host(h).ok_or_else(|| TagError::InvalidHost(h.to_string()))?),
    };
    if !valid_path(path) {
        return Err(TagError::InvalidPath(path.to_string()));
    }
    let mut strip_prefix = None;
    let (mut redirect_https, mut hsts, mut acme) = (false, false, false);
    for option in parts {
        match option.split_once('=') {
            Some(("strip", value)) => {
                if !valid_path(value) {
                    return Err(TagError::InvalidPath(value.to_string()));
                }
                if !path.starts_with(value) {
                    return Err(TagError::StripNotPrefix {
                        strip: value.to_string(),
                        path: path.to_string(),
                    });
                }
                strip_prefix =
                    Some(value.trim_end_matches('/').to_string()).filter(|s| !s.is_empty());
            }
            Some(("proto", "http")) => {}
            Some(("https", "redirect")) => redirect_https = true,
            Some(("hsts", "true")) => hsts = true,
            Some(("tls", "acme")) => acme = true,
            _ => return Err(TagError::UnsupportedOption(option.to_string())),
        }
    }
    Ok(Some(RouteSpec {
        host,
        path_prefix: path.to_string(),
        strip_prefix,
        redirect_https,
        hsts,
        acme,
    }))
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, path: &str, strip: Option<&str>) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_string),
            path_prefix: path.to_string(),
            strip_prefix: strip.map(str::to_string),
            redirect_https: false,
            hsts: false,
            acme: false,
        }
    }

    #[test]
    fn parses_fabio_forms() {
        assert_eq!(
            parse_urlprefix_tag("urlprefix-/api"),
            Some(spec(None, "/api", None))
        );
        assert_eq!(
            parse_urlprefix_tag("urlprefix-Shop.Example.com/api strip=/api"),
            Some(spec(Some("shop.example.com"), "/api", Some("/api")))
        );
        assert_eq!(
            parse_urlprefix_tag("urlprefix-shop.example.com:8080/"),
            Some(spec(Some("shop.example.com"), "/", None))
        );
        assert_eq!(
            parse_urlprefix_tag("urlprefix-shop.example.com proto=http"),
            Some(spec(Some("shop.example.com"), "/", None))
        );
        assert_eq!(
            parse_urlprefix_tag("urlprefix-/api/ strip=/api/"),
            Some(spec(None, "/api/", Some("/api")))
        );
    }

    #[test]
    fn https_options() {
        let spec = parse_urlprefix_tag("urlprefix-shop.example.com https=redirect hsts=true")
            .expect("a route");
        assert!(spec.redirect_https && spec.hsts && !spec.acme);
        let acme = parse_urlprefix_tag("urlprefix-shop.example.com tls=acme").expect("a route");
        assert!(acme.acme && !acme.redirect_https);
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-shop.example.com tls=manual"),
            Err(TagError::UnsupportedOption(_))
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-ex.com/ https=on"),
            Err(TagError::UnsupportedOption(_))
        ));
    }

    #[test]
    fn not_a_route_tag() {
        assert_eq!(try_parse_urlprefix_tag("version=3"), Ok(None));
        assert_eq!(try_parse_urlprefix_tag("urlprefix"), Ok(None));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert_eq!(try_parse_urlprefix_tag("urlprefix-"), Err(TagError::Empty));
        assert_eq!(
            try_parse_urlprefix_tag("urlprefix-:3000 proto=tcp"),
            Err(TagError::TcpRoute)
        );
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-*.ex.com/"),
            Err(TagError::GlobHost(_))
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-a b/"),
            Err(TagError::UnsupportedOption(_))
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-ex.com/ proto=https"),
            Err(TagError::UnsupportedOption(_))
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-/a allow=ip:10.0.0.0/8"),
            Err(TagError::UnsupportedOption(_))
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-/a strip=/b"),
            Err(TagError::StripNotPrefix { .. })
        ));
        assert!(matches!(
            try_parse_urlprefix_tag("urlprefix-ex!.com/"),
            Err(TagError::InvalidHost(_))
        ));
        assert_eq!(parse_urlprefix_tag("urlprefix-/a?b"), None);
    }
}
