//! The real Docker engine pushes to, pulls from and runs an image out of
//! `pier registry` (a child process on a free 127.0.0.1 port, which Docker
//! treats as a plain-HTTP registry).

use std::time::{Duration, Instant};

use pier_testkit::docker::{self, ContainerGuard, BUSYBOX_INDEX_HTML};
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_pull_run_busybox() {
    docker::docker_available();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
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

    let local = format!("pier-test/{}:v1", unique("busybox"));
    let mut image = docker::build_busybox_image(&local);
    let remote = format!("{listen}/pier-test/busybox:v1");
    image.also(&remote);
    docker::docker(&["tag", &local, &remote]);

    let pushed = docker::docker(&["push", &remote]);
    let digest = pushed
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in the push output: {pushed}"))
        .to_string();
    assert!(digest.starts_with("sha256:"), "{pushed}");

    // The registry now lists it.
    let http = reqwest::Client::new();
    let tags: serde_json::Value = http
        .get(format!("http://{listen}/v2/pier-test/busybox/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let head = http
        .head(format!("http://{listen}/v2/pier-test/busybox/manifests/v1"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );

    // Remove every local reference so that the pull really downloads.
    docker::docker(&["rmi", "-f", &local, &remote]);
    assert!(!docker::try_docker(&["image", "inspect", &remote])
        .status
        .success());
    docker::docker(&["pull", &remote]);
    let repo_digest = docker::docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &remote,
    ]);
    assert_eq!(repo_digest, format!("{listen}/pier-test/busybox@{digest}"));

    let name = unique("pier-test-registry-run");
    let container = ContainerGuard::run(&name, &["-p", "127.0.0.1::8080"], &remote, &[]);
    let host_port = container.host_port(8080);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match http
            .get(format!("http://127.0.0.1:{host_port}/index.html"))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => break resp.text().await.unwrap(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "httpd in the pulled image never answered: {other:?}; logs: {}",
                container.logs()
            ),
        }
    };
    assert_eq!(body, BUSYBOX_INDEX_HTML);
}
