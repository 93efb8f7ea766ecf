//! Which addresses the server's own check runner may probe (`pier server --check-allow CIDR`),
//! so the Consul API is no SSRF tool: an HTTP or TCP check registered on a server's agent is
//! refused at registration unless every address its host resolves to is inside an allowed
//! network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One IPv4 or IPv6 network, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid network {0:?}: expected ADDRESS/PREFIX such as 10.0.0.0/8 or fd00::/8")]
pub struct CidrParseError(String);

impl FromStr for Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Cidr, CidrParseError> {
        let err = || CidrParseError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = width - prefix;
    (bits >> shift) << shift
}

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The address a connection to `ip` really reaches: IPv4-mapped IPv6 as IPv4, and the
/// unspecified address (which connects to this host) as loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The networks checks run by this server may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckAllow {
    nets: Vec<Cidr>,
}

const PRIVATE: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

fn nets(list: &[&str]) -> Vec<Cidr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

impl CheckAllow {
    /// Exactly these networks.
    pub fn new(nets: Vec<Cidr>) -> CheckAllow {
        CheckAllow { nets }
    }

    /// `pier server` without `--check-allow`: the private ranges (RFC 1918 and IPv6 ULA);
    /// not loopback (the server's own admin ports), link-local (cloud metadata) or public.
    pub fn private_networks() -> CheckAllow {
        CheckAllow::new(nets(&PRIVATE))
    }

    /// `pier dev`: loopback and the private ranges.
    pub fn loopback_and_private() -> CheckAllow {
        let mut n = nets(&LOOPBACK);
        n.extend(nets(&PRIVATE));
        CheckAllow::new(n)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    pub fn networks(&self) -> &[Cidr] {
        &self.nets
    }

    /// The list as the operator would write it, for error messages.
    pub fn describe(&self) -> String {
        if self.nets.is_empty() {
            return "none".to_string();
        }
        let v: Vec<String> = self.nets.iter().map(Cidr::to_string).collect();
        v.join(", ")
    }
}

impl Default for CheckAllow {
    fn default() -> Self {
        CheckAllow::loopback_and_private()
    }
}

/// The first of `addrs` that `allow` refuses, if any.
pub fn first_refused(allow: &CheckAllow, addrs: &[IpAddr]) -> Option<IpAddr> {
    addrs.iter().copied().find(|ip| !allow.allows(*ip))
}

/// How long a check's host name may take to resolve at registration.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The `host:port` an HTTP or TCP check connects to; None for checks that connect nowhere.
fn target_of(kind: &crate::model::CheckKind) -> Result<Option<String>, crate::CatalogError> {
    use crate::model::CheckKind;
    match kind {
        CheckKind::Http { url, .. } => {
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                crate::CatalogError::BadRequest(format!("Invalid check: HTTP {url:?}: {e}"))
            })?;
            // IPv6 hosts come bracketed, ready for `host:port`.
            let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
                return Err(crate::CatalogError::BadRequest(format!(
                    "Invalid check: HTTP {url:?} names no host"
                )));
            };
            let port = parsed.port_or_known_default().unwrap_or(80);
            Ok(Some(format!("{host}:{port}")))
        }
        CheckKind::Tcp { address } => Ok(Some(address.clone())),
        _ => Ok(None),
    }
}

/// Refuses (400, naming the flag) an HTTP or TCP check whose host is, or resolves to, an
/// address outside `allow`. Every resolved address must be allowed: a name that resolves to
/// both an allowed and a refused address is refused. Returns the vetted addresses (empty for
/// checks that connect nowhere): the probe connects to exactly these, never resolving the
/// name again, so a name whose answer flips after vetting (DNS rebinding) cannot lead it
/// elsewhere.
pub async fn vet_check(
    allow: &CheckAllow,
    kind: &crate::model::CheckKind,
) -> Result<Vec<std::net::SocketAddr>, crate::CatalogError> {
    let Some(target) = target_of(kind)? else {
        return Ok(Vec::new());
    };
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target.as_str()))
        .await
        .map_err(|_| {
            crate::CatalogError::BadRequest(format!(
                "Invalid check: resolving {target:?} timed out"
            ))
        })?
        .map_err(|e| {
            crate::CatalogError::BadRequest(format!(
                "Invalid check: cannot resolve {target:?}: {e}"
            ))
        })?;
    let vetted: Vec<std::net::SocketAddr> = resolved.collect();
    let addrs: Vec<IpAddr> = vetted.iter().map(|a| a.ip()).collect();
    if addrs.is_empty() {
        return Err(crate::CatalogError::BadRequest(format!(
            "Invalid check: {target:?} resolves to no address"
        )));
    }
    if let Some(ip) = first_refused(allow, &addrs) {
        return Err(crate::CatalogError::BadRequest(format!(
            "Invalid check: {target:?} resolves to {ip}, which this server may not check \
             (allowed networks: {}; the operator widens them with `pier server --check-allow CIDR`)",
            allow.describe()
        )));
    }
    Ok(vetted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped");
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("2001:db8::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_refuse_metadata_and_loopback_on_servers() {
        let server = CheckAllow::private_networks();
        assert!(server.allows(ip("10.0.0.5")) && server.allows(ip("192.168.1.1")));
        assert!(server.allows(ip("172.20.0.2")) && server.allows(ip("fd00::1")));
        for refused in [
            "169.254.169.254",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "8.8.8.8",
            "fe80::1",
        ] {
            assert!(!server.allows(ip(refused)), "{refused}");
        }
        let dev = CheckAllow::loopback_and_private();
        assert!(dev.allows(ip("127.0.0.1")) && dev.allows(ip("::1")) && dev.allows(ip("0.0.0.0")));
        assert!(!dev.allows(ip("169.254.169.254")));
        assert_eq!(
            first_refused(&dev, &[ip("127.0.0.1"), ip("169.254.169.254")]),
            Some(ip("169.254.169.254"))
        );
        assert_eq!(CheckAllow::new(vec![]).describe(), "none");
    }
}
