//! A leader killed (SIGKILL) in the middle of a rollout, on three real `pier server`
//! processes with two `pier agent`s running real containers: the new leader finishes the
//! rollout correctly — it succeeds, every task runs the new revision, there is exactly one
//! container per task (no duplicates), the number of passing instances never falls below
//! `count` (`max_unavailable = 0`) at any moment, before, during or after the failover, and
//! the catalog holds exactly the serving tasks.

mod orchestrator_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator_common::{eventually, service_file};
use pier_api::service::{DeployRequest, DeployResponse, DeploymentRecord, DeploymentStatus};
use pier_testkit::docker::{ImageGuard, RunGuard};
use pier_testkit::images::{build_httpd_image, HttpdVariant};
use pier_testkit::process::{wait_http_ok, PierProcess};
use pier_testkit::servers::{start_three, LoopbackServer as Server};
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const SERVICE: &str = "failover-roll";
const COUNT: usize = 4;

fn start_agent(
    dir: &Path,
    guard: &RunGuard,
    server: &Server,
    name: &str,
    zone: &str,
) -> PierProcess {
    let args = [
        "agent".to_string(),
        "--server".into(),
        server.base(),
        "--name".into(),
        name.into(),
        "--zone".into(),
        zone.into(),
        "--data-dir".into(),
        dir.join(name).to_string_lossy().into_owned(),
        // Images are pulled from the cluster registry's address directly.
        "--registry-port".into(),
        "0".into(),
        "--container-label".into(),
        "pier.test=1".into(),
        "--container-label".into(),
        format!("{}={}", guard.label, guard.value),
        "--network".into(),
        guard.network_name(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PierProcess::spawn(PIER, &format!("agent-{name}"), &args, dir)
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

async fn leader(http: &reqwest::Client, servers: &[Server]) -> Option<usize> {
    for (i, s) in servers.iter().enumerate() {
        if s.proc.is_none() {
            continue;
        }
        if let Some(st) = get_json(http, &format!("{}/api/v1/status", s.base())).await {
            if st["is_leader"] == Value::Bool(true) {
                return Some(i);
            }
        }
    }
    None
}

/// Passing instances of the service as one server sees them: (task id, revision tag).
async fn passing(http: &reqwest::Client, server: &Server) -> Option<Vec<(String, String)>> {
    let v = get_json(
        http,
        &format!("{}/v1/health/service/{SERVICE}?passing", server.base()),
    )
    .await?;
    Some(
        v.as_array()?
            .iter()
            .map(|e| {
                let id = e["Service"]["ID"].as_str().unwrap_or_default().to_string();
                let rev = e["Service"]["Tags"]
                    .as_array()
                    .and_then(|t| {
                        t.iter()
                            .filter_map(Value::as_str)
                            .find(|t| t.starts_with("rev-"))
                    })
                    .unwrap_or_default()
                    .to_string();
                (id, rev)
            })
            .collect(),
    )
}

async fn deploy(http: &reqwest::Client, server: &Server, file: String) -> DeployResponse {
    let resp = http
        .post(format!("{}/api/v1/services", server.base()))
        .json(&DeployRequest {
            file,
            env_file: None,
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("deploy request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "deploy: {status} {text}");
    serde_json::from_str(&text).expect("deploy response")
}

async fn deployment(http: &reqwest::Client, server: &Server, id: &str) -> Option<DeploymentRecord> {
    let v = get_json(http, &format!("{}/api/v1/deployments/{id}", server.base())).await?;
    serde_json::from_value(v).ok()
}

/// Builds and pushes `tag` to `registry`, then drops the local copy so agents really pull.
fn push_image(images: &mut ImageGuard, registry: u16, tag: &str) -> String {
    let image = format!("127.0.0.1:{registry}/{tag}");
    build_httpd_image(&image, HttpdVariant::Healthy);
    images.also(&image);
    let out = Command::new("docker")
        .args(["push", &image])
        .output()
        .expect("docker push");
    assert!(
        out.status.success(),
        "docker push {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("docker").args(["rmi", &image]).output();
    image
}

/// Polls `f` until it yields a value.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_rollout_the_new_leader_finishes_it() {
    pier_testkit::docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let guard = RunGuard::new_run();
    let mut images = ImageGuard::default();
    let http = reqwest::Client::new();
    let mut servers = start_three(PIER, dir, &["--snapshot-every", "0s"]);
    for s in &servers {
        wait_http_ok(
            &format!("{}/api/v1/status", s.base()),
            Duration::from_secs(30),
        )
        .await;
    }
    let victim = until("a leader", Duration::from_secs(30), || {
        leader(&http, &servers)
    })
    .await;
    // Everything the test asks goes to a server that survives; the image lives in the
    // cluster registry, addressed through that server too.
    let witness = (victim + 1) % servers.len();
    let _agent_a = start_agent(dir, &guard, &servers[witness], "node-a", "a");
    let _agent_b = start_agent(dir, &guard, &servers[witness], "node-b", "b");
    eventually("two ready nodes", Duration::from_secs(30), || async {
        get_json(&http, &format!("{}/api/v1/nodes", servers[witness].base()))
            .await
            .and_then(|n| n.as_array().map(|n| n.len()))
            == Some(2)
    })
    .await;
    let tag = format!("pier-test/leader-kill-{}", std::process::id());
    let v1 = push_image(&mut images, servers[witness].registry, &format!("{tag}:v1"));
    let v2 = push_image(&mut images, servers[witness].registry, &format!("{tag}:v2"));

    let first = deploy(
        &http,
        &servers[witness],
        service_file(SERVICE, &v1, COUNT as u32, ""),
    )
    .await;
    let first_id = first.deployment.expect("a deployment");
    eventually("v1 rolled out", Duration::from_secs(60), || async {
        deployment(&http, &servers[witness], &first_id)
            .await
            .is_some_and(|d| d.status == DeploymentStatus::Succeeded)
    })
    .await;

    // v2 rolls out one task at a time (max_surge 1 of 4), each passing for 2 s first: long
    // enough to kill the leader once the first new task is up.
    let slow = "min_healthy_time = \"2s\"\nmax_surge = 1\n";
    let file =
        service_file(SERVICE, &v2, COUNT as u32, "").replace("min_healthy_time = \"1s\"\n", slow);
    let second = deploy(&http, &servers[witness], file).await;
    let second_id = second.deployment.expect("a deployment");
    let new_rev = format!("rev-{}", second.revision);

    let started = Instant::now();
    let mut killed_at = None;
    let mut lowest = usize::MAX;
    let mut seen_serving: BTreeSet<String> = BTreeSet::new();
    let outcome = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the rollout did not end within 120 s (leader killed at {killed_at:?})"
        );
        if let Some(p) = passing(&http, &servers[witness]).await {
            lowest = lowest.min(p.len());
            let new_passing = p.iter().filter(|(_, r)| *r == new_rev).count();
            seen_serving.extend(p.into_iter().map(|(id, _)| id));
            if killed_at.is_none() && new_passing >= 1 {
                servers[victim].kill9();
                killed_at = Some(started.elapsed());
            }
        }
        if let Some(d) = deployment(&http, &servers[witness], &second_id).await {
            if d.status != DeploymentStatus::InProgress {
                break d;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let killed_at = killed_at.expect("the leader was killed mid-rollout");
    eprintln!(
        "leader killed {killed_at:.2?} into the rollout, which ended after {:.2?}; fewest passing: {lowest}",
        started.elapsed()
    );
    assert!(
        leader(&http, &servers).await.is_some_and(|l| l != victim),
        "a new leader"
    );
    assert_eq!(
        outcome.status,
        DeploymentStatus::Succeeded,
        "killed at {killed_at:?}: {outcome:#?}"
    );
    assert!(
        lowest >= COUNT,
        "passing instances fell to {lowest} (floor {COUNT}) during the failover at {killed_at:?}"
    );

    // The end state: four v2 tasks, one container each, and the catalog holds exactly them.
    let serving = until(
        "exactly the v2 tasks in the catalog",
        Duration::from_secs(20),
        || async {
            let p = passing(&http, &servers[witness]).await?;
            (p.len() == COUNT && p.iter().all(|(_, r)| *r == new_rev))
                .then(|| p.into_iter().map(|(id, _)| id).collect::<Vec<String>>())
        },
    )
    .await;
    let tasks = get_json(
        &http,
        &format!(
            "{}/api/v1/services/{SERVICE}/tasks",
            servers[witness].base()
        ),
    )
    .await
    .expect("tasks");
    let active: BTreeSet<String> = tasks
        .as_array()
        .expect("task list")
        .iter()
        .filter(|t| {
            t["task"]["stop_phase"]["phase"] == "active" && t["task"]["desired"] == "running"
        })
        .map(|t| t["task"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let serving: BTreeSet<String> = serving.into_iter().collect();
    assert_eq!(active, serving, "active tasks and catalog differ");
    eventually(
        "one container per task",
        Duration::from_secs(20),
        || async { guard.containers(false).len() == COUNT },
    )
    .await;
    assert!(seen_serving.len() >= 2 * COUNT, "{seen_serving:?}");
}
