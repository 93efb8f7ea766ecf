//! podman pulls from and pushes to `pier registry`. Podman runs with its own
//! storage (vfs driver) in a temporary directory, so the test touches nothing
//! of the host's container storage. (Running containers with podman is not
//! possible in this sandbox: runc may not set rlimits; docker covers `run`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pier_testkit::docker;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};

fn podman(root: &Path, args: &[&str]) -> String {
    let root_dir = root.join("root");
    let run_dir = root.join("run");
    let mut all = vec![
        "--storage-driver",
        "vfs",
        "--root",
        root_dir.to_str().unwrap(),
        "--runroot",
        run_dir.to_str().unwrap(),
        "--events-backend",
        "file",
    ];
    all.extend_from_slice(args);
    let out = Command::new("podman")
        .args(&all)
        .output()
        .unwrap_or_else(|e| panic!("this test needs podman (apt-get install podman): {e}"));
    assert!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pull_and_push() {
    docker::docker_available();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let _registry = PierProcess::spawn(
        env!("CARGO_BIN_EXE_pier"),
        "registry",
        &[
            "registry",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--gc-interval",
            "off",
        ],
        dir.path(),
    );
    wait_http_ok(&format!("http://{listen}/v2/"), Duration::from_secs(20)).await;

    // Seed the registry with docker.
    let local = format!("pier-test/podman-busybox-{}:v1", std::process::id());
    let mut image = docker::build_busybox_image(&local);
    let first = format!("{listen}/podman/busybox:v1");
    image.also(&first);
    docker::docker(&["tag", &local, &first]);
    docker::docker(&["push", &first]);

    let storage = dir.path().join("podman");
    podman(&storage, &["pull", "-q", "--tls-verify=false", &first]);
    let id = podman(
        &storage,
        &["image", "inspect", "--format", "{{.Id}}", &first],
    );

    // Push under another name (layers come from podman's own storage), then
    // pull that back into an empty store: same image.
    let second = format!("{listen}/podman/copy:v2");
    podman(
        &storage,
        &[
            "push",
            "-q",
            "--tls-verify=false",
            &first,
            &format!("docker://{second}"),
        ],
    );
    podman(&storage, &["rmi", "-a", "-f"]);
    podman(&storage, &["pull", "-q", "--tls-verify=false", &second]);
    let id_back = podman(
        &storage,
        &["image", "inspect", "--format", "{{.Id}}", &second],
    );
    assert_eq!(
        id_back, id,
        "the image ID (config digest) survives podman's push and pull"
    );

    let tags: serde_json::Value = reqwest::get(format!("http://{listen}/v2/podman/copy/tags/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v2"]));
    // vfs layers are plain directories owned by root; remove them while we can.
    podman(&storage, &["rmi", "-a", "-f"]);
}
