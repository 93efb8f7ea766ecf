//! DNS answers checked with the real `dig` (Debian dnsutils) over UDP and TCP, plus raw
//! malformed packets.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Options, TestServer};
use pier_catalog::{
    CheckDefinition, CheckKind, CheckRegistration, CheckStatus, InstanceRegistration,
    NodeRegistration,
};

fn dig(server: &TestServer, args: &[&str]) -> String {
    let port = server.dns_addr.port().to_string();
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig is required (apt-get install dnsutils)");
    assert!(
        out.status.success(),
        "dig {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn short(server: &TestServer, args: &[&str]) -> BTreeSet<String> {
    let mut a = args.to_vec();
    a.push("+short");
    dig(server, &a)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn status_of(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no status in {output}"))
}

fn ttl_check(status: CheckStatus) -> CheckRegistration {
    CheckRegistration {
        id: None,
        name: None,
        notes: String::new(),
        status: Some(status),
        definition: CheckDefinition {
            kind: CheckKind::Ttl {
                ttl: Duration::from_secs(3600),
            },
            interval: None,
            timeout: None,
            deregister_critical_after: None,
            success_before_passing: 0,
            failures_before_critical: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_answers_a_srv_tags_nodes_and_nxdomain() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let catalog = s.catalog().clone();
    s.on(async move {
        catalog
            .register_node(&NodeRegistration {
                name: "n2".into(),
                address: "127.0.0.5".into(),
                monitored: false,
                ..Default::default()
            })
            .await
            .unwrap();
        let inst = |id: &str, node: &str, addr: &str, port: u16, tags: &[&str], status| {
            InstanceRegistration {
                id: id.into(),
                service: "web".into(),
                node: node.into(),
                address: addr.into(),
                port,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                checks: vec![ttl_check(status)],
                ..Default::default()
            }
        };
        for reg in [
            inst("web-1", "server1", "", 8080, &["v1"], CheckStatus::Passing),
            inst("web-2", "n2", "", 8081, &["v2"], CheckStatus::Warning),
            inst(
                "web-3",
                "n2",
                "127.0.0.9",
                8082,
                &["v2"],
                CheckStatus::Critical,
            ),
            inst(
                "web-4",
                "server1",
                "127.0.0.7",
                8083,
                &["own"],
                CheckStatus::Passing,
            ),
        ] {
            catalog.register_instance(&reg).await.unwrap();
        }
        let mut dead = inst("db-1", "n2", "", 5432, &[], CheckStatus::Critical);
        dead.service = "db".into();
        catalog.register_instance(&dead).await.unwrap();
    })
    .await;

    // A: every instance that is not critical (warning counts as up); +tcp gets them all.
    let want: BTreeSet<String> = ["127.0.0.1", "127.0.0.5", "127.0.0.7"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(short(&s, &["web.service.consul", "A", "+tcp"]), want);
    assert_eq!(short(&s, &["web.service.dc1.consul", "A", "+tcp"]), want);
    // UDP answers are limited to 3 instances (all 3 here).
    assert_eq!(short(&s, &["web.service.consul", "A"]), want);
    // Tag lookup, both forms.
    assert_eq!(
        short(&s, &["v2.web.service.consul", "A"]),
        BTreeSet::from(["127.0.0.5".to_string()])
    );
    assert_eq!(
        short(&s, &["_web._v1.service.consul", "A"]),
        BTreeSet::from(["127.0.0.1".to_string()])
    );
    // Node lookup.
    assert_eq!(
        short(&s, &["n2.node.consul", "A"]),
        BTreeSet::from(["127.0.0.5".to_string()])
    );
    assert_eq!(
        short(&s, &["server1.node.dc1.consul", "A"]),
        BTreeSet::from(["127.0.0.1".to_string()])
    );

    // SRV, plain and RFC 2782, with the target's A record in the additional section.
    for name in ["web.service.consul", "_web._tcp.service.consul"] {
        let out = dig(
            &s,
            &[name, "SRV", "+tcp", "+noall", "+answer", "+additional"],
        );
        let srv: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("\tSRV\t") || l.contains(" SRV "))
            .collect();
        assert_eq!(srv.len(), 3, "{out}");
        assert!(out.contains("8080 server1.node.dc1.consul."), "{out}");
        assert!(out.contains("8081 n2.node.dc1.consul."), "{out}");
        assert!(out.contains("8083 7f000007.addr.dc1.consul."), "{out}");
        assert!(!out.contains("8082"), "critical instance in SRV: {out}");
        let additional_a = |target: &str, ip: &str| {
            out.lines()
                .any(|l| l.starts_with(target) && l.contains("\tA\t") && l.trim_end().ends_with(ip))
        };
        assert!(
            additional_a("server1.node.dc1.consul.", "127.0.0.1"),
            "{out}"
        );
        assert!(additional_a("n2.node.dc1.consul.", "127.0.0.5"), "{out}");
        assert!(
            additional_a("7f000007.addr.dc1.consul.", "127.0.0.7"),
            "{out}"
        );
    }
    assert_eq!(
        short(&s, &["7f000007.addr.dc1.consul", "A"]),
        BTreeSet::from(["127.0.0.7".to_string()])
    );

    // TTL 0 by default.
    let out = dig(&s, &["n2.node.consul", "A", "+noall", "+answer"]);
    assert!(
        out.contains("n2.node.consul.\t\t0\tIN\tA\t127.0.0.5") || out.contains("\t0\tIN\tA"),
        "{out}"
    );

    // NXDOMAIN: unknown service, unknown node, a service whose only instance is critical,
    // a wrong datacenter, a name we do not understand.
    for name in [
        "nope.service.consul",
        "nope.node.consul",
        "db.service.consul",
        "web.service.dc9.consul",
        "what.consul",
    ] {
        let out = dig(&s, &[name, "A"]);
        assert_eq!(status_of(&out), "NXDOMAIN", "{name}: {out}");
    }
    // Outside our domain: refused (no recursion).
    assert_eq!(status_of(&dig(&s, &["example.com", "A"])), "REFUSED");
}

fn query_packet(id: u16, labels: &[String]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in labels {
        p.push(l.len() as u8);
        p.extend_from_slice(l.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&[0, 1, 0, 1]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_queries() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(s.dns_addr).await.unwrap();
    let mut buf = [0u8; 4096];

    // Garbage of every short length and some random bytes: no answer expected, no crash.
    for len in 0..40usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        sock.send(&junk).await.unwrap();
    }
    sock.send(&[0xff; 512]).await.unwrap();

    // A name longer than DNS allows (4 labels of 63 bytes = 257 octets): FORMERR.
    let long: Vec<String> = (0..4).map(|i| format!("{i}").repeat(63)).collect();
    sock.send(&query_packet(0x4242, &long)).await.unwrap();
    let n = loop {
        let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
            .await
            .expect("an answer to the long name")
            .unwrap();
        if n >= 4 && buf[0] == 0x42 && buf[1] == 0x42 {
            break n;
        }
    };
    assert!(n >= 12);
    assert_eq!(buf[3] & 0x0f, 1, "RCODE FORMERR for an over-long name");

    // The server still answers a proper query.
    let good = ["server1", "node", "consul"].map(String::from);
    sock.send(&query_packet(0x0707, &good)).await.unwrap();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
            .await
            .expect("an answer after junk")
            .unwrap();
        if n >= 12 && buf[0] == 0x07 && buf[1] == 0x07 {
            assert_eq!(buf[3] & 0x0f, 0, "NOERROR");
            assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 1, "one answer");
            break;
        }
    }
    let out = dig(&s, &["server1.node.consul", "A", "+short"]);
    assert_eq!(out.trim(), "127.0.0.1");
}
