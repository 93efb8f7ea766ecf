//! Health: check runners (HTTP, TCP, TTL, script; writes only on transitions;
//! DeregisterCriticalServiceAfter) and the leader's node monitor (heartbeats stop → critical
//! within 3 s).

mod common;

use std::time::{Duration, Instant};

use common::{header_u64, Options, StatusServer, TestServer};
use pier_catalog::{Agent, AgentConfig};
use serde_json::{json, Value};

async fn check_of(c: &reqwest::Client, s: &TestServer, id: &str) -> Option<Value> {
    let checks: Value = common::get_json(c, s.url("/v1/agent/checks")).await?;
    checks.get(id).cloned()
}

async fn wait_status(c: &reqwest::Client, s: &TestServer, id: &str, status: &str) -> Value {
    common::eventually(
        Duration::from_secs(10),
        &format!("{id} becomes {status}"),
        || async {
            let check = check_of(c, s, id).await?;
            (check["Status"] == status).then_some(check)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_writes_only_on_transitions() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let target = StatusServer::start(200).await;
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"web-1","Name":"web","Port":target.addr.port(),
            "Check":{"HTTP":format!("http://{}/health", target.addr),"Interval":"100ms","Timeout":"1s"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let passing = wait_status(&c, &s, "service:web-1", "passing").await;
    assert!(
        passing["Output"].as_str().unwrap().contains("200"),
        "{passing}"
    );
    // The runner counts a write once the store has acknowledged it, which can be just after
    // a reader sees the new status.
    let writes = common::eventually(Duration::from_secs(5), "the write is counted", || async {
        let w = s.agent().runner().writes();
        (w > 0).then_some(w)
    })
    .await;
    let modify = passing["ModifyIndex"].as_u64().unwrap();
    let hits = target.hits.load(std::sync::atomic::Ordering::Relaxed);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probes = target.hits.load(std::sync::atomic::Ordering::Relaxed) - hits;
    assert!(probes >= 8, "the check kept probing ({probes} probes)");
    assert_eq!(
        s.agent().runner().writes(),
        writes,
        "no write while the status stays the same"
    );
    let same = check_of(&c, &s, "service:web-1").await.unwrap();
    assert_eq!(
        same["ModifyIndex"].as_u64().unwrap(),
        modify,
        "the stored check did not change"
    );

    target.set(500);
    wait_status(&c, &s, "service:web-1", "critical").await;
    target.set(429);
    wait_status(&c, &s, "service:web-1", "warning").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        s.agent().runner().writes(),
        writes + 2,
        "exactly one write per transition"
    );
    target.set(204);
    wait_status(&c, &s, "service:web-1", "passing").await;

    // A timeout is critical: point the check at a server that never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"slow-1","Name":"slow",
            "Check":{"HTTP":format!("http://{}/", silent.local_addr().unwrap()),"Interval":"200ms","Timeout":"300ms","Status":"passing"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let crit = wait_status(&c, &s, "service:slow-1", "critical").await;
    assert!(
        crit["Output"].as_str().unwrap().contains("timed out"),
        "{crit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ttl_script_and_deregister_after() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(
        dir.path(),
        Options {
            enable_script_checks: true,
            ..Options::default()
        },
    )
    .await;
    let c = reqwest::Client::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let register = |body: Value| {
        let c = c.clone();
        let url = s.url("/v1/agent/service/register");
        async move {
            let r = c.put(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    register(json!({"ID":"db-1","Name":"db","Checks":[
        {"TCP":tcp_addr.to_string(),"Interval":"100ms"},
        {"TTL":"600ms","Status":"passing","CheckID":"db-ttl"},
        {"Args":["sh","-c","exit 1"],"Interval":"100ms","Timeout":"2s","CheckID":"db-script"}
    ]}))
    .await;
    wait_status(&c, &s, "service:db-1:1", "passing").await;
    wait_status(&c, &s, "db-script", "warning").await;
    // TTL: expires to critical without an update, comes back with one.
    let started = Instant::now();
    let expired = wait_status(&c, &s, "db-ttl", "critical").await;
    assert!(
        expired["Output"].as_str().unwrap().contains("TTL expired"),
        "{expired}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let r = c
        .put(s.url("/v1/agent/check/pass/db-ttl?note=alive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = wait_status(&c, &s, "db-ttl", "passing").await;
    assert_eq!(back["Output"], "alive");
    // A pass on a non-TTL check is refused.
    let r = c
        .put(s.url("/v1/agent/check/pass/db-script"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // TCP: close the listener → critical.
    drop(listener);
    wait_status(&c, &s, "service:db-1:1", "critical").await;

    // DeregisterCriticalServiceAfter: a check that is always critical removes its service.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    register(
        json!({"ID":"gone-1","Name":"gone","Check":{"TCP":closed.to_string(),"Interval":"100ms",
        "DeregisterCriticalServiceAfter":"1s"}}),
    )
    .await;
    let started = Instant::now();
    common::eventually(Duration::from_secs(10), "gone-1 deregistered", || async {
        let v: Vec<Value> = common::get_json(&c, s.url("/v1/catalog/service/gone")).await?;
        v.is_empty().then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "deregistered too early: {took:?}"
    );
    assert!(s
        .agent()
        .runner()
        .running_checks()
        .iter()
        .all(|id| id != "service:gone-1"));
}

/// Consul's `FailuresBeforeCritical` / `SuccessBeforePassing`: the status changes only after that
/// many consecutive results (pier-core's retry rule, the same the agent uses for task checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_critical_and_success_before_passing() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let target = StatusServer::start(200).await;
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"api-1","Name":"api","Port":target.addr.port(),
            "Check":{"HTTP":format!("http://{}/health", target.addr),"Interval":"300ms",
                "Timeout":"1s","FailuresBeforeCritical":3,"SuccessBeforePassing":2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_status(&c, &s, "service:api-1", "passing").await;

    // Probes are one interval apart, so 350 ms after the switch at most two have failed.
    target.set(500);
    let failing_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let still = check_of(&c, &s, "service:api-1").await.unwrap();
    assert_eq!(
        still["Status"], "passing",
        "critical before 3 failures: {still}"
    );
    wait_status(&c, &s, "service:api-1", "critical").await;
    let took = failing_from.elapsed();
    assert!(
        took >= Duration::from_millis(550),
        "critical after {took:?}, before 3 failed probes"
    );

    target.set(200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let still = check_of(&c, &s, "service:api-1").await.unwrap();
    assert_eq!(
        still["Status"], "critical",
        "passing after 1 success: {still}"
    );
    wait_status(&c, &s, "service:api-1", "passing").await;
}

/// The TTL rules the runner takes from pier-core's engine: a new note with the same status is
/// written and a repeated one is not, silence expires the check, and a TTL check left critical
/// deregisters its service after `DeregisterCriticalServiceAfter` without any further update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_notes_expiry_and_deregister_after() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(
            &json!({"ID":"job-1","Name":"job","Check":{"CheckID":"job-ttl","TTL":"1s",
            "Status":"passing","DeregisterCriticalServiceAfter":"1s"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let update = |note: &'static str| {
        let c = c.clone();
        let url = s.url(&format!("/v1/agent/check/pass/job-ttl?note={note}"));
        async move {
            let r = c.put(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    update("3+queued").await;
    let noted = common::eventually(Duration::from_secs(5), "the note is stored", || async {
        let check = check_of(&c, &s, "job-ttl").await?;
        (check["Output"] == "3 queued").then_some(check)
    })
    .await;
    assert_eq!(noted["Status"], "passing");
    let writes = common::eventually(Duration::from_secs(5), "the write is counted", || async {
        let w = s.agent().runner().writes();
        (w > 0).then_some(w)
    })
    .await;
    // The last update: the TTL and then the critical period count from here.
    let silent_from = Instant::now();
    update("3+queued").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.agent().runner().writes(),
        writes,
        "the same status and note again is no write"
    );

    let expired = wait_status(&c, &s, "job-ttl", "critical").await;
    let to_critical = silent_from.elapsed();
    assert!(
        expired["Output"].as_str().unwrap().contains("TTL expired"),
        "{expired}"
    );
    assert!(
        to_critical >= Duration::from_millis(900) && to_critical < Duration::from_secs(3),
        "expired after {to_critical:?}"
    );
    common::eventually(Duration::from_secs(5), "job-1 deregistered", || async {
        let v: Vec<Value> = common::get_json(&c, s.url("/v1/catalog/service/job")).await?;
        v.is_empty().then_some(())
    })
    .await;
    let to_gone = silent_from.elapsed();
    assert!(
        to_gone >= Duration::from_millis(1_900),
        "deregistered before TTL + DeregisterCriticalServiceAfter: {to_gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_critical_within_3s_and_recovers() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let catalog = s.catalog().clone();
    let mut cfg = AgentConfig::new("worker-1", "127.0.0.3");
    cfg.heartbeat_interval_ms = 300;
    let agent: Agent = s.on(async move { Agent::start(catalog, cfg) }).await;
    let a2 = agent.clone();
    s.on(async move {
        common::eventually(Duration::from_secs(10), "worker-1 registered", || async {
            a2.register_service(&pier_catalog::InstanceRegistration {
                id: "api-1".into(),
                service: "api".into(),
                port: 9000,
                ..Default::default()
            })
            .await
            .ok()
        })
        .await;
    })
    .await;
    let r = c
        .get(s.url("/v1/health/service/api?passing"))
        .send()
        .await
        .unwrap();
    let mut index = header_u64(&r, "x-consul-index");
    let list: Vec<Value> = r.json().await.unwrap();
    assert_eq!(
        list.len(),
        1,
        "instance with no checks on a live node is passing"
    );
    // Stay passing over a few heartbeat rounds (no false positive).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list: Vec<Value> = c
        .get(s.url("/v1/health/service/api?passing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "heartbeating node stays passing");

    // The agent dies (no more heartbeats): a blocking watcher sees the instance leave the
    // passing set within 3 s.
    let killed = Instant::now();
    agent.shutdown();
    let gone_after = loop {
        let r = c
            .get(s.url(&format!(
                "/v1/health/service/api?passing&index={index}&wait=5s"
            )))
            .send()
            .await
            .unwrap();
        index = header_u64(&r, "x-consul-index");
        let list: Vec<Value> = r.json().await.unwrap();
        if list.is_empty() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "instance never left the passing set"
        );
    };
    assert!(gone_after < Duration::from_secs(3), "took {gone_after:?}");
    let node: Vec<Value> = c
        .get(s.url("/v1/health/node/worker-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        node.iter()
            .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical"),
        "{node:?}"
    );
    // The server's own node, which keeps heartbeating, stays passing.
    let own: Vec<Value> = c
        .get(s.url("/v1/health/node/server1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        own.iter()
            .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing"),
        "{own:?}"
    );

    // Heartbeats resume → passing again.
    let catalog = s.catalog().clone();
    let mut cfg = AgentConfig::new("worker-1", "127.0.0.3");
    cfg.heartbeat_interval_ms = 300;
    let _agent: Agent = s.on(async move { Agent::start(catalog, cfg) }).await;
    common::eventually(Duration::from_secs(5), "api-1 passing again", || async {
        let v: Vec<Value> = common::get_json(&c, s.url("/v1/health/service/api?passing")).await?;
        (v.len() == 1).then_some(())
    })
    .await;
    println!(
        "instance left the passing set {} ms after the agent stopped",
        gone_after.as_millis()
    );
}

/// A server answering every request with a 1 MiB body.
async fn huge_body_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "y".repeat(1 << 20) });
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_check_outputs_are_stored_capped_at_4_kib() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let (addr, _server) = huge_body_server().await;
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"big-1","Name":"big","Checks":[
            {"HTTP":format!("http://{addr}/"),"Interval":"200ms","CheckID":"big-http"},
            {"TTL":"30s","CheckID":"big-ttl"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let http = wait_status(&c, &s, "big-http", "passing").await;
    let out = http["Output"].as_str().unwrap();
    assert!(
        out.len() <= 4096 && out.len() > 4000,
        "HTTP output stored with {} bytes",
        out.len()
    );

    // Reported outputs: the update endpoint's Output and pass/warn/fail's note.
    let huge = "z".repeat(100_000);
    let r = c
        .put(s.url("/v1/agent/check/update/big-ttl"))
        .json(&json!({"Status":"warning","Output":huge}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ttl = wait_status(&c, &s, "big-ttl", "warning").await;
    let out = ttl["Output"].as_str().unwrap();
    assert!(out.len() <= 4096 && out.len() > 4000, "{} bytes", out.len());
    assert!(out.starts_with("zzz"), "{}", &out[..40]);

    let note = "n".repeat(6000);
    let r = c
        .put(s.url(&format!("/v1/agent/check/pass/big-ttl?note={note}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ttl = wait_status(&c, &s, "big-ttl", "passing").await;
    let out = ttl["Output"].as_str().unwrap();
    assert!(
        out.len() <= 4096 && out.starts_with("nnn"),
        "{} bytes",
        out.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_reach_only_allowed_networks() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // As `pier server` without --check-allow: private ranges only.
    let s = TestServer::single(
        dir.path(),
        Options {
            check_allow: Some(pier_catalog::CheckAllow::private_networks()),
            ..Options::default()
        },
    )
    .await;
    let c = reqwest::Client::new();
    let target = StatusServer::start(200).await;
    let port = target.addr.port();
    let refused = [
        json!({"HTTP":"http://169.254.169.254/latest/meta-data/","Interval":"1s"}),
        json!({"HTTP":format!("http://127.0.0.1:{port}/admin"),"Interval":"1s"}),
        json!({"HTTP":format!("http://localhost:{port}/"),"Interval":"1s"}),
        json!({"HTTP":format!("http://[::ffff:127.0.0.1]:{port}/"),"Interval":"1s"}),
        json!({"TCP":format!("127.0.0.1:{port}"),"Interval":"1s"}),
        json!({"TCP":"0.0.0.0:22","Interval":"1s"}),
    ];
    for check in refused {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(&json!({"ID":"ssrf-1","Name":"ssrf","Check":check}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{check} was accepted");
        let text = r.text().await.unwrap();
        assert!(text.contains("--check-allow"), "{check}: {text}");
    }
    let services: Value = common::get_json(&c, s.url("/v1/agent/services"))
        .await
        .unwrap();
    assert!(
        services.get("ssrf-1").is_none(),
        "nothing was registered: {services}"
    );

    // A check stored by other means (before the operator narrowed the list) is not probed.
    let reg = pier_catalog::InstanceRegistration {
        id: "old-1".into(),
        service: "old".into(),
        node: s.name.clone(),
        port,
        checks: vec![pier_catalog::CheckRegistration {
            id: Some("old-http".into()),
            name: None,
            notes: String::new(),
            status: Some(pier_catalog::CheckStatus::Passing),
            definition: pier_catalog::CheckDefinition {
                kind: pier_catalog::CheckKind::Http {
                    url: format!("http://127.0.0.1:{port}/"),
                    method: "GET".into(),
                    headers: Default::default(),
                    tls_skip_verify: false,
                    body: String::new(),
                },
                interval: Some(Duration::from_millis(100)),
                timeout: None,
                deregister_critical_after: None,
                success_before_passing: 0,
                failures_before_critical: 0,
            },
        }],
        ..Default::default()
    };
    let catalog = s.catalog().clone();
    s.on(async move { catalog.register_instance(&reg).await })
        .await
        .unwrap();
    let old = wait_status(&c, &s, "old-http", "critical").await;
    assert!(
        old["Output"].as_str().unwrap().contains("not probed"),
        "{old}"
    );
    assert_eq!(
        target.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the refused address was never contacted"
    );

    // The default of the library (and `pier dev`): loopback allowed, by address and by name;
    // link-local metadata still refused.
    let dir2 = tempfile::tempdir().unwrap();
    drop(s);
    let s = TestServer::single(dir2.path(), Options::default()).await;
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"meta-1","Name":"meta",
            "Check":{"HTTP":"http://169.254.169.254/","Interval":"1s"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID":"ok-1","Name":"ok","Checks":[
            {"HTTP":format!("http://localhost:{port}/"),"Interval":"200ms","CheckID":"ok-http"},
            {"TCP":format!("127.0.0.1:{port}"),"Interval":"200ms","CheckID":"ok-tcp"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_status(&c, &s, "ok-http", "passing").await;
    wait_status(&c, &s, "ok-tcp", "passing").await;
}
