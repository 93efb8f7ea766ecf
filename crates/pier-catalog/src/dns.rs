//! Consul-style DNS on UDP and TCP (hickory-server), answering from the local state (stale
//! reads, like Consul's default `allow_stale`), so any server answers without a leader.
//!
//! Names (under the configured domain, `consul.` by default; `<dc>` optional and must match):
//! - `<svc>.service[.<dc>]` and `<tag>.<svc>.service[.<dc>]`: A/AAAA of the instances that
//!   are not critical (warning counts as up, as in Consul); SRV with port and target.
//! - `_<svc>._tcp.service[.<dc>]` (RFC 2782; `_<svc>._<tag>` filters by tag): SRV.
//! - SRV targets are `<node>.node.<dc>.<domain>` with the node's address in the additional
//!   section; an instance with its own address (not its node's) gets the target
//!   `<hex-ip>.addr.<dc>.<domain>` instead (Consul's form), so the additional A record is the
//!   address to connect to.
//! - `<node>.node[.<dc>]` → A/AAAA; `<hex-ipv4>.addr[.<dc>]` → A.
//!
//! Unknown names, and services with no instance up, answer NXDOMAIN; names outside the domain
//! answer REFUSED (there is no recursor); malformed packets are dropped or answered FORMERR by
//! hickory without reaching this code; a query name over 253 bytes or a message without exactly
//! one question answers FORMERR. Over UDP at most `udp_answer_limit` instances are returned,
//! shuffled (Consul's default is 3); TCP answers carry all of them.
//!
//! Service and node names are matched exactly after lower-casing the query (DNS is
//! case-insensitive): register names in lower case to find them by DNS.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use pier_store::Consistency;
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, UdpSocket};

use crate::catalog::{read_health_service, read_node, Catalog, ServiceFilter};
use crate::model::{CheckStatus, InstanceHealth};

/// Longest query name accepted (RFC 1035's 255 octets on the wire is 253 characters).
pub const MAX_QUERY_NAME_CHARS: usize = 253;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The domain served, with or without the trailing dot.
    pub domain: String,
    /// TTL of every answer (Consul's default is 0: no caching).
    pub ttl_s: u32,
    /// The datacenter label accepted in names and used in SRV targets.
    pub datacenter: String,
    /// Most instances in one UDP answer (0 = no limit).
    pub udp_answer_limit: usize,
    /// Idle timeout of a TCP connection.
    pub tcp_idle_timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: "consul.".to_string(),
            ttl_s: 0,
            datacenter: "dc1".to_string(),
            udp_answer_limit: 3,
            tcp_idle_timeout_ms: 5_000,
        }
    }
}

/// A bound DNS server (UDP and TCP on the same port). Run it with [`DnsServer::run`].
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    handler: DnsHandler,
    tcp_idle_timeout: Duration,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (port 0 picks a free port, the same for both).
    pub async fn bind(
        catalog: Catalog,
        listen: SocketAddr,
        config: DnsConfig,
    ) -> std::io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(listen).await?;
        let domain = config.domain.trim_end_matches('.').to_ascii_lowercase();
        Ok(DnsServer {
            udp,
            tcp,
            tcp_idle_timeout: Duration::from_millis(config.tcp_idle_timeout_ms),
            handler: DnsHandler {
                inner: Arc::new(HandlerInner {
                    catalog,
                    domain,
                    config,
                }),
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let mut server = Server::new(self.handler);
        server.register_socket(self.udp);
        server.register_listener(self.tcp, self.tcp_idle_timeout, 64 * 1024);
        shutdown.await;
        server
            .shutdown_gracefully()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

async fn bind_pair(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        return Ok((
            UdpSocket::bind(listen).await?,
            TcpListener::bind(listen).await?,
        ));
    }
    // Port 0: take a UDP port, then the same TCP port; retry if TCP has it taken.
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

/// Binds and serves DNS on `listen` until `shutdown` completes.
pub async fn serve_dns(
    catalog: Catalog,
    listen: SocketAddr,
    config: DnsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    DnsServer::bind(catalog, listen, config)
        .await?
        .run(shutdown)
        .await
}

struct HandlerInner {
    catalog: Catalog,
    /// Lower case, no trailing dot.
    domain: String,
    config: DnsConfig,
}

#[derive(Clone)]
struct DnsHandler {
    inner: Arc<HandlerInner>,
}

/// What a query resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Service {
        service: String,
        tag: Option<String>,
    },
    Node(String),
    Addr(Ipv4Addr),
}

/// Parses the labels of a query name (lower case, without the trailing dot). `None` =
/// outside our domain; `Some(Err(()))` = inside but not a name we know.
fn parse_name(name: &str, domain: &str, datacenter: &str) -> Option<Result<Lookup, ()>> {
    let name = name.trim_end_matches('.');
    let rest = if name == domain {
        ""
    } else {
        name.strip_suffix(domain)?.strip_suffix('.')?
    };
    let mut labels: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    if labels.len() >= 3 {
        let kind = labels[labels.len() - 2];
        if matches!(kind, "service" | "node" | "addr") {
            if labels[labels.len() - 1] != datacenter {
                return Some(Err(()));
            }
            labels.pop();
        }
    }
    let Some(kind) = labels.pop() else {
        return Some(Err(()));
    };
    let result = match (kind, labels.as_slice()) {
        ("service", [svc]) => Ok(Lookup::Service {
            service: svc.to_string(),
            tag: None,
        }),
        ("service", [first, second]) if first.starts_with('_') && second.starts_with('_') => {
            let tag = &second[1..];
            Ok(Lookup::Service {
                service: first[1..].to_string(),
                tag: (!matches!(tag, "tcp" | "udp")).then(|| tag.to_string()),
            })
        }
        ("service", [tag, svc]) => Ok(Lookup::Service {
            service: svc.to_string(),
            tag: Some(tag.to_string()),
        }),
        ("node", [node]) => Ok(Lookup::Node(node.to_string())),
        ("addr", [hex]) if hex.len() == 8 => u32::from_str_radix(hex, 16)
            .map(|n| Lookup::Addr(Ipv4Addr::from(n)))
            .map_err(|_| ()),
        _ => Err(()),
    };
    Some(result)
}

struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

fn addr_records(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY | RecordType::SRV) => {
            Some(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))))
        }
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY | RecordType::SRV) => {
            Some(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))))
        }
        _ => None,
    }
}

impl HandlerInner {
    fn fqdn(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}.", self.domain)).ok()
    }

    async fn answer(&self, qname: &Name, qtype: RecordType, protocol: Protocol) -> Answer {
        let text = qname.to_ascii().to_ascii_lowercase();
        if text.len() > MAX_QUERY_NAME_CHARS + 1 {
            return Answer::code(ResponseCode::FormErr);
        }
        let lookup = match parse_name(&text, &self.domain, &self.config.datacenter) {
            None => return Answer::code(ResponseCode::Refused),
            Some(Err(())) => return Answer::code(ResponseCode::NXDomain),
            Some(Ok(l)) => l,
        };
        let ttl = self.config.ttl_s;
        match lookup {
            Lookup::Addr(ip) => {
                let mut a = Answer::code(ResponseCode::NoError);
                a.answers
                    .extend(addr_records(qname, IpAddr::V4(ip), qtype, ttl));
                a
            }
            Lookup::Node(node) => {
                let found = self
                    .catalog
                    .store()
                    .read(Consistency::Stale, |v| read_node(v, &node))
                    .await;
                match found {
                    Ok(Some(n)) => {
                        let mut a = Answer::code(ResponseCode::NoError);
                        if let Ok(ip) = n.address.parse::<IpAddr>() {
                            a.answers.extend(addr_records(qname, ip, qtype, ttl));
                        }
                        a
                    }
                    Ok(None) => Answer::code(ResponseCode::NXDomain),
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS read failed");
                        Answer::code(ResponseCode::ServFail)
                    }
                }
            }
            Lookup::Service { service, tag } => {
                let filter = ServiceFilter {
                    tags: tag.into_iter().collect(),
                    ..ServiceFilter::default()
                };
                let read = self
                    .catalog
                    .store()
                    .read(Consistency::Stale, |v| {
                        read_health_service(v, &service, &filter, true).0
                    })
                    .await;
                let mut up: Vec<InstanceHealth> = match read {
                    Ok(list) => list
                        .into_iter()
                        .filter(|h| h.status() != CheckStatus::Critical)
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS read failed");
                        return Answer::code(ResponseCode::ServFail);
                    }
                };
                if up.is_empty() {
                    return Answer::code(ResponseCode::NXDomain);
                }
                up.shuffle(&mut rand::rng());
                let limit = self.config.udp_answer_limit;
                if protocol == Protocol::Udp && limit > 0 {
                    up.truncate(limit);
                }
                self.service_answer(qname, qtype, &up)
            }
        }
    }

    fn service_answer(&self, qname: &Name, qtype: RecordType, up: &[InstanceHealth]) -> Answer {
        let ttl = self.config.ttl_s;
        let dc = &self.config.datacenter;
        let mut a = Answer::code(ResponseCode::NoError);
        for h in up {
            let Ok(ip) = h.address().parse::<IpAddr>() else {
                continue;
            };
            if qtype != RecordType::SRV {
                a.answers.extend(addr_records(qname, ip, qtype, ttl));
                continue;
            }
            let own_address =
                !h.instance.address.is_empty() && h.instance.address != h.node.address;
            let target = match (own_address, ip) {
                (true, IpAddr::V4(v4)) => self.fqdn(&format!("{:08x}.addr.{dc}", u32::from(v4))),
                _ => self.fqdn(&format!("{}.node.{dc}", h.node.name.to_ascii_lowercase())),
            };
            let Some(target) = target else { continue };
            let weight = match h.status() {
                CheckStatus::Warning => h.instance.weights.warning,
                _ => h.instance.weights.passing,
            };
            let srv = SRV::new(
                1,
                weight.min(u16::MAX as u32) as u16,
                h.instance.port,
                target.clone(),
            );
            a.answers
                .push(Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)));
            if !a.additionals.iter().any(|r| r.name == target) {
                a.additionals
                    .extend(addr_records(&target, ip, RecordType::SRV, ttl));
            }
        }
        a
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let queries = request.queries.queries();
        let answer = if request.metadata.op_code != OpCode::Query {
            Answer::code(ResponseCode::NotImp)
        } else if queries.len() != 1 {
            Answer::code(ResponseCode::FormErr)
        } else {
            let q = &queries[0];
            let name: Name = q.name().clone().into();
            self.inner
                .answer(&name, q.query_type(), request.protocol())
                .await
        };
        meta.response_code = answer.code;
        let response = builder.build(
            meta,
            answer.answers.iter(),
            [],
            [],
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Option<Result<Lookup, ()>> {
        parse_name(name, "consul", "dc1")
    }

    #[test]
    fn names() {
        let svc = |s: &str, t: Option<&str>| {
            Some(Ok(Lookup::Service {
                service: s.into(),
                tag: t.map(Into::into),
            }))
        };
        assert_eq!(p("web.service.consul."), svc("web", None));
        assert_eq!(p("web.service.dc1.consul"), svc("web", None));
        assert_eq!(p("v1.web.service.consul"), svc("web", Some("v1")));
        assert_eq!(p("_web._tcp.service.consul"), svc("web", None));
        assert_eq!(p("_web._v1.service.consul"), svc("web", Some("v1")));
        assert_eq!(p("n1.node.consul"), Some(Ok(Lookup::Node("n1".into()))));
        assert_eq!(p("n1.node.dc1.consul"), Some(Ok(Lookup::Node("n1".into()))));
        assert_eq!(
            p("7f000001.addr.dc1.consul"),
            Some(Ok(Lookup::Addr(Ipv4Addr::LOCALHOST)))
        );
        assert_eq!(p("web.service.dc2.consul"), Some(Err(())));
        assert_eq!(p("a.b.c.service.consul"), Some(Err(())));
        assert_eq!(p("consul"), Some(Err(())));
        assert_eq!(p("example.com"), None);
        assert_eq!(p("notconsul"), None);
    }
}
