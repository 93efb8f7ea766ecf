//! The orchestrator over a real one-member store and the real catalog, with simulated agents
//! (HTTP clients that report what a real agent would): spread placement, a deployment that
//! succeeds, a no-op redeploy, refusals before anything changes, and a dead node's tasks
//! moving to the other zone. The Docker side is covered by the process tests in `pier`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_api::service::{
    AgentTasks, DeployRequest, DeployResponse, DeploymentRecord, RegisterNode, StopPhase,
    TaskHealth, TaskState, TaskStatus, TaskView,
};
use pier_orchestrator::OrchestratorConfig;
use pier_store::{Store, StoreConfig};

struct Env {
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    _orch: pier_orchestrator::Orchestrator,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::single_node("s1", dir.path().join("raft")))
        .await
        .unwrap();
    store
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let catalog = pier_catalog::Catalog::new(store.clone(), pier_catalog::CatalogConfig::default());
    let orch = pier_orchestrator::spawn(
        store,
        catalog,
        OrchestratorConfig {
            tick_ms: 50,
            node_down_after_ms: 800,
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = orch.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Env {
        _dir: dir,
        base,
        http: reqwest::Client::new(),
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
            .json(&DeployRequest { file: file.into() })
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            Ok(r.json().await.unwrap())
        } else {
            Err(r.text().await.unwrap())
        }
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

    // Node a goes silent: after the timeout its tasks are replaced in zone b.
    alive_a.store(false, Ordering::SeqCst);
    wait_for("four healthy tasks in zone b", || async {
        let t = env.tasks("web").await;
        t.iter()
            .filter(|t| t.display_state == "healthy" && t.task.zone == "b")
            .count()
            == 4
    })
    .await;
    // The lost tasks finish their stop sequence although nobody reports their exit.
    wait_for("node a's tasks to be stopped", || async {
        env.tasks("web")
            .await
            .iter()
            .filter(|t| t.task.zone == "a")
            .all(|t| t.task.stop_phase == StopPhase::Stopped)
    })
    .await;
    let nodes: serde_json::Value = env
        .http
        .get(format!("{}/api/v1/nodes", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-a")
        .unwrap();
    assert_eq!(a["state"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_replaces_before_stopping() {
    let env = start().await;
    env.register("node-a", "a").await;
    env.register("node-b", "b").await;
    fake_agent(env.base.clone(), "node-a", Arc::new(AtomicBool::new(true)));
    fake_agent(env.base.clone(), "node-b", Arc::new(AtomicBool::new(true)));
    let dep = env
        .deploy(&FILE.replace("count = 4", "count = 2"))
        .await
        .unwrap()
        .deployment
        .unwrap();
    wait_for("the deployment to succeed", || async {
        env.deployment(&dep).await.status == pier_api::service::DeploymentStatus::Succeeded
    })
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
