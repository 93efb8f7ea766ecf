//! Self-healing on the real engine with `pier agent` processes: spread across zones, a dead
//! node's tasks move to the other zone within seconds, a killed container is replaced, and a
//! restarted agent adopts its containers (no duplicates, no orphans).

mod orchestrator_common;

use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

async fn zones_of_passing(c: &Cluster, service: &str) -> Vec<String> {
    let tasks = c.tasks(service).await;
    let mut zones = Vec::new();
    for (id, _, _) in c.passing(service).await {
        if let Some(t) = tasks.iter().find(|t| t["task"]["id"] == id.as_str()) {
            zones.push(t["task"]["zone"].as_str().unwrap_or("").to_string());
        }
    }
    zones.sort();
    zones
}

/// Passing instances of `service` as the catalog advertises them: (address, port).
async fn passing_addrs(c: &Cluster, service: &str) -> Vec<(String, u64)> {
    let v = c
        .get(&format!("/v1/health/service/{service}?passing"))
        .await;
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let addr = e["Service"]["Address"].as_str().unwrap_or_default();
            (addr.to_string(), e["Service"]["Port"].as_u64().unwrap_or(0))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_failover_kill_and_adoption() {
    let mut c = Cluster::start_two_zones(&["--node-down-after", "2s"]).await;
    let (a, b) = (0, 1);
    let image = c.push_image("spread:v1", HttpdVariant::Healthy);
    let file = c.write_file("spread.toml", &service_file("spread", &image, 4, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        zones_of_passing(&c, "spread").await,
        vec!["a", "a", "b", "b"]
    );

    // A killed container is replaced.
    let victim = containers_of_node(&c, "node-b")[0].clone();
    let _ = Command::new("docker").args(["kill", &victim]).output();
    eventually(
        "the killed container is replaced",
        Duration::from_secs(20),
        || async {
            let p = c.passing("spread").await;
            p.len() == 4
                && c.guard.containers(false).len() == 4
                && !c.guard.containers(false).contains(&victim)
        },
    )
    .await;

    // Restarting agent b: its containers are adopted, not duplicated, not killed.
    let before: Vec<String> = {
        let mut v = containers_of_node(&c, "node-b");
        v.sort();
        v
    };
    c.agents[b].kill9();
    let args = c.agent_args("node-b", "b");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.agents[b] =
        pier_testkit::process::PierProcess::spawn(BIN, "agent-node-b-2", &refs, c.dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = containers_of_node(&c, "node-b");
    after.sort();
    assert_eq!(before, after, "the restarted agent changed its containers");
    assert_eq!(c.passing("spread").await.len(), 4);

    // Restarted with another host address (e.g. agents started with the old 127.0.0.1
    // default): containers published on the old address are replaced by ones reachable at
    // the new one, not adopted with an address nothing listens on.
    c.agents[b].kill9();
    let mut args = c.agent_args("node-b", "b");
    args.extend(["--host-ip".to_string(), "127.0.0.2".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.agents[b] =
        pier_testkit::process::PierProcess::spawn(BIN, "agent-node-b-3", &refs, c.dir.path());
    eventually(
        "node b's replicas published on 127.0.0.2 and passing",
        Duration::from_secs(30),
        || async {
            let on_b: Vec<_> = passing_addrs(&c, "spread")
                .await
                .into_iter()
                .filter(|(addr, _)| addr == "127.0.0.2")
                .collect();
            let now = containers_of_node(&c, "node-b");
            on_b.len() == 2 && now.len() == 2 && now.iter().all(|id| !before.contains(id))
        },
    )
    .await;
    for (addr, port) in passing_addrs(&c, "spread").await {
        if addr == "127.0.0.2" {
            let url = format!("http://127.0.0.2:{port}/");
            let body = reqwest::get(&url).await.expect("the new address answers");
            assert!(body.status().is_success(), "{url}: {}", body.status());
        }
    }

    // A blip shorter than the down timeout (agent b frozen for 1 s) moves nothing.
    let tasks_before: Vec<String> = c
        .tasks("spread")
        .await
        .iter()
        .map(|t| t["task"]["id"].to_string())
        .collect();
    let pid = c.agents[b].pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tasks_after: Vec<String> = c
        .tasks("spread")
        .await
        .iter()
        .map(|t| t["task"]["id"].to_string())
        .collect();
    assert_eq!(tasks_before, tasks_after, "a 1 s blip moved tasks");
    assert_eq!(c.passing("spread").await.len(), 4);

    // Node a dies with its containers: within seconds four healthy replicas run in zone b.
    c.agents[a].kill9();
    let killed = Instant::now();
    for id in containers_of_node(&c, "node-a") {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    eventually(
        "four healthy replicas in zone b",
        Duration::from_secs(20),
        || async { zones_of_passing(&c, "spread").await == vec!["b", "b", "b", "b"] },
    )
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    let nodes = c.get("/api/v1/nodes").await;
    let a_state = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-a")
        .unwrap()["state"]
        .clone();
    assert_eq!(a_state, "down");
    eprintln!("failover to zone b took {took:?}");

    // Agent b is away while the service shrinks and its node is declared down; when it comes
    // back it removes the containers of tasks it no longer runs: no orphans, no duplicates.
    c.agents[b].kill9();
    let out = c.pier(&["service", "scale", "spread", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let args = c.agent_args("node-b", "b");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.agents[b] =
        pier_testkit::process::PierProcess::spawn(BIN, "agent-node-b-3", &refs, c.dir.path());
    eventually(
        "two passing replicas and exactly two containers",
        Duration::from_secs(30),
        || async { c.passing("spread").await.len() == 2 && c.guard.containers(true).len() == 2 },
    )
    .await;
}
