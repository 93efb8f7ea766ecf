//! A secure cluster as an operator starts it — `pier server` on the first machine, the others
//! with `--join` and the printed token — checked from the outside: every connection is TLS,
//! strangers cannot complete a handshake or reach raft, agents act only for their own node,
//! API tokens allow what their policies say and nothing else, and everything refused or
//! changed is in the audit log.

mod security_common;

use std::time::{Duration, Instant};

use pier_security::ca::{ClusterCa, NodeIdentity, Role, NODE_VALIDITY};
use pier_testkit::process::PierProcess;
use security_common::*;
use serde_json::{json, Value};

fn now() -> u64 {
    pier_api::time::now_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_joined_with_the_printed_token_speaks_only_tls_to_members() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 3, &[]).await;
    let mgmt = c.management_token();

    // Writes go through any server (forwarded over mTLS) and are read back from another.
    let out = c.cli(2, Some(&mgmt), &["kv", "put", "app/greeting", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.cli(1, Some(&mgmt), &["kv", "get", "app/greeting"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello",
        "{}",
        stderr(&out)
    );

    // Plain HTTP to the raft and API ports gets nowhere.
    for port in [c.servers[0].raft, c.servers[0].http] {
        let plain = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/raft/vote"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(
            plain.is_err() || !plain.unwrap().status().is_success(),
            "plain HTTP answered on port {port}"
        );
    }

    // A certificate from another CA: the handshake fails (no HTTP status at all).
    let other = ClusterCa::generate(now()).unwrap();
    let stranger = other
        .issue(
            &NodeIdentity::new(Role::Server, "s1").unwrap(),
            &[],
            NODE_VALIDITY,
            now(),
        )
        .unwrap();
    let tls = pier_security::tls::client_config(
        &[&c.ca_pem()],
        Some((&stranger.cert_pem, &stranger.key_pem)),
    )
    .unwrap();
    let forged = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
        .post(format!("https://{}/raft/append", c.servers[0].raft_addr()))
        .body("{}")
        .send()
        .await;
    assert!(
        forged.is_err(),
        "a certificate of another CA completed a handshake: {forged:?}"
    );

    // A server with a token of this CA but a wrong secret is refused and exits.
    let wrong = pier_security::token::JoinToken::new(
        Some(pier_security::ca::fingerprint_pem(&c.ca_pem()).unwrap()),
        pier_security::token::generate_secret(),
    )
    .to_string();
    let dir = tmp.path().join("intruder");
    let raft = pier_testkit::net::free_port().to_string();
    let http = pier_testkit::net::free_port().to_string();
    let join = c.servers[0].raft_addr();
    let args = [
        "server",
        "--data-dir",
        dir.to_str().unwrap(),
        "--node-name",
        "intruder",
        "--http-port",
        &http,
        "--raft-port",
        &raft,
        "--join",
        &join,
        "--token",
        &wrong,
    ];
    let mut intruder = PierProcess::spawn(PIER, "intruder", &args, tmp.path());
    let status = intruder.signal_and_wait("CONT", Duration::from_secs(20));
    let log = std::fs::read_to_string(tmp.path().join("intruder.log")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a server with a wrong join secret kept running: {log}"
    );
    assert!(log.contains("not valid for this cluster"), "{log}");
    assert!(
        !dir.join("tls/node.crt").exists(),
        "the intruder got a certificate"
    );
    // A token that pins another CA is refused before the secret is sent.
    let other_pin =
        pier_security::token::JoinToken::new(Some(other.fingerprint()), "x".repeat(32)).to_string();
    let out = std::process::Command::new(PIER)
        .args([
            "server",
            "--data-dir",
            tmp.path().join("intruder2").to_str().unwrap(),
            "--node-name",
            "intruder2",
            "--http-port",
            &pier_testkit::net::free_port().to_string(),
            "--raft-port",
            &pier_testkit::net::free_port().to_string(),
            "--join",
            &join,
            "--token",
            &other_pin,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not trust"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_calls_without_a_cluster_certificate_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 1, &[]).await;
    let mgmt = c.client(Some(&c.management_token()));
    let before: Value = mgmt
        .get(format!("{}/api/v1/status", c.servers[0].base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // TLS without a client certificate (trusting the CA, as anyone could download it).
    let anonymous = c.client(None);
    let vote = json!({"vote": {"leader_id": {"term": 999, "node_id": 1}, "committed": false}, "last_log_id": null});
    for path in [
        "/raft/vote",
        "/raft/append",
        "/raft/write",
        "/raft/join",
        "/raft/snapshot",
    ] {
        let r = anonymous
            .post(format!("https://{}{path}", c.servers[0].raft_addr()))
            .json(&vote)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    // An agent's certificate is not a server's either.
    let agent = c.servers[0].dir.join("../agent-forger");
    let ca = ClusterCa::from_pem(
        &c.ca_pem(),
        &std::fs::read_to_string(c.first_dir().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let cert = ca
        .issue(
            &NodeIdentity::new(Role::Agent, "n1").unwrap(),
            &[],
            NODE_VALIDITY,
            now(),
        )
        .unwrap();
    std::fs::create_dir_all(agent.join("tls")).unwrap();
    std::fs::write(agent.join("tls/node.crt"), &cert.cert_pem).unwrap();
    std::fs::write(agent.join("tls/node.key"), &cert.key_pem).unwrap();
    let r = c
        .node_client(&agent)
        .post(format!("https://{}/raft/vote", c.servers[0].raft_addr()))
        .json(&vote)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let after: Value = mgmt
        .get(format!("{}/api/v1/status", c.servers[0].base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        before["term"], after["term"],
        "a forged vote changed the term"
    );
    assert_eq!(after["is_leader"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_allow_what_their_policies_say_and_revocation_is_immediate() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 3, &[]).await;
    let mgmt = c.management_token();
    let (read, _) = c.create_token(&["read"]);
    let (deploy_web, deploy_accessor) = c.create_token(&["deploy:web*"]);

    // Without a token every mutating endpoint refuses (401) and reads too.
    let anon = c.client(None);
    let base = c.servers[1].base();
    let mutating = [
        ("PUT", "/api/v1/kv/x"),
        ("PUT", "/v1/kv/x"),
        ("POST", "/api/v1/services"),
        ("PUT", "/api/v1/services/web/scale"),
        ("POST", "/api/v1/services/web/rollback"),
        ("DELETE", "/api/v1/services/web"),
        ("PUT", "/api/v1/nodes/n1/drain"),
        ("POST", "/api/v1/pipelines"),
        ("PUT", "/v1/agent/service/register"),
        ("DELETE", "/api/v1/members/s3"),
        ("POST", "/api/v1/acl/tokens"),
        ("POST", "/api/v1/snapshot/restore"),
        ("PUT", "/api/v1/nodes/n1"),
        ("PUT", "/api/v1/tasks/t1/status"),
    ];
    for (method, path) in mutating {
        let r = anon
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 401 || r.status() == 403,
            "{method} {path} answered {} without a token",
            r.status()
        );
    }
    assert_eq!(
        anon.get(format!("{base}/api/v1/kv/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A read token reads but does not deploy.
    let file = |name: &str| {
        format!(
            "name = \"{name}\"\nimage = \"127.0.0.1:5000/none:v1\"\n[env]\nPASSWORD = \"s3cret\"\n"
        )
    };
    let deploy = |token: &str, name: &str| {
        let client = c.client(Some(token));
        let body = json!({"file": file(name)});
        let url = format!("{base}/api/v1/services");
        async move { client.post(url).json(&body).send().await.unwrap().status() }
    };
    assert_eq!(deploy(&read, "web").await, 403);
    assert!(c
        .client(Some(&read))
        .get(format!("{base}/api/v1/services"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // A deploy token for web* deploys web (whatever the outcome of the deploy itself) but not api.
    assert_ne!(deploy(&deploy_web, "web").await, 403);
    assert_eq!(deploy(&deploy_web, "api").await, 403);
    // Secrets: management sees the env value, the read token sees it redacted.
    let env_of = |token: &str| {
        let client = c.client(Some(token));
        let url = format!("{base}/api/v1/services/web");
        async move {
            let r = client.get(url).send().await.unwrap();
            let v: Value = r.json().await.unwrap();
            v["spec"]["env"]["PASSWORD"].clone()
        }
    };
    if env_of(&mgmt).await == "s3cret" {
        assert_eq!(env_of(&read).await, "(redacted)");
    } else {
        // The deploy may have been refused for its image; then there is nothing to inspect.
        let r = c
            .client(Some(&mgmt))
            .get(format!("{base}/api/v1/services/web"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "web neither deployed nor absent");
    }

    // Revoked: refused at once on every server.
    let out = c.cli(
        0,
        Some(&mgmt),
        &["acl", "token", "revoke", &deploy_accessor],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let t0 = Instant::now();
    for s in &c.servers {
        let r = c
            .client(Some(&deploy_web))
            .get(format!("{}/api/v1/services", s.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            403,
            "a revoked token still works on {} ({:?} after revoking)",
            s.name,
            t0.elapsed()
        );
    }
    // Every refusal is in the audit log, with who (written in batches: give it a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.cli(2, Some(&mgmt), &["audit", "--json"]);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let anonymous_401 = lines
            .iter()
            .any(|l| l["who"] == "anonymous" && l["status"] == 401);
        let token_403 = lines.iter().any(|l| {
            l["who"].as_str().is_some_and(|w| w.starts_with("token:")) && l["status"] == 403
        });
        if anonymous_401 && token_403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit log lacks refusals (anonymous 401: {anonymous_401}, token 403: {token_403}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node certificate an agent keeps in its data directory.
fn node_cert(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join("tls/node.crt")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_acts_only_for_its_own_node_and_certificates_renew() {
    let tmp = tempfile::tempdir().unwrap();
    // Short-lived certificates: renewed after two thirds, so within the test.
    let c = SecureCluster::start(tmp.path(), 1, &["--cert-lifetime", "24s"]).await;
    let mgmt = c.management_token();
    let agent_dir = tmp.path().join("agent-n1");
    let _agent = c.spawn_agent("n1", &agent_dir, None);
    let server = c.servers[0].base();
    wait_file(&agent_dir.join("tls/node.crt"), Duration::from_secs(30)).await;
    let first_cert = node_cert(&agent_dir).unwrap();
    let admin = c.client(Some(&mgmt));
    let node_state = |client: reqwest::Client| {
        let url = format!("{server}/api/v1/nodes");
        async move {
            let nodes: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == "n1")
                .and_then(|n| n["state"].as_str().map(str::to_string))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_state(admin.clone()).await.as_deref() != Some("ready") {
        assert!(Instant::now() < deadline, "agent n1 never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // With n1's certificate: its own node is fine, another node's is not.
    let as_n1 = c.node_client(&agent_dir);
    let own = as_n1
        .get(format!("{server}/api/v1/nodes/n1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "reading its own tasks");
    let refused = [
        ("GET", format!("{server}/api/v1/nodes/n2/tasks")),
        ("PUT", format!("{server}/api/v1/nodes/n2/alive")),
        (
            "PUT",
            format!("{server}/api/v1/tasks/someone-elses-task/status"),
        ),
        ("POST", format!("{server}/api/v1/services")),
        ("PUT", format!("{server}/api/v1/kv/app/x")),
    ];
    for (method, url) in &refused {
        let r = as_n1
            .request(method.parse().unwrap(), url)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {url} as agent n1");
    }
    // Nothing changed: no node n2 appeared.
    let nodes: Value = admin
        .get(format!("{server}/api/v1/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !nodes.as_array().unwrap().iter().any(|n| n["name"] == "n2"),
        "{nodes}"
    );
    // The refusals are audited under the agent's identity.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.cli(0, Some(&mgmt), &["audit", "--json"]);
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| {
                l["who"] == "node:agent/n1"
                    && l["status"] == 403
                    && l["path"] == "/api/v1/nodes/n2/alive"
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's refusal is not in the audit log:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Renewal: a new certificate before the first expires, and the node stays ready throughout.
    let renewed_by = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            node_state(admin.clone()).await.as_deref(),
            Some("ready"),
            "node n1 not ready while its certificate renews"
        );
        if node_cert(&agent_dir).is_some_and(|c| c != first_cert) {
            break;
        }
        assert!(
            Instant::now() < renewed_by,
            "the agent's 24 s certificate was not renewed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Heartbeats keep going on the new certificate, past the first one's expiry.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(node_state(admin.clone()).await.as_deref(), Some("ready"));
    let r = c
        .node_client(&agent_dir)
        .get(format!("{server}/api/v1/nodes/n1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the renewed certificate is accepted");
}
