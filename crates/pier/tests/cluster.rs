//! A 3-server cluster of real `pier server` processes on loopback: writes sent
//! to a follower are forwarded, killing the leader with SIGKILL loses no
//! acknowledged write, and a restarted server catches up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

struct Server {
    name: String,
    http: u16,
    raft: u16,
    proc: Option<PierProcess>,
}

impl Server {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

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
            // Small, so the restarted server must install a snapshot.
            "--raft-snapshot-every".into(),
            "50".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = Some(PierProcess::spawn(PIER, &self.name, &args, dir));
    }
}

async fn status(client: &reqwest::Client, base: &str) -> Option<Value> {
    let resp = client
        .get(format!("{base}/api/v1/status"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// Index into `servers` of the leader that a majority of the live ones agree on.
async fn wait_leader(client: &reqwest::Client, servers: &[Server], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (i, s) in servers.iter().enumerate() {
            if s.proc.is_none() {
                continue;
            }
            if let Some(st) = status(client, &s.base()).await {
                if st["is_leader"] == Value::Bool(true) {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected within {timeout:?}");
}

async fn put(client: &reqwest::Client, base: &str, key: &str, value: &str) -> bool {
    match client
        .put(format!("{base}/api/v1/kv/{key}"))
        .body(value.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(resp) if resp.status() == 200 => {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            body["written"] == Value::Bool(true)
        }
        _ => false,
    }
}

async fn read_all(client: &reqwest::Client, base: &str, mode: &str) -> BTreeMap<String, String> {
    let resp = client
        .get(format!("{base}/api/v1/kv/data/?recurse=true&{mode}=true"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("read request");
    assert_eq!(resp.status(), 200, "read from {base} failed");
    let entries: Vec<Value> = resp.json().await.expect("kv list body");
    entries
        .into_iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_survive_a_leader_kill_and_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
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
        wait_http_ok(
            &format!("{}/api/v1/status", s.base()),
            Duration::from_secs(30),
        )
        .await;
    }
    let client = reqwest::Client::new();
    let leader = wait_leader(&client, &servers, Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;

    // Writes to a follower are forwarded to the leader and visible there.
    let mut acked = BTreeMap::new();
    for i in 0..120 {
        let key = format!("data/k{i:04}");
        let value = format!("v{i}");
        assert!(
            put(&client, &servers[follower].base(), &key, &value).await,
            "write {key} via follower failed"
        );
        acked.insert(key, value);
    }
    let on_leader = read_all(&client, &servers[leader].base(), "consistent").await;
    assert_eq!(
        on_leader, acked,
        "the leader does not have every write sent to a follower"
    );

    // SIGKILL the leader: a new one is elected and no acknowledged write is lost.
    let killed = leader;
    servers[killed].proc.as_mut().unwrap().kill9();
    servers[killed].proc = None;
    let started = Instant::now();
    let new_leader = wait_leader(&client, &servers, Duration::from_secs(20)).await;
    assert_ne!(new_leader, killed);
    eprintln!("new leader after {:?}", started.elapsed());
    for s in servers.iter().filter(|s| s.proc.is_some()) {
        let got = read_all(&client, &s.base(), "consistent").await;
        assert_eq!(
            got, acked,
            "{} lost acknowledged writes after the leader was killed",
            s.name
        );
    }
    // Keep writing while the killed server is down, past a snapshot.
    for i in 120..300 {
        let key = format!("data/k{i:04}");
        let value = format!("v{i}");
        let target = &servers[(killed + 1 + i % 2) % 3];
        assert!(
            put(&client, &target.base(), &key, &value).await,
            "write {key} failed after failover"
        );
        acked.insert(key, value);
    }

    // The killed server restarts from its data dir and catches up.
    let restarted = killed;
    servers[restarted].start(tmp.path(), &join);
    wait_http_ok(
        &format!("{}/api/v1/status", servers[restarted].base()),
        Duration::from_secs(30),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read_all(&client, &servers[restarted].base(), "stale").await;
        if got == acked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted server has {} of {} keys after 30 s",
            got.len(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
