//! The orchestrator over a real one-member store and the real catalog, with simulated agents
//! (HTTP clients that report what a real agent would): spread placement, a deployment that
//! succeeds, a no-op redeploy, refusals before anything changes, a dead node's tasks
//! replaced in the other zone but stopped only once it is back (or given up after the
//! lost-task timeout), and heartbeats refused by a leader cut off from its quorum (three
//! in-process servers). The Docker side is covered by the process tests in `pier`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_api::service::{
    AgentTasks, DeployRequest, DeployResponse, DeploymentRecord, DesiredState, RegisterNode,
    StopPhase, TaskHealth, TaskState, TaskStatus, TaskView,
};
use pier_orchestrator::OrchestratorConfig;
use pier_store::{Store, StoreConfig};

struct Env {
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    catalog: pier_catalog::Catalog,
    _orch: pier_orchestrator::Orchestrator,
}

async fn start() -> Env {
    start_with(OrchestratorConfig {
        tick_ms: 50,
        ..Default::default()
    })
    .await
}

async fn start_with(config: OrchestratorConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::single_node("s1", dir.path().join("raft")))
        .await
        .unwrap();
    store
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    // The failure detector's timeout: a node silent for 800 ms is down.
    let catalog = pier_catalog::Catalog::new(
        store.clone(),
        pier_catalog::CatalogConfig {
            node_dead_after_ms: 800,
            ..Default::default()
        },
    );
    let orch = pier_orchestrator::spawn(store, catalog.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = orch.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Env {
        _dir: dir,
        base,
        http: reqwest::Client::new(),
        catalog,
        _orch: orch,
    }
}

impl Env {
    async fn register(&self, name: &str, zone: &str) {
        let body = RegisterNode {
            zone: zone.into(),
            agent_addr: "127.0.0.1:1".into(),
            host_ip: "127.0.0.1".into(),
            attributes: BTreeMap::new(),
            cpu_millis: 2000,
            memory_mb: 1024,
            volumes: vec![],
            volume_roots: vec![],
        };
        let r = self
            .http
            .put(format!("{}/api/v1/nodes/{name}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    async fn deploy(&self, file: &str) -> Result<DeployResponse, String> {
        let r = self
            .http
            .post(format!("{}/api/v1/services", self.base))
            .json(&DeployRequest {
                file: file.into(),
                env_file: None,
            })
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            Ok(r.json().await.unwrap())
        } else {
            Err(r.text().await.unwrap())
        }
    }

    /// Deploys `file` and waits until its deployment succeeds; returns the deployment id.
    async fn deploy_and_wait(&self, file: &str) -> String {
        let id = self.deploy(file).await.unwrap().deployment.unwrap();
        wait_for("the deployment to succeed", || async {
            self.deployment(&id).await.status == pier_api::service::DeploymentStatus::Succeeded
        })
        .await;
        id
    }

    async fn deployment(&self, id: &str) -> DeploymentRecord {
        self.http
            .get(format!("{}/api/v1/deployments/{id}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn tasks(&self, service: &str) -> Vec<TaskView> {
        self.http
            .get(format!("{}/api/v1/services/{service}/tasks", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A fake agent: heartbeats and reports every task of its node as running and healthy, and
/// stopped once the controller asks for the stop signal.
fn fake_agent(base: String, node: &'static str, alive: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut reported: HashSet<(String, bool)> = HashSet::new();
        loop {
            if alive.load(Ordering::SeqCst) {
                let _ = http
                    .put(format!("{base}/api/v1/nodes/{node}/alive"))
                    .send()
                    .await;
                if let Ok(r) = http
                    .get(format!("{base}/api/v1/nodes/{node}/tasks?wait=0s"))
                    .send()
                    .await
                {
                    if let Ok(tasks) = r.json::<AgentTasks>().await {
                        for t in tasks.tasks {
                            let stopping = matches!(t.task.stop_phase, StopPhase::Stopping { .. });
                            if !reported.insert((t.task.id.clone(), stopping)) {
                                continue;
                            }
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis() as u64;
                            let status = if stopping {
                                TaskStatus {
                                    state: TaskState::Exited,
                                    exit_code: Some(0),
                                    ..Default::default()
                                }
                            } else {
                                TaskStatus {
                                    state: TaskState::Running,
                                    health: TaskHealth::Healthy,
                                    healthy_since_ms: Some(now),
                                    started_at_ms: Some(now),
                                    host_ip: Some("127.0.0.1".into()),
                                    host_ports: BTreeMap::from([(8080, 30_000)]),
                                    ..Default::default()
                                }
                            };
                            let _ = http
                                .put(format!("{base}/api/v1/tasks/{}/status", t.task.id))
                                .json(&status)
                                .send()
                                .await;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

const FILE: &str = r#"
name = "web"
image = "example/web:v1"
count = 4
port = 8080
memory = "128MiB"

[health]
http = "/healthz"
interval = "1s"

[deploy]
min_healthy_time = "0s"
drain_delay = "100ms"
"#;

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_succeed_refuse_and_move_off_a_dead_node() {
    let env = start().await;
    env.register("node-a", "a").await;
    env.register("node-b", "b").await;
    let alive_a = Arc::new(AtomicBool::new(true));
    fake_agent(env.base.clone(), "node-a", alive_a.clone());
    fake_agent(env.base.clone(), "node-b", Arc::new(AtomicBool::new(true)));

    let resp = env.deploy(FILE).await.unwrap();
    assert_eq!(resp.outcome, "created");
    let dep_id = resp.deployment.unwrap();
    wait_for("the deployment to succeed", || async {
        env.deployment(&dep_id).await.status == pier_api::service::DeploymentStatus::Succeeded
    })
    .await;
    let tasks = env.tasks("web").await;
    let zones: Vec<&str> = tasks
        .iter()
        .filter(|t| t.display_state == "healthy")
        .map(|t| t.task.zone.as_str())
        .collect();
    assert_eq!(zones.iter().filter(|z| **z == "a").count(), 2, "{zones:?}");
    assert_eq!(zones.iter().filter(|z| **z == "b").count(), 2, "{zones:?}");

    // The same file is a no-op; only `count` changed is a scale.
    assert_eq!(env.deploy(FILE).await.unwrap().outcome, "unchanged");
    // Refused up front, nothing changes.
    let err = env
        .deploy(&FILE.replace("128MiB", "4GiB"))
        .await
        .unwrap_err();
    assert!(
        err.contains("no node can ever run") && err.contains("MiB"),
        "{err}"
    );
    let err = env
        .deploy(&FILE.replace("count = 4", "count = -1"))
        .await
        .unwrap_err();
    assert!(err.contains("must not be negative"), "{err}");
    let err = env
        .deploy(&FILE.replace("[deploy]", "[deploy]\nbogus = 1"))
        .await
        .unwrap_err();
    assert!(err.contains("unknown field `bogus`"), "{err}");

    // Node a goes silent: after the timeout its tasks are replaced in zone b, but they are
    // only lost, not stopped: its agent may just be cut off from the servers.
    alive_a.store(false, Ordering::SeqCst);
    wait_for("four healthy tasks in zone b", || async {
        let t = env.tasks("web").await;
        t.iter()
            .filter(|t| t.display_state == "healthy" && t.task.zone == "b")
            .count()
            == 4
    })
    .await;
    let on_a: Vec<TaskView> = env
        .tasks("web")
        .await
        .into_iter()
        .filter(|t| t.task.zone == "a")
        .collect();
    assert_eq!(on_a.len(), 2);
    for t in &on_a {
        assert_eq!(t.display_state, "lost", "{t:#?}");
        assert_eq!(t.task.desired, DesiredState::Running, "{t:#?}");
        assert!(t.task.lost_since_ms.is_some(), "{t:#?}");
    }
    assert_eq!(node_state(&env, "node-a").await, "down");

    // Node a is back: its tasks serve again, and go (drained, not all at once below the
    // floor: four healthy at every moment) because their replacements pass.
    alive_a.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = env.tasks("web").await;
        let serving = tasks
            .iter()
            .filter(|t| t.display_state == "healthy")
            .count();
        assert!(serving >= 4, "capacity fell to {serving}: {tasks:#?}");
        let a_stopped = tasks
            .iter()
            .filter(|t| t.task.zone == "a")
            .all(|t| t.task.stop_phase == StopPhase::Stopped);
        if a_stopped && serving == 4 {
            for t in tasks.iter().filter(|t| t.task.zone == "a") {
                assert_eq!(
                    t.task.stop_reason.as_deref(),
                    Some("replaced while its node was down")
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's tasks never stopped: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node_state(&env, "node-a").await, "ready");
}

async fn node_state(env: &Env, name: &str) -> String {
    let nodes: serde_json::Value = env
        .http
        .get(format!("{}/api/v1/nodes", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_tasks_are_given_up_after_the_lost_task_timeout() {
    let env = start_with(OrchestratorConfig {
        tick_ms: 50,
        lost_task_timeout_ms: 1_500,
        ..Default::default()
    })
    .await;
    env.register("node-a", "a").await;
    env.register("node-b", "b").await;
    let alive_a = Arc::new(AtomicBool::new(true));
    fake_agent(env.base.clone(), "node-a", alive_a.clone());
    fake_agent(env.base.clone(), "node-b", Arc::new(AtomicBool::new(true)));
    env.deploy_and_wait(&FILE.replace("count = 4", "count = 2"))
        .await;
    alive_a.store(false, Ordering::SeqCst);
    let silent = Instant::now();
    // Nobody will report the exit of a task on a node that stays away: after the timeout
    // its stop sequence finishes on its own.
    wait_for("node a's task to be given up", || async {
        env.tasks("web")
            .await
            .iter()
            .filter(|t| t.task.zone == "a")
            .all(|t| {
                t.task.stop_phase == StopPhase::Stopped
                    && t.task.stop_reason.as_deref() == Some("node down")
            })
    })
    .await;
    // Its last heartbeat came up to one fake-agent loop (100 ms plus the requests) before
    // `silent`: down 800 ms after that heartbeat, given up 1.5 s later.
    let took = silent.elapsed();
    assert!(
        took >= Duration::from_millis(800 + 1_500 - 200),
        "given up after {took:?}"
    );
    let healthy = env
        .tasks("web")
        .await
        .iter()
        .filter(|t| t.display_state == "healthy")
        .count();
    assert_eq!(healthy, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_replaces_before_stopping() {
    let env = start().await;
    env.register("node-a", "a").await;
    env.register("node-b", "b").await;
    fake_agent(env.base.clone(), "node-a", Arc::new(AtomicBool::new(true)));
    fake_agent(env.base.clone(), "node-b", Arc::new(AtomicBool::new(true)));
    env.deploy_and_wait(&FILE.replace("count = 4", "count = 2"))
        .await;

    let r = env
        .http
        .put(format!("{}/api/v1/nodes/node-a/drain", env.base))
        .json(&pier_api::service::DrainRequest { draining: true })
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = env.tasks("web").await;
        // "healthy" display = running, passing and not being stopped: still served.
        let serving = tasks
            .iter()
            .filter(|t| t.display_state == "healthy")
            .count();
        assert!(
            serving >= 2,
            "capacity fell to {serving} while draining: {tasks:#?}"
        );
        let on_a = tasks
            .iter()
            .filter(|t| t.task.zone == "a" && t.task.stop_phase != StopPhase::Stopped)
            .count();
        if on_a == 0 && serving == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of `web`'s passing catalog instances.
async fn passing_ids(env: &Env) -> Vec<String> {
    let mut ids: Vec<String> = env
        .catalog
        .passing_instances("web")
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|i| i.instance.id)
        .collect();
    ids.sort();
    ids
}

/// The catalog is derived from task state on every pass: an instance lost from the catalog
/// comes back, a check set wrong is corrected, and an instance no task accounts for goes,
/// without any new report from the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_follows_task_state_on_every_pass() {
    let env = start().await;
    env.register("node-a", "a").await;
    fake_agent(env.base.clone(), "node-a", Arc::new(AtomicBool::new(true)));
    env.deploy_and_wait(&FILE.replace("count = 4", "count = 2"))
        .await;
    let ids = passing_ids(&env).await;
    assert_eq!(
        ids.len(),
        2,
        "a succeeded rollout has both instances passing: {ids:?}"
    );
    // A pass that finds the catalog right writes nothing (twenty passes at tick 50 ms).
    let index = env.catalog.passing_instances("web").await.unwrap().index;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        env.catalog.passing_instances("web").await.unwrap().index,
        index,
        "the catalog pass rewrote entries that were right"
    );

    // A lost registration (a leader crash between the task write and the catalog write).
    assert!(env
        .catalog
        .deregister_instance("node-a", &ids[0])
        .await
        .unwrap());
    wait_for("the lost instance to be registered again", || async {
        passing_ids(&env).await == ids
    })
    .await;

    // A check left critical although the agent reports the task healthy.
    env.catalog
        .update_check(
            "node-a",
            &format!("pier-task:{}", ids[1]),
            pier_catalog::CheckStatus::Critical,
            Some("stale"),
        )
        .await
        .unwrap();
    wait_for("the check to be corrected", || async {
        passing_ids(&env).await == ids
    })
    .await;

    // An instance of a task that no longer exists (a deregistration that never happened).
    let ghost = pier_catalog::InstanceRegistration {
        id: "web-1-ghost".into(),
        service: "web".into(),
        node: "node-a".into(),
        address: "127.0.0.1".into(),
        port: 30_001,
        meta: BTreeMap::from([("pier-task".to_string(), "web-1-ghost".to_string())]),
        ..Default::default()
    };
    env.catalog.register_instance(&ghost).await.unwrap();
    let all = |env: &Env| {
        let catalog = env.catalog.clone();
        async move {
            catalog
                .service_instances(
                    "web",
                    &pier_catalog::ServiceFilter::default(),
                    &pier_catalog::QueryOptions::default(),
                )
                .await
                .unwrap()
                .value
                .into_iter()
                .map(|(_, i)| i.id)
                .collect::<Vec<String>>()
        }
    };
    assert!(all(&env).await.contains(&"web-1-ghost".to_string()));
    wait_for("the stray instance to be removed", || async {
        !all(&env).await.contains(&"web-1-ghost".to_string())
    })
    .await;
    assert_eq!(passing_ids(&env).await, ids, "the real instances stay");
}

/// Two of three nodes silent at once: the leader suspects itself, not the nodes — none is
/// marked down and nothing is rescheduled. One of three silent is a node failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_silence_marks_no_node_down_but_one_silent_node_is_down() {
    let env = start().await;
    let mut alive = Vec::new();
    for (name, zone) in [("node-a", "a"), ("node-b", "b"), ("node-c", "c")] {
        env.register(name, zone).await;
        let flag = Arc::new(AtomicBool::new(true));
        fake_agent(env.base.clone(), name, flag.clone());
        alive.push(flag);
    }
    env.deploy_and_wait(&FILE.replace("count = 4", "count = 3"))
        .await;
    let tasks_before: Vec<String> = env
        .tasks("web")
        .await
        .into_iter()
        .map(|t| t.task.id)
        .collect();

    alive[0].store(false, Ordering::SeqCst);
    alive[1].store(false, Ordering::SeqCst);
    // Three times the 800 ms timeout.
    tokio::time::sleep(Duration::from_millis(2_400)).await;
    for node in ["node-a", "node-b", "node-c"] {
        assert_eq!(node_state(&env, node).await, "ready", "{node}");
    }
    let tasks_after: Vec<String> = env
        .tasks("web")
        .await
        .into_iter()
        .map(|t| t.task.id)
        .collect();
    assert_eq!(tasks_before, tasks_after, "tasks were rescheduled");

    alive[0].store(true, Ordering::SeqCst);
    alive[1].store(true, Ordering::SeqCst);
    alive[2].store(false, Ordering::SeqCst);
    wait_for("node c marked down", || async {
        node_state(&env, "node-c").await == "down"
    })
    .await;
    assert_eq!(node_state(&env, "node-a").await, "ready");
    assert_eq!(node_state(&env, "node-b").await, "ready");
}

/// Revision history is bounded: with `keep_revisions = 3`, six deploys leave the newest three
/// revisions and deployments; the oldest deployment is gone, and the service still rolls back
/// to its previous revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_finished_deployments_are_bounded() {
    let env = start_with(OrchestratorConfig {
        tick_ms: 50,
        keep_revisions: 3,
        ..Default::default()
    })
    .await;
    env.register("node-a", "a").await;
    fake_agent(env.base.clone(), "node-a", Arc::new(AtomicBool::new(true)));
    let mut deployments = Vec::new();
    for version in 1..=6 {
        let file = format!(
            "{}\n[env]\nVERSION = \"{version}\"\n",
            FILE.replace("count = 4", "count = 1")
        );
        deployments.push(env.deploy_and_wait(&file).await);
    }
    let detail = |env: &Env| {
        let http = env.http.clone();
        let url = format!("{}/api/v1/services/web", env.base);
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    wait_for("old revisions collected", || async {
        detail(&env).await["revisions"] == serde_json::json!([4, 5, 6])
    })
    .await;
    let first = env
        .http
        .get(format!(
            "{}/api/v1/deployments/{}",
            env.base, deployments[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 404, "the oldest deployment is collected");
    let latest = env
        .http
        .get(format!(
            "{}/api/v1/deployments/{}",
            env.base, deployments[5]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(latest.status(), 200);

    let rollback = env
        .http
        .post(format!("{}/api/v1/services/web/rollback", env.base))
        .send()
        .await
        .unwrap();
    assert!(
        rollback.status().is_success(),
        "{}",
        rollback.text().await.unwrap()
    );
    wait_for("rolled back to revision 5", || async {
        detail(&env).await["service"]["revision"] == 5
    })
    .await;
}
