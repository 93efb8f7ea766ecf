//! `pier dev` as a user runs it: starts, answers /api/v1/status, stops cleanly
//! on SIGINT and SIGTERM, and comes back with its state.

use std::time::Duration;

use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

fn dev_args(data_dir: &str, http: u16, raft: u16) -> Vec<String> {
    vec![
        "dev".into(),
        "--data-dir".into(),
        data_dir.into(),
        "--http-port".into(),
        http.to_string(),
        "--raft-port".into(),
        raft.to_string(),
        "--registry-port".into(),
        free_port().to_string(),
        "--gateway-port".into(),
        free_port().to_string(),
        "--https-port".into(),
        free_port().to_string(),
        "--dns-port".into(),
        free_port().to_string(),
        "--no-network".into(),
    ]
}

async fn wait_leader(base: &str) -> Value {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(resp) = client.get(format!("{base}/api/v1/status")).send().await {
            if let Ok(status) = resp.json::<Value>().await {
                if status["is_leader"] == Value::Bool(true) {
                    return status;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pier dev at {base} never became leader of its one-member cluster");
}

#[tokio::test]
async fn dev_starts_stops_on_signals_and_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let (http, raft) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http}");
    let args = dev_args(data, http, raft);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut dev = PierProcess::spawn(PIER, "dev-1", &args, tmp.path());
    wait_http_ok(&format!("{base}/api/v1/status"), Duration::from_secs(30)).await;
    let status = wait_leader(&base).await;
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );

    let client = reqwest::Client::new();
    let put = client
        .put(format!("{base}/api/v1/kv/app/greeting"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    let exit = dev.signal_and_wait("INT", Duration::from_secs(15));
    let exit = exit.expect("pier dev did not stop within 15 s of SIGINT");
    assert!(exit.success(), "pier dev exited with {exit:?} after SIGINT");

    let mut dev = PierProcess::spawn(PIER, "dev-2", &args, tmp.path());
    wait_http_ok(&format!("{base}/api/v1/status"), Duration::from_secs(30)).await;
    wait_leader(&base).await;
    let got: Value = client
        .get(format!("{base}/api/v1/kv/app/greeting"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["value"], "hello", "state lost across a restart: {got}");

    let exit = dev.signal_and_wait("TERM", Duration::from_secs(15));
    let exit = exit.expect("pier dev did not stop within 15 s of SIGTERM");
    assert!(
        exit.success(),
        "pier dev exited with {exit:?} after SIGTERM"
    );
}

#[tokio::test]
async fn data_dir_that_is_a_file_is_refused_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(PIER)
        .args(dev_args(file.to_str().unwrap(), free_port(), free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(file.to_str().unwrap()),
        "error does not name the path: {stderr}"
    );
}

#[tokio::test]
async fn corrupt_state_is_refused_naming_the_file_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = dev_args(data.to_str().unwrap(), free_port(), free_port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dev = PierProcess::spawn(PIER, "dev-first", &args, tmp.path());
    let base = format!("http://127.0.0.1:{}", args[4]);
    wait_http_ok(&format!("{base}/api/v1/status"), Duration::from_secs(30)).await;
    wait_leader(&base).await;
    assert!(dev
        .signal_and_wait("TERM", Duration::from_secs(15))
        .is_some());

    let raft_dir = data.join("raft");
    let mut corrupted = Vec::new();
    for entry in std::fs::read_dir(&raft_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("redb") {
            std::fs::write(&path, b"this is not a database").unwrap();
            corrupted.push(path);
        }
    }
    assert!(
        !corrupted.is_empty(),
        "no redb files found in {}",
        raft_dir.display()
    );

    let out = std::process::Command::new(PIER)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "pier dev started on a corrupt data dir"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        corrupted
            .iter()
            .any(|p| stderr.contains(p.to_str().unwrap())),
        "error does not name the corrupt file: {stderr}"
    );
}

/// `pier … | head -1` or `| grep -q`: the reader goes away before pier writes; the command
/// must end as `ls` does (killed by SIGPIPE, or exit 0), never with a panic message.
#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(PIER)
        .args(["token", "generate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pier");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for pier");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "pier panicked writing to a closed pipe: {stderr}"
    );
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "pier ended with {:?}: {stderr}",
        out.status
    );
}
