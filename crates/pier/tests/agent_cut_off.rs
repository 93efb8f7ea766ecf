//! An agent attached to a server that is cut off from the cluster's quorum knows it. Three
//! real `pier server` processes and a `pier agent` talking to one of them; the other two are
//! frozen with SIGSTOP, so the agent's server — leader or follower — hears from no quorum, as
//! when a partition isolates it with the agent. Its heartbeats stop being acknowledged: the
//! agent says once that it is cut off (not at every beat) and `GET /v1/agent/health` answers
//! 503 `cut_off`; once the others resume it says once that it is heard again and answers 200.
//! The agent needs the Docker engine (it reads its capacity there); no container is started.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::docker::RunGuard;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const CUT_OFF: &str = "cut off from the cluster quorum";
const HEARD_AGAIN: &str = "heartbeats acknowledged by the cluster quorum again";

struct Server {
    name: String,
    http: u16,
    raft: u16,
    proc: Option<PierProcess>,
}

impl Server {
    fn start(&mut self, dir: &Path, join: &str) {
        let data = dir.join(&self.name);
        let args = [
            "server".to_string(),
            "--insecure".to_string(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--node-name".into(),
            self.name.clone(),
            "--http-port".into(),
            self.http.to_string(),
            "--raft-port".into(),
            self.raft.to_string(),
            "--bootstrap-expect".into(),
            "3".into(),
            "--join".into(),
            join.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = Some(PierProcess::spawn(PIER, &self.name, &args, dir));
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map(PierProcess::pid).unwrap_or(0)
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// The agent's view of the cluster: HTTP status and `cluster` field.
async fn agent_health(port: u16) -> Option<(u16, Value)> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/agent/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.json().await.ok()?))
}

async fn wait_contact(port: u16, want: &str, timeout: Duration) -> (u16, Value) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((code, body)) = agent_health(port).await {
            if body["cluster"] == want {
                return (code, body);
            }
            last = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent never {want} within {timeout:?}; last: {last:?}");
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_server_without_quorum_knows_it_is_cut_off() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut servers: Vec<Server> = (1..=3)
        .map(|i| Server {
            name: format!("s{i}"),
            http: free_port(),
            raft: free_port(),
            proc: None,
        })
        .collect();
    let join = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.raft))
        .collect::<Vec<_>>()
        .join(",");
    for s in servers.iter_mut() {
        s.start(tmp.path(), &join);
    }
    for s in &servers {
        let url = format!("http://127.0.0.1:{}/api/v1/status", s.http);
        wait_http_ok(&url, Duration::from_secs(30)).await;
    }
    let guard = RunGuard::new_run();
    let agent_port = free_port();
    let args = [
        "agent".to_string(),
        "--server".into(),
        format!("http://127.0.0.1:{}", servers[0].http),
        "--name".into(),
        "cut-off-node".into(),
        "--zone".into(),
        "a".into(),
        "--listen".into(),
        format!("127.0.0.1:{agent_port}"),
        // The servers' registry is not what this test is about; tests share the machine.
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
    let _agent = PierProcess::spawn(PIER, "agent", &args, tmp.path());
    let log = tmp.path().join("agent.log");
    let (code, _) = wait_contact(agent_port, "connected", Duration::from_secs(40)).await;
    assert_eq!(code, 200);
    assert_eq!(count(&log, CUT_OFF), 0, "cut off before any fault");

    // The two other servers freeze: the agent's server hears from no quorum.
    for s in &servers[1..] {
        signal(s.pid(), "STOP");
    }
    let frozen_at = Instant::now();
    let (code, body) = wait_contact(agent_port, "cut_off", Duration::from_secs(20)).await;
    eprintln!(
        "agent cut off {:?} after the freeze: {body}",
        frozen_at.elapsed()
    );
    assert_eq!(code, 503, "{body}");
    assert!(body["cut_off_since_ms"].is_u64(), "{body}");
    assert!(body["last_error"].is_string(), "{body}");
    // Several more beats go unacknowledged; it is said once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&log, CUT_OFF),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    for s in &servers[1..] {
        signal(s.pid(), "CONT");
    }
    let (code, body) = wait_contact(agent_port, "connected", Duration::from_secs(30)).await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&log, HEARD_AGAIN), 1);
    assert_eq!(count(&log, CUT_OFF), 1);
}
