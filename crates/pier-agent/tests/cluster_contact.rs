//! The agent knows when the cluster's quorum stops acknowledging its heartbeats: against a
//! stand-in server that starts refusing them the way a leader cut off from its quorum does
//! (503), `GET /v1/agent/health` turns `cut_off` (503) after the cut-off time, naming the last
//! acknowledged heartbeat, and `connected` again once they are acknowledged. Needs the Docker
//! engine (the agent reads its capacity there); starts no container.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;
use pier_agent::{Agent, AgentConfig};
use pier_api::service::{AgentHealth, AgentTasks, ClusterContact};
use pier_testkit::docker::RunGuard;

/// A server that registers anyone, has no tasks for them and answers heartbeats with
/// whatever status `alive` holds.
async fn stand_in_server(alive: Arc<AtomicU16>) -> String {
    async fn tasks(Query(q): Query<BTreeMap<String, String>>) -> axum::Json<AgentTasks> {
        // A blocking query: nothing ever changes here.
        if q.contains_key("index") {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        axum::Json(AgentTasks {
            index: 1,
            tasks: Vec::new(),
        })
    }
    async fn heartbeat(State(alive): State<Arc<AtomicU16>>) -> (StatusCode, &'static str) {
        let code = StatusCode::from_u16(alive.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, "this server leads but no quorum has acknowledged it")
    }
    let app = Router::new()
        .route("/api/v1/nodes/{name}", put(|| async { "{}" }))
        .route("/api/v1/nodes/{name}/alive", put(heartbeat))
        .route("/api/v1/nodes/{name}/tasks", get(tasks))
        .with_state(alive);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn health(agent: &Agent) -> (u16, AgentHealth) {
    let resp = reqwest::get(format!("http://{}/v1/agent/health", agent.local_addr()))
        .await
        .expect("agent health");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("agent health body"))
}

async fn wait_for_contact(agent: &Agent, want: ClusterContact, timeout: Duration) -> AgentHealth {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, h) = health(agent).await;
        if h.cluster == want {
            let expected = if want == ClusterContact::CutOff {
                503
            } else {
                200
            };
            assert_eq!(code, expected, "{h:?}");
            return h;
        }
        assert!(Instant::now() < deadline, "never {want:?}: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_knows_when_the_quorum_stops_acknowledging_it() {
    let alive = Arc::new(AtomicU16::new(204));
    let server = stand_in_server(alive.clone()).await;
    let guard = RunGuard::new_run();
    let mut config = AgentConfig::new(server, format!("contact-{}", guard.value), "a");
    config.heartbeat_interval_ms = 100;
    config.container_labels = BTreeMap::from([
        ("pier.test".to_string(), "1".to_string()),
        (guard.label.clone(), guard.value.clone()),
    ]);
    let agent = Agent::start(config)
        .await
        .expect("the agent needs the Docker engine");

    let h = wait_for_contact(&agent, ClusterContact::Connected, Duration::from_secs(10)).await;
    assert!(
        h.last_ack_ms.is_some() && h.cut_off_since_ms.is_none(),
        "{h:?}"
    );

    alive.store(503, Ordering::SeqCst);
    let refused_at = Instant::now();
    let refused_at_ms = wall_ms();
    let h = wait_for_contact(&agent, ClusterContact::CutOff, Duration::from_secs(10)).await;
    let took = refused_at.elapsed();
    // Three missed beats are not enough: the cut-off time has a 1.5 s floor.
    assert!(
        took >= Duration::from_millis(1_300),
        "cut off after {took:?}"
    );
    let since = h.cut_off_since_ms.expect("since when");
    assert!(
        since <= refused_at_ms && since + 1_000 > refused_at_ms,
        "{h:?}"
    );
    assert_eq!(h.last_ack_ms, Some(since));
    assert!(
        h.last_error
            .as_deref()
            .is_some_and(|e| e.contains("503") && e.contains("no quorum")),
        "{h:?}"
    );

    alive.store(204, Ordering::SeqCst);
    let h = wait_for_contact(&agent, ClusterContact::Connected, Duration::from_secs(10)).await;
    assert!(
        h.cut_off_since_ms.is_none() && h.last_error.is_none(),
        "{h:?}"
    );
    agent.shutdown().await;
}
