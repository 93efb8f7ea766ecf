//! Runs live in the replicated store: on a 3-server cluster, killing the leader mid-run loses
//! no run; the new leader marks the cut-short run interrupted and runs the next one.

mod pipeline_common;

use std::time::{Duration, Instant};

use pier_testkit::docker::RunGuard;
use pier_testkit::git::busybox_site_repo;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use pipeline_common::{RegistryImages, BIN};
use serde_json::Value;

struct Server {
    http: u16,
    proc: Option<PierProcess>,
}

impl Server {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

fn pier(addr: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("PIER_ADDR", addr)
        .output()
        .unwrap()
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let resp = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

async fn leader(http: &reqwest::Client, servers: &[Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, s) in servers.iter().enumerate() {
            if s.proc.is_none() {
                continue;
            }
            if let Some(st) = get_json(http, &format!("{}/api/v1/status", s.base())).await {
                if st["is_leader"] == Value::Bool(true) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(
    http: &reqwest::Client,
    base: &str,
    run: u64,
    done: &[&str],
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = get_json(http, &format!("{base}/api/v1/pipelines/web/runs/{run}")).await {
            if done.contains(&r["status"]["state"].as_str().unwrap_or("")) {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run} never reached {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failover_loses_no_run() {
    pier_testkit::docker::docker_available();
    let dir = tempfile::tempdir().unwrap();
    let guard = RunGuard::new_run();
    let http = reqwest::Client::new();
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let join = ports
        .iter()
        .map(|(_, raft, _)| format!("127.0.0.1:{raft}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Vec::new();
    let mut image_guards = Vec::new();
    for (i, (http_port, raft, registry)) in ports.iter().enumerate() {
        let name = format!("s{i}");
        let args: Vec<String> = vec![
            "server".into(),
            "--insecure".into(),
            "--data-dir".into(),
            dir.path().join(&name).display().to_string(),
            "--node-name".into(),
            name.clone(),
            "--http-port".into(),
            http_port.to_string(),
            "--raft-port".into(),
            raft.to_string(),
            "--registry-port".into(),
            registry.to_string(),
            "--bootstrap-expect".into(),
            "3".into(),
            "--join".into(),
            join.clone(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        servers.push(Server {
            http: *http_port,
            proc: Some(PierProcess::spawn(BIN, &name, &refs, dir.path())),
        });
        image_guards.push(RegistryImages(format!("127.0.0.1:{registry}/")));
    }
    for s in &servers {
        wait_http_ok(
            &format!("{}/api/v1/status", s.base()),
            Duration::from_secs(30),
        )
        .await;
    }
    let first = leader(&http, &servers).await;
    // The agent and the CLI talk to a server that stays up.
    let stays = (first + 1) % 3;
    let addr = servers[stays].base();
    let run_label = format!("{}={}", guard.label, guard.value);
    let network = guard.network_name();
    let _agent = PierProcess::spawn(
        BIN,
        "agent",
        &[
            "agent",
            "--server",
            &addr,
            "--zone",
            "a",
            "--name",
            "node-a",
            "--registry-port",
            "0",
            "--container-label",
            "pier.test=1",
            "--container-label",
            &run_label,
            "--network",
            &network,
        ],
        dir.path(),
    );

    let repo = busybox_site_repo("web", "v1\n");
    let repo_path = repo.path().to_str().unwrap().to_string();
    let out = pier(
        &addr,
        &[
            "pipeline", "create", "web", "--repo", &repo_path, "--poll", "off",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run1 = wait_state(
        &http,
        &addr,
        1,
        &["succeeded", "failed", "rolled_back"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(run1["status"]["state"], "succeeded", "{run1}");

    // Run 2 is cut short by a SIGKILL of the leader.
    repo.write("www/index.html", "v2\n");
    repo.commit("v2");
    let out = pier(&addr, &["pipeline", "run", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(
        &http,
        &addr,
        2,
        &["building", "pushing", "deploying"],
        Duration::from_secs(60),
    )
    .await;
    if let Some(mut p) = servers[first].proc.take() {
        p.kill9();
    }
    let second = leader(&http, &servers).await;
    assert_ne!(second, first);
    let run2 = wait_state(
        &http,
        &addr,
        2,
        &["interrupted", "succeeded"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(run2["status"]["state"], "interrupted", "{run2}");
    // Nothing was lost: both runs and run 1's log are served by the survivors.
    for s in servers.iter().filter(|s| s.proc.is_some()) {
        let runs = get_json(&http, &format!("{}/api/v1/pipelines/web/runs", s.base()))
            .await
            .unwrap();
        assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    }
    let log1 = http
        .get(format!("{addr}/api/v1/pipelines/web/runs/1/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log1.contains("==> succeeded"), "{log1}");

    // The new leader runs the next one to the end.
    let out = pier(&addr, &["pipeline", "run", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run3 = wait_state(
        &http,
        &addr,
        3,
        &["succeeded", "failed", "rolled_back"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(
        run3["status"]["state"],
        "succeeded",
        "{run3}\n{}",
        http.get(format!("{addr}/api/v1/pipelines/web/runs/3/logs"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    );
    drop(_agent);
    drop(guard);
}
