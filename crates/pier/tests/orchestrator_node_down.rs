//! A node whose agent stops heartbeating for longer than the node-down time, then comes
//! back, on the real engine (`pier dev --no-agent`, `pier agent` processes, FROM-scratch
//! busybox httpd images). The agent is frozen with SIGSTOP: its heartbeats stop while its
//! containers keep serving, which is what a partition between an agent and the servers looks
//! like to the servers. A service of 2 replicas with `max_unavailable = 0` runs on that agent;
//! the catalog's passing instances are sampled every 50 ms throughout.
//!
//! 1. Alone in the cluster (nowhere to place replacements), the node comes back with its
//!    containers: the same two containers serve again — no restart, no moment without a
//!    passing instance once they pass again (before this was fixed, both were killed at once
//!    on healing and replaced, about 1 s with none).
//! 2. With a second node, replacements start there while the node is away; when it is back
//!    its containers are stopped only after the replacements pass, the service never has
//!    fewer than 2 passing instances from then on, and no duplicate is left.
//!
//! While every instance of the service is on the frozen node, the catalog rightly has none
//! passing (nobody can vouch for them) until the replacements pass: that window is asserted to
//! end by then, and never to happen outside it.

mod orchestrator_common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;
use serde_json::Value;

const SERVICE: &str = "steady";

/// One sample: when, and the passing instance ids (`None`: the request failed).
type Sample = (Instant, Option<Vec<String>>);

/// Samples the passing instances of a service every 50 ms until finished.
struct Watch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(addr: String, service: &str) -> Watch {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{addr}/v1/health/service/{service}?passing");
        let handle = {
            let (samples, stop) = (samples.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let ids = passing_ids(&client, &url).await;
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), ids));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Watch {
            samples,
            stop,
            handle,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.samples.clone();
        self.handle.await.expect("watcher");
        let all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all
    }
}

async fn passing_ids(client: &reqwest::Client, url: &str) -> Option<Vec<String>> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    let mut ids: Vec<String> = v
        .as_array()?
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    Some(ids)
}

/// SIGSTOP/SIGCONT for a process.
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Samples taken in `[from, to)` that saw fewer than `min` passing instances.
fn below(samples: &[Sample], from: Instant, to: Instant, min: usize) -> Vec<(Duration, usize)> {
    samples
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .filter_map(|(at, ids)| {
            let n = ids.as_ref()?.len();
            (n < min).then(|| (at.duration_since(from), n))
        })
        .collect()
}

/// The first sample at or after `from` in which every id of `ids` passes.
fn first_all_passing(samples: &[Sample], from: Instant, ids: &[String]) -> Option<Instant> {
    samples
        .iter()
        .filter(|(at, _)| *at >= from)
        .find(|(_, seen)| {
            seen.as_ref()
                .is_some_and(|seen| ids.iter().all(|id| seen.contains(id)))
        })
        .map(|(at, _)| *at)
}

fn task_field(t: &Value, field: &str) -> Value {
    t["task"][field].clone()
}

/// Waits until the watcher has seen every id of `ids` passing at or after `from`.
async fn seen_passing(watch: &Watch, from: Instant, ids: &[String], timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = first_all_passing(&watch.samples(), from, ids) {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "{ids:?} not all seen passing within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn task_ids(c: &Cluster, node: &str) -> Vec<String> {
    let mut ids: Vec<String> = c
        .tasks(SERVICE)
        .await
        .iter()
        .filter(|t| task_field(t, "node") == node)
        .filter_map(|t| task_field(t, "id").as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

async fn node_state(c: &Cluster, node: &str) -> String {
    c.get("/api/v1/nodes")
        .await
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == node).cloned())
        .and_then(|n| n["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// While the node is away its tasks are lost, not stopped: still desired running, so the
/// agent will not kill them the moment it is back.
async fn assert_lost_not_stopped(c: &Cluster, ids: &[String]) {
    eventually(
        "node-a's tasks marked lost",
        Duration::from_secs(15),
        || async {
            let tasks = c.tasks(SERVICE).await;
            ids.iter().all(|id| {
                tasks.iter().any(|t| {
                    task_field(t, "id") == id.as_str()
                        && t["display_state"] == "lost"
                        && task_field(t, "lost_since_ms").is_u64()
                })
            })
        },
    )
    .await;
    assert_eq!(node_state(c, "node-a").await, "down");
    let tasks = c.tasks(SERVICE).await;
    for id in ids {
        let t = tasks
            .iter()
            .find(|t| task_field(t, "id") == id.as_str())
            .unwrap_or_else(|| panic!("task {id} vanished: {tasks:#?}"));
        assert_eq!(task_field(t, "desired"), "running", "{t:#}");
        assert_eq!(task_field(t, "stop_phase")["phase"], "active", "{t:#}");
    }
}

fn running_containers(c: &Cluster, node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &c.guard.filter(),
            "--filter",
            &format!("label=pier.node={node}"),
        ])
        .output()
        .expect("docker ps");
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_the_dead_keeps_the_service_up() {
    let mut c = Cluster::start(false, &["--node-down-after", "2s"]).await;
    let a = c.start_agent("node-a", "a");
    eventually("node-a registered", Duration::from_secs(20), || async {
        node_state(&c, "node-a").await == "ready"
    })
    .await;
    let image = c.push_image("steady:v1", HttpdVariant::Healthy);
    let file = c.write_file(
        "steady.toml",
        &service_file(SERVICE, &image, 2, "max_unavailable = 0\n"),
    );
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    eventually("two passing instances", Duration::from_secs(30), || async {
        c.passing(SERVICE).await.len() == 2
    })
    .await;
    let old = task_ids(&c, "node-a").await;
    assert_eq!(old.len(), 2, "both replicas on node-a");
    let watch = Watch::start(c.addr(), SERVICE);

    let phase_1_end = nowhere_else_to_go(&c, c.agents[a].pid(), &old, &watch).await;
    replaced_elsewhere(&mut c, a, &old, &watch, phase_1_end).await;

    let samples = watch.finish().await;
    let failed = samples.iter().filter(|(_, ids)| ids.is_none()).count();
    assert!(
        failed * 20 < samples.len(),
        "{failed} of {} catalog samples failed",
        samples.len()
    );
}

/// Phase 1: node-a is the only node. Frozen past the node-down time, then back: its two
/// containers were never touched and serve again. Returns when it stopped watching.
async fn nowhere_else_to_go(c: &Cluster, pid: u32, old: &[String], watch: &Watch) -> Instant {
    let containers = running_containers(c, "node-a");
    assert_eq!(containers.len(), 2);
    let frozen_at = Instant::now();
    signal(pid, "STOP");
    assert_lost_not_stopped(c, old).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(pid, "CONT");
    let resumed_at = Instant::now();
    let back_at = seen_passing(watch, resumed_at, old, Duration::from_secs(15)).await;
    eprintln!(
        "phase 1: frozen {:?}, passing again {:?} after the agent resumed",
        resumed_at - frozen_at,
        back_at.duration_since(resumed_at)
    );
    // Watch a while: nothing is stopped, nothing restarted, nothing left lost.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dips = below(&watch.samples(), back_at, Instant::now(), 2);
    assert!(
        dips.is_empty(),
        "passing instances dipped after healing: {dips:?}"
    );
    let before = below(&watch.samples(), watch_start(watch), frozen_at, 2);
    assert!(before.is_empty(), "dips before the freeze: {before:?}");
    assert_eq!(
        running_containers(c, "node-a"),
        containers,
        "containers were replaced"
    );
    assert_eq!(task_ids(c, "node-a").await, old, "tasks were replaced");
    for t in c.tasks(SERVICE).await {
        assert_eq!(t["display_state"], "healthy", "{t:#}");
        assert!(task_field(&t, "lost_since_ms").is_null(), "{t:#}");
    }
    Instant::now()
}

fn watch_start(watch: &Watch) -> Instant {
    watch
        .samples()
        .first()
        .map(|s| s.0)
        .unwrap_or_else(Instant::now)
}

/// Phase 2: node-b joins. node-a frozen until replacements pass on node-b, then back: its
/// containers go, after the replacements passed, without the service ever dropping under 2.
async fn replaced_elsewhere(
    c: &mut Cluster,
    a: usize,
    old: &[String],
    watch: &Watch,
    since: Instant,
) {
    c.start_agent("node-b", "b");
    let c: &Cluster = c;
    eventually("node-b registered", Duration::from_secs(20), || async {
        node_state(c, "node-b").await == "ready"
    })
    .await;
    let pid = c.agents[a].pid();
    let frozen_at = Instant::now();
    signal(pid, "STOP");
    assert_lost_not_stopped(c, old).await;
    eventually(
        "two replacements placed on node-b",
        Duration::from_secs(30),
        || async { task_ids(c, "node-b").await.len() == 2 },
    )
    .await;
    let replacements = task_ids(c, "node-b").await;
    let replaced_at = seen_passing(watch, frozen_at, &replacements, Duration::from_secs(30)).await;
    let between = below(&watch.samples(), since, frozen_at, 2);
    assert!(between.is_empty(), "dips between the phases: {between:?}");
    // Nobody vouches for the frozen node's instances: none passes until the replacements do.
    let unvouched = below(&watch.samples(), frozen_at, replaced_at, 1);
    // The old containers still run (the agent is frozen, not its containers).
    assert_eq!(running_containers(c, "node-a").len(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(pid, "CONT");
    let resumed_at = Instant::now();
    eventually(
        "node-a's tasks stopped, two containers left",
        Duration::from_secs(30),
        || async {
            let tasks = c.tasks(SERVICE).await;
            let old_stopped = tasks
                .iter()
                .filter(|t| old.iter().any(|id| task_field(t, "id") == id.as_str()))
                .all(|t| task_field(t, "stop_phase")["phase"] == "stopped");
            old_stopped && c.guard.containers(false).len() == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = watch.samples();
    let dips = below(&samples, replaced_at, Instant::now(), 2);
    assert!(
        dips.is_empty(),
        "fewer than 2 passing after the replacements passed: {dips:?}"
    );
    eprintln!(
        "phase 2: replacements passing {:?} after the freeze ({} samples with none passing before), agent resumed {:?} after that",
        replaced_at - frozen_at,
        unvouched.len(),
        resumed_at - replaced_at
    );
    assert_old_stopped_after_replacements_passed(c, old, &replacements).await;
    assert_eq!(running_containers(c, "node-a"), Vec::<String>::new());
    assert_eq!(running_containers(c, "node-b").len(), 2);
    assert_eq!(c.passing(SERVICE).await.len(), 2);
    let active = c
        .tasks(SERVICE)
        .await
        .iter()
        .filter(|t| task_field(t, "stop_phase")["phase"] == "active")
        .count();
    assert_eq!(active, 2, "duplicates left");
}

/// Compares what the agents reported: each old container exited after both replacements had
/// passed, and was stopped because it was replaced while its node was down.
async fn assert_old_stopped_after_replacements_passed(
    c: &Cluster,
    old: &[String],
    replacements: &[String],
) {
    let tasks = c.tasks(SERVICE).await;
    let find = |id: &str| {
        tasks
            .iter()
            .find(|t| task_field(t, "id") == id)
            .unwrap_or_else(|| panic!("no task {id}"))
    };
    let passed_at = replacements
        .iter()
        .map(|id| {
            find(id)["status"]["first_passed_at_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("{id} never passed"))
        })
        .max()
        .unwrap_or(0);
    for id in old {
        let t = find(id);
        assert_eq!(
            task_field(t, "stop_reason"),
            "replaced while its node was down",
            "{t:#}"
        );
        let finished = t["status"]["finished_at_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id}: no exit reported: {t:#}"));
        assert!(
            finished > passed_at,
            "{id} exited at {finished}, before its replacements passed at {passed_at}"
        );
    }
}

/// `pier node rm`: refused while the node's agent heartbeats; once its machine is gone (agent
/// killed, containers removed) the node is forgotten and its tasks run on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_forgotten_and_its_tasks_move() {
    const NAME: &str = "moving";
    let mut c = Cluster::start(false, &["--node-down-after", "2s"]).await;
    let a = c.start_agent("node-a", "a");
    eventually("node-a registered", Duration::from_secs(20), || async {
        node_state(&c, "node-a").await == "ready"
    })
    .await;
    let image = c.push_image("moving:v1", HttpdVariant::Healthy);
    let file = c.write_file("moving.toml", &service_file(NAME, &image, 1, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    eventually("one passing instance", Duration::from_secs(30), || async {
        c.passing(NAME).await.len() == 1
    })
    .await;

    // Up: refused, with what to do.
    let out = c.pier(&["node", "rm", "node-a"]);
    assert!(!out.status.success(), "removed a live node");
    assert!(stderr(&out).contains("stop its agent"), "{}", stderr(&out));
    let out = c.pier(&["node", "rm", "no-such-node"]);
    assert!(!out.status.success());

    // The machine goes away; a second node comes; the first is removed.
    c.agents[a].kill9();
    for id in containers_of_node(&c, "node-a") {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    c.start_agent("node-b", "a");
    eventually("node-a down", Duration::from_secs(20), || async {
        node_state(&c, "node-a").await == "down"
    })
    .await;
    let out = c.pier(&["node", "rm", "node-a"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let nodes = c.get("/api/v1/nodes").await;
    assert!(
        !nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "node-a"),
        "{nodes}"
    );
    eventually(
        "the instance passing on node-b",
        Duration::from_secs(40),
        || async {
            let tasks = c.tasks(NAME).await;
            let healthy_on_b = tasks
                .iter()
                .filter(|t| task_field(t, "node") == "node-b" && t["display_state"] == "healthy")
                .count();
            healthy_on_b == 1 && c.passing(NAME).await.len() == 1
        },
    )
    .await;
}
