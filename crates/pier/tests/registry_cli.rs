//! `pier registry gc` against a running `pier registry`, and a clean stop on
//! SIGTERM / SIGINT.

use std::process::Command;
use std::time::Duration;

use pier_registry::digest::Digest;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use reqwest::StatusCode;

fn pier(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pier {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn start(dir: &std::path::Path, listen: &str, name: &str) -> PierProcess {
    let data = dir.join("data");
    PierProcess::spawn(
        env!("CARGO_BIN_EXE_pier"),
        name,
        &[
            "registry",
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            listen,
            "--gc-grace",
            "0s",
            "--gc-interval",
            "off",
        ],
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_subcommand_and_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut registry = start(dir.path(), &listen, "registry-1");
    wait_http_ok(&format!("{base}/v2/"), Duration::from_secs(20)).await;

    // A blob no manifest references: garbage as soon as the grace (0 s) is over.
    let http = reqwest::Client::new();
    let bytes = b"dangling".to_vec();
    let digest = Digest::sha256_of(&bytes);
    let resp = http
        .post(format!("{base}/v2/cli/gc/blobs/uploads/?digest={digest}"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(20)).await;

    let dry = pier(&["registry", "gc", "--dry-run", "--json", "--registry", &base]);
    let report: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["blobs_deleted"], 1, "{dry}");
    let head = http
        .head(format!("{base}/v2/cli/gc/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK, "a dry run deletes nothing");

    let human = pier(&["registry", "gc", "--registry", &base]);
    assert!(human.contains("deleted: 1 blobs"), "{human}");
    let head = http
        .head(format!("{base}/v2/cli/gc/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // An unreachable registry is a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args([
            "registry",
            "gc",
            "--registry",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the registry"));

    let status = registry
        .signal_and_wait("TERM", Duration::from_secs(15))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut registry = start(dir.path(), &listen, "registry-2");
    wait_http_ok(&format!("{base}/v2/"), Duration::from_secs(20)).await;
    let status = registry
        .signal_and_wait("INT", Duration::from_secs(15))
        .expect("stops on SIGINT");
    assert!(status.success(), "{status:?}");
}
