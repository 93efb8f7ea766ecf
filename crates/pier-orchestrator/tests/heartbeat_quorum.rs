//! Node heartbeats are acknowledged only on behalf of a leader that a quorum follows. Three
//! in-process servers (real stores over loopback TCP, each with its orchestrator API): a
//! heartbeat is acknowledged by the leader and through a follower; once both followers are
//! gone the leader — which openraft keeps leading — is cut off from its quorum, and after an
//! election timeout it refuses heartbeats, so an agent attached to it learns that the rest of
//! the cluster may have marked its node down. Stopping the followers is, from the leader's
//! side, the same as a partition that isolates it: it simply stops hearing from them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pier_api::service::RegisterNode;
use pier_orchestrator::{Orchestrator, OrchestratorConfig};
use pier_store::{Store, StoreConfig};

struct Server {
    _dir: tempfile::TempDir,
    store: Store,
    orch: Orchestrator,
    base: String,
    http: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(name: &str, join: Vec<String>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the HTTP listener");
        let http_addr = listener.local_addr().expect("HTTP address");
        let store = Store::open(StoreConfig {
            node_name: name.to_string(),
            data_dir: dir.path().join("raft"),
            raft_listen: "127.0.0.1:0".parse().expect("address"),
            raft_advertise: None,
            http_advertise: http_addr.to_string(),
            bootstrap_expect: 3,
            join,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_logs: 10_000,
            tls: None,
            extra_routes: None,
        })
        .await
        .expect("open the store");
        let catalog =
            pier_catalog::Catalog::new(store.clone(), pier_catalog::CatalogConfig::default());
        let orch = pier_orchestrator::spawn(store.clone(), catalog, OrchestratorConfig::default());
        let router = orch.router();
        let http = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server {
            _dir: dir,
            store,
            orch,
            base: format!("http://{http_addr}"),
            http,
        }
    }

    async fn stop(self) {
        self.http.abort();
        self.orch.shutdown().await;
        self.store.shutdown().await.expect("store shutdown");
    }

    /// Status code of a heartbeat of node `n1` sent to this server, and the body.
    async fn heartbeat(&self) -> (u16, String) {
        let resp = reqwest::Client::new()
            .put(format!("{}/api/v1/nodes/n1/alive", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("heartbeat request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

async fn wait_ready(servers: &[Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses: Vec<_> = servers.iter().map(|s| s.store.status()).collect();
        let leader = statuses[0].leader.as_ref().map(|l| l.id);
        let ready = leader.is_some()
            && statuses.iter().all(|s| {
                s.leader.as_ref().map(|l| l.id) == leader
                    && s.members.iter().filter(|m| m.voter).count() == 3
            });
        if ready {
            if let Some(i) = statuses.iter().position(|s| s.is_leader) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster not ready: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_refuses_heartbeats() {
    let first = Server::start("s0", Vec::new()).await;
    let join = vec![first.store.raft_addr().to_string()];
    let mut servers = vec![
        first,
        Server::start("s1", join.clone()).await,
        Server::start("s2", join).await,
    ];
    let leader = wait_ready(&servers).await;
    let registration = RegisterNode {
        zone: "a".into(),
        agent_addr: "127.0.0.1:1".into(),
        host_ip: "127.0.0.1".into(),
        attributes: BTreeMap::new(),
        cpu_millis: 1_000,
        memory_mb: 512,
        volumes: vec![],
        volume_roots: vec![],
    };
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/nodes/n1", servers[leader].base))
        .json(&registration)
        .send()
        .await
        .expect("register");
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );

    // With a quorum: acknowledged by the leader and through either follower.
    for (i, s) in servers.iter().enumerate() {
        let (status, body) = s.heartbeat().await;
        assert_eq!(status, 204, "server {i} (leader {leader}): {body}");
    }

    // Both followers go away; the leader keeps leading but hears from no quorum.
    let leader_server = servers.remove(leader);
    for s in servers {
        s.stop().await;
    }
    let cut_at = Instant::now();
    let refused = loop {
        let (status, body) = leader_server.heartbeat().await;
        if status != 204 {
            break (status, body);
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(5),
            "the isolated leader still acknowledges heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = cut_at.elapsed();
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert!(refused.1.contains("no quorum"), "{}", refused.1);
    // Refused about an election timeout (800 ms) after the quorum's last acknowledgement, not
    // at the first missed beat.
    assert!(took >= Duration::from_millis(400), "refused after {took:?}");
    let contact = leader_server.store.leader_contact();
    assert!(contact.is_leader && !contact.known_leader, "{contact:?}");
    // It stays refused: nothing comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leader_server.heartbeat().await.0, 503);
    leader_server.stop().await;
}
