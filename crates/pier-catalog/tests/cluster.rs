//! Three servers (three Stores over real TCP, each with its own API): a registration on one
//! is read on the others; after the leader is killed abruptly, reads and writes keep working
//! and the surviving nodes are not marked critical by the new leader.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestServer};
use serde_json::{json, Value};

async fn wait_ready(servers: &[TestServer], voters: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let statuses: Vec<_> = servers
            .iter()
            .filter(|s| s.is_up())
            .map(|s| s.catalog().store().status())
            .collect();
        let leader = statuses[0].leader.as_ref().map(|l| l.id);
        if leader.is_some()
            && statuses.iter().all(|s| {
                s.leader.as_ref().map(|l| l.id) == leader
                    && s.members.iter().filter(|m| m.voter).count() == voters
            })
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster not ready: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(c: &reqwest::Client, url: String) -> Option<Value> {
    let r = c
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_the_catalog_and_survive_leader_loss() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let join = servers
            .first()
            .map(|f: &TestServer| vec![f.raft_addr.to_string()])
            .unwrap_or_default();
        let name = format!("s{i}");
        servers.push(
            TestServer::start(&name, &dir.path().join(&name), 3, join, Options::default()).await,
        );
    }
    wait_ready(&servers, 3).await;
    for s in &servers {
        s.wait_node_registered(Duration::from_secs(20)).await;
    }
    let c = reqwest::Client::new();

    // Register through each server's agent; read everything from every server.
    for (i, s) in servers.iter().enumerate() {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(
                &json!({"ID": format!("web-{i}"), "Name": "web", "Port": 8000 + i,
                          "Check": {"TTL": "1h", "Status": "passing"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    for s in &servers {
        let health = get_json(&c, s.url("/v1/health/service/web?passing"))
            .await
            .unwrap();
        assert_eq!(
            health.as_array().unwrap().len(),
            3,
            "server {} sees all instances",
            s.name
        );
        let nodes = get_json(&c, s.url("/v1/catalog/nodes")).await.unwrap();
        assert_eq!(nodes.as_array().unwrap().len(), 3);
        let stale = get_json(&c, s.url("/v1/health/service/web?stale"))
            .await
            .unwrap();
        assert_eq!(stale.as_array().unwrap().len(), 3);
        let leader: String = get_json(&c, s.url("/v1/status/leader"))
            .await
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap();
        assert!(!leader.is_empty());
        let peers = get_json(&c, s.url("/v1/status/peers")).await.unwrap();
        assert_eq!(peers.as_array().unwrap().len(), 3);
    }
    assert!(c
        .put(servers[1].url("/v1/kv/cfg/x"))
        .body("1")
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let v = get_json(&c, servers[2].url("/v1/kv/cfg/x?consistent"))
        .await
        .unwrap();
    assert_eq!(v[0]["Value"], "MQ==");

    // Kill the leader abruptly.
    let leader = servers
        .iter()
        .position(|s| s.catalog().store().status().is_leader)
        .unwrap();
    let leader_name = servers[leader].name.clone();
    servers[leader].kill();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    common::eventually(
        Duration::from_secs(20),
        "a surviving server becomes leader",
        || async {
            let ok = survivors.iter().all(|i| {
                let st = servers[*i].catalog().store().status();
                st.leader.as_ref().is_some_and(|l| l.name != leader_name)
            });
            ok.then_some(())
        },
    )
    .await;
    let elected = killed.elapsed();

    // Writes and reads keep working on both survivors.
    let a = &servers[survivors[0]];
    let b = &servers[survivors[1]];
    common::eventually(Duration::from_secs(10), "write after failover", || async {
        let r = c.put(a.url("/v1/kv/cfg/y")).body("2").send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let v = get_json(&c, b.url("/v1/kv/cfg/y")).await.unwrap();
    assert_eq!(v[0]["Value"], "Mg==");
    let r = c
        .put(b.url("/v1/agent/service/register"))
        .json(&json!({"ID": "api-1", "Name": "api", "Port": 9000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api = get_json(&c, a.url("/v1/catalog/service/api"))
        .await
        .unwrap();
    assert_eq!(api.as_array().unwrap().len(), 1);

    // The dead server's instance leaves the passing set (new leader's grace, then critical);
    // the survivors' instances never do.
    let web_passing = |s: &TestServer| {
        let url = s.url("/v1/health/service/web?passing");
        let c = c.clone();
        async move { get_json(&c, url).await.map(|v| v.as_array().unwrap().len()) }
    };
    let started = Instant::now();
    loop {
        let n = web_passing(a).await.unwrap_or(99);
        assert!(n >= 2, "a surviving node was marked critical");
        if n == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dead server's instance stayed passing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead_checks = get_json(&c, a.url(&format!("/v1/health/node/{leader_name}")))
        .await
        .unwrap();
    assert!(dead_checks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical"));
    // Survivors stay passing for longer than the dead-after window.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(web_passing(b).await, Some(2));
    println!("leader re-elected in {elected:?}");
}
