//! `pier ca rotate` on a running secure cluster (3 servers and an agent, real TLS): KV writes
//! go on throughout and none that was acknowledged is lost, every server and the agent end up
//! serving a certificate from the new CA, join tokens that pin the old CA work during the
//! overlap and not after it, and after the overlap nothing that trusts only the old CA (or
//! holds a certificate it signed) gets through a handshake.

mod security_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use security_common::*;
use serde_json::Value;

/// The overlap the test rotates with; its trust phase is then the 15 s minimum.
const OVERLAP_SECS: u64 = 45;

/// PEM of one certificate of `bundle` by its SHA-256.
fn cert_by_fingerprint(bundle: &str, fp: &str) -> String {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(|block| format!("{}\n", block.trim()))
        .find(|pem| pier_security::ca::fingerprint_pem(pem).is_ok_and(|f| f == fp))
        .unwrap_or_else(|| panic!("no certificate {fp} in the bundle:\n{bundle}"))
}

/// Whether a TLS client that trusts only `ca_pem` (presenting `identity` if given) completes a
/// request to `https://127.0.0.1:port` (any HTTP status counts: the handshake worked).
async fn handshake_ok(port: u16, ca_pem: &str, identity: Option<(&str, &str)>) -> bool {
    let tls = pier_security::tls::client_config(&[ca_pem], identity).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client
        .get(format!("https://127.0.0.1:{port}/pier/v1/ca"))
        .send()
        .await
        .is_ok()
}

/// What the writer saw.
#[derive(Default, Debug)]
struct Writes {
    acknowledged: Vec<u64>,
    failed: u64,
    /// Longest time from a failed write to the next acknowledged one.
    longest_outage: Duration,
}

/// Writes `rot/<i>` = `i` one after another through the servers in turn until `stop`, with a
/// client that reads the CA bundle from `ca_path` again whenever it changes (as an operator's
/// client holding DATA_DIR/tls/ca.crt does).
async fn write_until(
    ca_path: std::path::PathBuf,
    bases: Vec<String>,
    token: String,
    stop: Arc<AtomicBool>,
) -> Writes {
    let mut w = Writes::default();
    let mut bundle = String::new();
    let mut client = None;
    let mut failing_since: Option<Instant> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let current = std::fs::read_to_string(&ca_path).unwrap_or_default();
        if current != bundle || client.is_none() {
            let tls = pier_security::tls::client_config(&[&current], None).unwrap();
            client = Some(
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            );
            bundle = current;
        }
        let base = &bases[(i % bases.len() as u64) as usize];
        let ok = client
            .as_ref()
            .unwrap()
            .put(format!("{base}/v1/kv/rot/{i}"))
            .bearer_auth(&token)
            .body(i.to_string())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            w.acknowledged.push(i);
            if let Some(since) = failing_since.take() {
                w.longest_outage = w.longest_outage.max(since.elapsed());
            }
        } else {
            w.failed += 1;
            failing_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(since) = failing_since {
        w.longest_outage = w.longest_outage.max(since.elapsed());
    }
    w
}

async fn wait_ready(c: &SecureCluster, admin: &reqwest::Client, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: Option<Value> = match admin
            .get(format!("{}/api/v1/nodes", c.servers[0].base()))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let ready = nodes
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|n| n["name"] == node && n["state"] == "ready"));
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {node} not ready: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_keeps_the_cluster_up_and_ends_with_only_the_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 3, &[]).await;
    let mgmt = c.management_token();
    let admin = c.client(Some(&mgmt));
    let old_ca = c.ca_pem();
    let old_fp = pier_security::ca::fingerprint_pem(&old_ca).unwrap();
    let old_agent_token = c.agent_token();

    let agent_dir = tmp.path().join("agent-n1");
    let agent_port = pier_testkit::net::free_port();
    let _agent = c.spawn_agent_with("n1", &agent_dir, None, agent_port, &old_agent_token);
    wait_ready(&c, &admin, "n1").await;
    let old_agent_cert = std::fs::read_to_string(agent_dir.join("tls/node.crt")).unwrap();
    let old_agent_key = std::fs::read_to_string(agent_dir.join("tls/node.key")).unwrap();
    assert!(
        handshake_ok(agent_port, &old_ca, None).await,
        "the agent's listener does not answer TLS trusting the CA"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        c.ca_path(),
        c.servers.iter().map(|s| s.base()).collect(),
        mgmt.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Too short an overlap is refused with the reason; nothing starts.
    let out = c.cli(0, Some(&mgmt), &["ca", "rotate", "--overlap", "5s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least"), "{}", stderr(&out));

    // Asked of a follower, which passes it on to the leader; the leader makes the CA.
    let status: Value = admin
        .get(format!("{}/api/v1/status", c.servers[0].base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let leader = status["leader"]["name"].as_str().unwrap().to_string();
    let follower = c.servers.iter().position(|s| s.name != leader).unwrap();
    let started = Instant::now();
    let overlap = format!("{OVERLAP_SECS}s");
    let out = c.cli(
        follower,
        Some(&mgmt),
        &["ca", "rotate", "--overlap", &overlap, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_fp = rotated["rotation"]["new_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rotated["rotation"]["old_fingerprint"], old_fp.as_str());
    assert_ne!(new_fp, old_fp);
    let new_agent_token = rotated["agent_token"].as_str().unwrap().to_string();
    assert!(
        new_agent_token.starts_with(&format!("PIER1.{new_fp}.")),
        "{new_agent_token}"
    );
    let log = |name: &str| {
        std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    };
    assert!(
        log(&leader).contains("CA rotation started"),
        "the leader {leader} made no CA"
    );
    assert!(!log(&c.servers[follower].name).contains("CA rotation started"));
    // A second rotation while this one runs is refused.
    let again = c.cli(0, Some(&mgmt), &["ca", "rotate", "--overlap", "1h"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("under way"), "{}", stderr(&again));

    // Every server trusts both at once (the trust phase), the new CA is published.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.cli(2, Some(&mgmt), &["ca", "status", "--json"]);
        let st: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if st["trusted_fingerprints"]
            .as_array()
            .is_some_and(|t| t.len() == 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server 3 never trusted both CAs: {st}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_ca = cert_by_fingerprint(&c.ca_pem(), &new_fp);

    // Every server (API and raft ports) and the agent come to serve a certificate of the new CA
    // before the overlap ends.
    let mut ports: Vec<(String, u16)> = Vec::new();
    for s in &c.servers {
        ports.push((format!("{} api", s.name), s.http));
        ports.push((format!("{} raft", s.name), s.raft));
    }
    ports.push(("agent n1".into(), agent_port));
    for (what, port) in &ports {
        loop {
            if handshake_ok(*port, &new_ca, None).await {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(OVERLAP_SECS - 5),
                "{what} still serves a certificate of the old CA {:?} after the rotation began",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let switched_after = started.elapsed();
    let agent_cert = std::fs::read_to_string(agent_dir.join("tls/node.crt")).unwrap();
    assert!(pier_security::ca::issued_by(&agent_cert, &new_ca));

    // During the overlap a join token that pins the old CA still works.
    let n2_dir = tmp.path().join("agent-n2");
    let (mut n2, _n2_guard) = c.spawn_agent_with(
        "n2",
        &n2_dir,
        None,
        pier_testkit::net::free_port(),
        &old_agent_token,
    );
    wait_file(&n2_dir.join("tls/node.crt"), Duration::from_secs(20)).await;
    n2.signal_and_wait("TERM", Duration::from_secs(10));

    // After the overlap: only the new CA anywhere.
    let overlap_end = Duration::from_secs(OVERLAP_SECS + 4);
    if let Some(rest) = overlap_end.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    for s in &c.servers {
        let r: Value = c
            .client(None)
            .get(format!("{}/pier/v1/ca", s.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let bundle = r["ca_pem"].as_str().unwrap();
        assert_eq!(
            pier_security::ca::fingerprints_pem(bundle),
            vec![new_fp.clone()],
            "{} still trusts another CA",
            s.name
        );
    }
    for (what, port) in &ports {
        assert!(
            !handshake_ok(*port, &old_ca, None).await,
            "a client trusting only the old CA still reaches {what}"
        );
        assert!(
            !handshake_ok(*port, &new_ca, Some((&old_agent_cert, &old_agent_key))).await,
            "{what} still accepts a certificate of the old CA"
        );
    }
    // The agent still heartbeats, on its new certificate.
    wait_ready(&c, &admin, "n1").await;
    let agent_bundle = std::fs::read_to_string(agent_dir.join("tls/ca.crt")).unwrap();
    assert_eq!(
        pier_security::ca::fingerprints_pem(&agent_bundle),
        vec![new_fp.clone()]
    );
    // A token that pins the old CA is refused by the joining node once the old CA is gone.
    let n3 = std::process::Command::new("timeout")
        .args(["30", PIER, "agent", "--server", &c.servers[0].base()])
        .args([
            "--token",
            &old_agent_token,
            "--name",
            "n3",
            "--zone",
            "a",
            "--no-network",
        ])
        .args(["--data-dir", tmp.path().join("agent-n3").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!n3.status.success());
    assert!(stderr(&n3).contains("does not trust"), "{}", stderr(&n3));

    // No acknowledged write lost: each reads back with its value.
    let stored: Value = c
        .client(Some(&mgmt))
        .get(format!("{}/v1/kv/rot/?recurse", c.servers[0].base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: std::collections::HashMap<String, String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(e["Value"].as_str().unwrap_or(""))
                .unwrap();
            (
                e["Key"].as_str().unwrap().to_string(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect();
    for i in &writes.acknowledged {
        assert_eq!(
            stored.get(&format!("rot/{i}")),
            Some(&i.to_string()),
            "acknowledged write rot/{i} lost"
        );
    }
    eprintln!(
        "CA rotation: {} writes acknowledged, {} failed, longest outage {:?}; every process on the new CA {:?} after the rotation began",
        writes.acknowledged.len(),
        writes.failed,
        writes.longest_outage,
        switched_after
    );
    assert!(writes.acknowledged.len() > 200, "{writes:?}");
    assert!(
        writes.longest_outage < Duration::from_secs(2),
        "writes stopped for {:?} during the rotation",
        writes.longest_outage
    );
}
