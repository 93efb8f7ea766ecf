//! `pier snapshot save|restore` and scheduled snapshots, on real `pier dev` processes: the state
//! of one instance comes back in a fresh one; a damaged file and a cluster in use are refused
//! with a clear error and nothing written.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

struct Dev {
    base: String,
    _proc: PierProcess,
}

async fn start_dev(dir: &Path, name: &str, extra: &[&str]) -> Dev {
    let http = free_port();
    let mut args: Vec<String> = vec![
        "dev".into(),
        "--no-agent".into(),
        "--data-dir".into(),
        dir.join(name).to_string_lossy().into_owned(),
        "--http-port".into(),
        http.to_string(),
        "--raft-port".into(),
        free_port().to_string(),
        "--registry-port".into(),
        free_port().to_string(),
        "--gateway-port".into(),
        free_port().to_string(),
        "--https-port".into(),
        free_port().to_string(),
        "--dns-port".into(),
        free_port().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = PierProcess::spawn(PIER, name, &args, dir);
    let base = format!("http://127.0.0.1:{http}");
    wait_http_ok(&format!("{base}/api/v1/status"), Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Option<Value> = match reqwest::get(format!("{base}/api/v1/status")).await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if status.is_some_and(|s| s["is_leader"] == Value::Bool(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "{name} never became leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Dev { base, _proc: proc }
}

fn pier(base: &str, args: &[&str]) -> std::process::Output {
    Command::new(PIER)
        .args(["--addr", base])
        .args(args)
        .output()
        .expect("run the pier CLI")
}

async fn kv(base: &str, key: &str) -> Option<Value> {
    let r = reqwest::get(format!("{base}/api/v1/kv/{key}"))
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    assert!(r.status().is_success(), "GET {key}: {}", r.status());
    Some(r.json().await.unwrap())
}

#[tokio::test]
async fn a_snapshot_comes_back_in_a_fresh_instance_and_bad_restores_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_dev(tmp.path(), "a", &[]).await;
    let c = reqwest::Client::new();
    for i in 0..50 {
        let r = c
            .put(format!("{}/api/v1/kv/app/k{i}?flags={i}", a.base))
            .body(format!("value {i}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let binary: Vec<u8> = (0..=255u8).collect();
    c.put(format!("{}/api/v1/kv/app/binary", a.base))
        .body(binary.clone())
        .send()
        .await
        .unwrap();

    let file = tmp.path().join("backup.tar");
    let out = pier(
        &a.base,
        &["snapshot", "save", file.to_str().unwrap(), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(meta["keys"].as_u64().unwrap() >= 52, "{meta}");

    // A damaged file is refused before anything is written.
    let b = start_dev(tmp.path(), "b", &[]).await;
    let bytes = std::fs::read(&file).unwrap();
    let damaged = tmp.path().join("damaged.tar");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let out = pier(&b.base, &["snapshot", "restore", damaged.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a usable pier snapshot"), "{stderr}");
    assert!(kv(&b.base, "app/k1").await.is_none());

    // Restored into the fresh instance: values and flags as they were.
    let out = pier(&b.base, &["snapshot", "restore", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in [0, 17, 49] {
        let e = kv(&b.base, &format!("app/k{i}"))
            .await
            .expect("restored key");
        assert_eq!(e["value"], format!("value {i}"));
        assert_eq!(e["flags"], i);
    }
    let e = kv(&b.base, "app/binary")
        .await
        .expect("restored binary key");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(
            e["value_base64"]
                .as_str()
                .expect("binary values come as value_base64"),
        )
        .unwrap();
    assert_eq!(raw, binary);

    // A cluster in use is refused unless forced.
    c.put(format!("{}/api/v1/kv/app/k1", b.base))
        .body("changed")
        .send()
        .await
        .unwrap();
    let out = pier(&b.base, &["snapshot", "restore", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(kv(&b.base, "app/k1").await.unwrap()["value"], "changed");
    let out = pier(
        &b.base,
        &["snapshot", "restore", "--force", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kv(&b.base, "app/k1").await.unwrap()["value"], "value 1");
}

#[tokio::test]
async fn scheduled_snapshots_are_written_and_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = start_dev(
        tmp.path(),
        "sched",
        &["--snapshot-every", "500ms", "--snapshot-keep", "2"],
    )
    .await;
    reqwest::Client::new()
        .put(format!("{}/api/v1/kv/marker", dev.base))
        .body("1")
        .send()
        .await
        .unwrap();
    let dir = tmp.path().join("sched").join("snapshots");
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let list = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{} not created: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // A snapshot is written every 500 ms, so at any moment one may be in its temp file or just
    // renamed before the oldest is pruned. Between two writes the directory holds exactly the
    // two newest snapshots and no temp file (none left behind by earlier writes).
    let steady = |names: &[String]| {
        names.iter().all(|n| !n.ends_with(".tmp"))
            && names.iter().filter(|n| n.ends_with(".tar")).count() == 2
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut names = list();
    while !steady(&names) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        names = list();
    }
    assert!(steady(&names), "kept, between two writes: {names:?}");
    // Each is a complete snapshot another instance can restore. Copied first: the schedule
    // keeps going and prunes it within a second.
    let newest = names
        .iter()
        .filter(|n| n.ends_with(".tar"))
        .max()
        .expect("two snapshots");
    let copy = tmp.path().join("restore-me.tar");
    std::fs::copy(dir.join(newest), &copy).expect("copy a scheduled snapshot");
    let fresh = start_dev(tmp.path(), "fresh", &[]).await;
    let out = pier(
        &fresh.base,
        &["snapshot", "restore", copy.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kv(&fresh.base, "marker").await.unwrap()["value"], "1");
    drop(dev);
}
