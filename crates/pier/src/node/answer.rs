//! What the node's DNS answers itself, as pure functions of the query and the catalog as
//! the node's feed sees it. Everything it does not answer is forwarded upstream.
//!
//! - `<svc>.internal` A → the node gateway's address (the bridge address), for a service the
//!   catalog knows; AAAA answers no records.
//! - `<svc>.service[.<dc>].consul` A, and SRV (also `_<svc>._tcp.service...`) → the passing
//!   instances at an address a container can reach: an instance on this node at its pier
//!   network address (container IP and port), any other at its catalog address (or its pier
//!   network address when the catalog's is loopback: see `template::reachable_from`).
//! - `<hex-ip>.addr[.<dc>].consul` A (the SRV targets).
//! - Other names under `.internal` or `.consul` answer NXDOMAIN; nothing else is ours.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use pier_gateway::CatalogInstance;

use crate::gateway_feed::NODE_META;

/// Instance meta with the task's pier network address (see the orchestrator).
pub use pier_api::service::template::NETWORK_ADDR_META;

/// What the node's DNS knows.
pub struct View<'a> {
    pub gateway_ip: Ipv4Addr,
    pub node: &'a str,
    pub instances: &'a [CatalogInstance],
}

/// What a query name asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Internal(String),
    Service(String),
    Addr(Ipv4Addr),
    /// Under one of our domains but nothing we serve.
    NoSuchName,
    /// Anything else: forward upstream.
    External,
}

/// Classifies a lower-case query name without its trailing dot.
pub fn classify(name: &str) -> Target {
    let labels: Vec<&str> = name.split('.').collect();
    match labels.as_slice() {
        [svc, "internal"] if !svc.is_empty() => Target::Internal(svc.to_string()),
        [.., "internal"] => Target::NoSuchName,
        [.., "consul"] => classify_consul(&labels[..labels.len() - 1]),
        _ => Target::External,
    }
}

fn classify_consul(labels: &[&str]) -> Target {
    // An optional datacenter label before `consul`.
    let labels = match labels {
        [rest @ .., kind, _dc] if matches!(*kind, "service" | "addr") => {
            let mut v = rest.to_vec();
            v.push(kind);
            v
        }
        _ => labels.to_vec(),
    };
    match labels.as_slice() {
        [svc, "service"] if !svc.starts_with('_') => Target::Service(svc.to_string()),
        [svc, "_tcp", "service"] => match svc.strip_prefix('_') {
            Some(s) if !s.is_empty() => Target::Service(s.to_string()),
            _ => Target::NoSuchName,
        },
        [hex, "addr"] => u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| hex.len() == 8)
            .map(|v| Target::Addr(Ipv4Addr::from(v)))
            .unwrap_or(Target::NoSuchName),
        _ => Target::NoSuchName,
    }
}

/// Where a container on `node` reaches `instance` (the rule templates use too).
pub fn reachable(instance: &CatalogInstance, node: &str) -> Option<SocketAddr> {
    pier_api::service::template::reachable_from(
        node,
        instance
            .meta
            .get(NODE_META)
            .map(String::as_str)
            .unwrap_or(""),
        instance.meta.get(NETWORK_ADDR_META).map(String::as_str),
        &instance.address,
        instance.port,
    )
}

fn passing_of(view: &View, service: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = view
        .instances
        .iter()
        .filter(|i| i.service == service && i.passing)
        .filter_map(|i| reachable(i, view.node))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The answer to `query`, or `None` when it is to be forwarded upstream.
pub fn answer(query: &Message, view: &View) -> Option<Message> {
    let q = query.queries.first()?;
    let qname = q.name().to_ascii().to_ascii_lowercase();
    let target = classify(qname.trim_end_matches('.'));
    if target == Target::External {
        return None;
    }
    let mut resp = Message::response(query.metadata.id, OpCode::Query);
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if query.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Some(resp);
    }
    let name: Name = q.name().clone();
    let qtype = q.query_type();
    let a = |ip: Ipv4Addr| Record::from_rdata(name.clone(), 0, RData::A(A(ip)));
    match target {
        Target::Internal(svc) if view.instances.iter().any(|i| i.service == svc) => {
            if matches!(qtype, RecordType::A | RecordType::ANY) {
                resp.add_answer(a(view.gateway_ip));
            }
        }
        Target::Service(svc) => {
            let addrs = passing_of(view, &svc);
            if addrs.is_empty() {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            for addr in addrs {
                let SocketAddr::V4(v4) = addr else { continue };
                match qtype {
                    RecordType::A | RecordType::ANY => {
                        resp.add_answer(a(*v4.ip()));
                    }
                    RecordType::SRV => {
                        let target = Name::from_ascii(format!(
                            "{:08x}.addr.dc1.consul.",
                            u32::from(*v4.ip())
                        ))
                        .ok()?;
                        let srv = SRV::new(1, 1, v4.port(), target.clone());
                        resp.add_answer(Record::from_rdata(name.clone(), 0, RData::SRV(srv)));
                        resp.add_additional(Record::from_rdata(target, 0, RData::A(A(*v4.ip()))));
                    }
                    _ => {}
                }
            }
        }
        Target::Addr(ip) => {
            if matches!(qtype, RecordType::A | RecordType::ANY) {
                resp.add_answer(a(ip));
            }
        }
        _ => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::collections::BTreeMap;

    fn inst(
        service: &str,
        id: &str,
        node: &str,
        addr: &str,
        port: u16,
        net: Option<&str>,
        passing: bool,
    ) -> CatalogInstance {
        let mut meta = BTreeMap::from([(NODE_META.to_string(), node.to_string())]);
        if let Some(n) = net {
            meta.insert(NETWORK_ADDR_META.to_string(), n.to_string());
        }
        CatalogInstance {
            service: service.into(),
            instance_id: id.into(),
            address: addr.into(),
            port,
            meta,
            passing,
            ..Default::default()
        }
    }

    fn ask(name: &str, qtype: RecordType, view: &View) -> Option<Message> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        answer(&q, view)
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("api.internal"), Target::Internal("api".into()));
        assert_eq!(classify("x.api.internal"), Target::NoSuchName);
        assert_eq!(
            classify("api.service.consul"),
            Target::Service("api".into())
        );
        assert_eq!(
            classify("api.service.dc1.consul"),
            Target::Service("api".into())
        );
        assert_eq!(
            classify("_api._tcp.service.consul"),
            Target::Service("api".into())
        );
        assert_eq!(
            classify("7f000001.addr.dc1.consul"),
            Target::Addr(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(classify("n1.node.consul"), Target::NoSuchName);
        assert_eq!(classify("example.com"), Target::External);
        assert_eq!(classify("internal.example.com"), Target::External);
    }

    #[test]
    fn answers_internal_service_and_forwards_the_rest() {
        let instances = vec![
            inst(
                "api",
                "a1",
                "n1",
                "127.0.0.1",
                32001,
                Some("172.20.0.5:8080"),
                true,
            ),
            inst(
                "api",
                "a2",
                "n2",
                "10.0.0.2",
                32002,
                Some("172.20.0.9:8080"),
                true,
            ),
            inst(
                "api",
                "a3",
                "n1",
                "127.0.0.1",
                32003,
                Some("172.20.0.6:8080"),
                false,
            ),
            inst("db", "d1", "n1", "127.0.0.1", 32004, None, false),
        ];
        let view = View {
            gateway_ip: Ipv4Addr::new(172, 20, 0, 1),
            node: "n1",
            instances: &instances,
        };
        let m = ask("api.internal.", RecordType::A, &view).unwrap();
        assert_eq!(ips(&m), vec!["172.20.0.1"]);
        let m = ask("nope.internal.", RecordType::A, &view).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask("API.service.consul.", RecordType::A, &view).unwrap();
        assert_eq!(
            ips(&m),
            vec!["10.0.0.2", "172.20.0.5"],
            "local instances at their network address, remote ones at their catalog address, passing only"
        );
        let m = ask("api.service.consul.", RecordType::SRV, &view).unwrap();
        let ports: Vec<u16> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect();
        assert_eq!(ports, vec![32002, 8080]);
        assert_eq!(m.additionals.len(), 2);
        let m = ask("db.service.consul.", RecordType::A, &view).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "nothing passing"
        );
        assert!(ask("example.com.", RecordType::A, &view).is_none());
    }
}
