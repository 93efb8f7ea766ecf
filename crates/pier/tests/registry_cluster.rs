//! One registry for a cluster of three real `pier server` processes (`--insecure`, loopback):
//! an image pushed to server 1 is pullable from servers 2 and 3 with the same digests, every
//! blob gets a second copy in the background, a blob corrupted on one server's disk is found
//! by the scrub and fetched again from a peer, and after server 1 is killed (SIGKILL) pulls
//! keep working from the others, with skopeo and with Docker, also through an agent's
//! node-local registry endpoint (a pull-through that tries each server).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::docker::{self, ImageGuard, RunGuard, ScratchImage};
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use pier_testkit::servers::{start_three, LoopbackServer as Server};
use sha2::Digest as _;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

/// Where a server keeps a blob, and whether it holds it intact.
trait Blobs {
    fn blob_path(&self, digest: &str) -> PathBuf;
    fn holds(&self, digest: &str) -> bool;
}

impl Blobs for Server {
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.data
            .join("registry/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// Whether this server's disk holds `digest` with bytes that hash to it.
    fn holds(&self, digest: &str) -> bool {
        match std::fs::read(self.blob_path(digest)) {
            Ok(bytes) => format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))) == digest,
            Err(_) => false,
        }
    }
}

fn skopeo(args: &[&str]) -> Result<String, String> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "skopeo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The manifest digest of an OCI layout and the digests of every blob in it.
fn layout(dir: &Path) -> (String, BTreeSet<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest")
        .to_string();
    let blobs = std::fs::read_dir(dir.join("blobs/sha256"))
        .expect("layout blobs")
        .map(|e| {
            format!(
                "sha256:{}",
                e.expect("dir entry").file_name().to_string_lossy()
            )
        })
        .collect();
    (manifest, blobs)
}

/// Pulls `remote` into a fresh OCI layout, retrying for `within` (a leader election after a
/// kill), and returns what it holds.
async fn pull(remote: &str, into: &Path, within: Duration) -> (String, BTreeSet<String>) {
    let deadline = Instant::now() + within;
    loop {
        let _ = std::fs::remove_dir_all(into);
        let dest = format!("oci:{}:img", into.display());
        match skopeo(&["copy", "--quiet", "--src-tls-verify=false", remote, &dest]) {
            Ok(_) => return layout(into),
            Err(e) if Instant::now() >= deadline => panic!("pull of {remote}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_cluster(dir: &Path) -> Vec<Server> {
    start_three(
        PIER,
        dir,
        &[
            "--registry-scrub-every",
            "1s",
            "--registry-gc-grace",
            "0s",
            "--snapshot-every",
            "0s",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_one_server_pull_from_all_survives_a_kill_and_a_corrupt_blob() {
    docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut servers = start_cluster(dir);
    for s in &servers {
        wait_http_ok(
            &format!("http://{}/v2/", s.registry()),
            Duration::from_secs(30),
        )
        .await;
        wait_http_ok(
            &format!("http://127.0.0.1:{}/api/v1/status", s.http),
            Duration::from_secs(30),
        )
        .await;
    }

    // An agent whose node-local registry endpoint pulls through the servers.
    let guard = RunGuard::new_run();
    let agent_registry = format!("127.0.0.1:{}", free_port());
    let agent_args = [
        "agent".to_string(),
        "--server".into(),
        format!("http://127.0.0.1:{}", servers[0].http),
        "--name".into(),
        "registry-node".into(),
        "--zone".into(),
        "a".into(),
        "--registry-port".into(),
        agent_registry
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string(),
        "--data-dir".into(),
        dir.join("agent").to_string_lossy().into_owned(),
        "--container-label".into(),
        "pier.test=1".into(),
        "--container-label".into(),
        format!("{}={}", guard.label, guard.value),
    ];
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let _agent = PierProcess::spawn(PIER, "agent", &agent_args, dir);
    wait_http_ok(
        &format!("http://{agent_registry}/v2/"),
        Duration::from_secs(30),
    )
    .await;

    // A three-layer image from scratch: busybox, a 3 MB data file, a page.
    let tag = format!("pier-test/registry-cluster-{}:v1", std::process::id());
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let _image = ScratchImage::new()
        .with_busybox()
        .file("/data/big.bin", big, 0o644)
        .file("/www/index.html", "cluster\n", 0o644)
        .cmd(&["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .build(&tag);
    let src = dir.join("src-layout");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-daemon:{tag}"),
        &format!("oci:{}:img", src.display()),
    ])
    .unwrap();
    let (digest, blobs) = layout(&src);

    // Push to server 1 only.
    let path = "cluster/app:v1";
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:img", src.display()),
        &format!("docker://{}/{path}", servers[0].registry()),
    ])
    .unwrap();

    // In the background every blob (and the manifest) gets a second copy.
    wait_until(
        "every blob on two servers' disks",
        Duration::from_secs(30),
        || {
            blobs
                .iter()
                .all(|b| servers.iter().filter(|s| s.holds(b)).count() >= 2)
        },
    )
    .await;

    // Pull from servers 2 and 3: same manifest digest, same blobs.
    for (i, s) in servers.iter().enumerate().skip(1) {
        let remote = format!("docker://{}/{path}", s.registry());
        let got = pull(
            &remote,
            &dir.join(format!("pull-{i}")),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(got, (digest.clone(), blobs.clone()), "pull from {}", s.name);
    }
    for b in &blobs {
        assert!(
            servers[1].holds(b) && servers[2].holds(b),
            "{b} kept by the servers that pulled it"
        );
    }

    // Corrupt the biggest layer on server 2's disk (same size): the scrub finds it and the
    // copy is fetched again from a peer.
    let victim = blobs
        .iter()
        .max_by_key(|b| {
            std::fs::metadata(servers[1].blob_path(b))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .unwrap()
        .clone();
    let file = servers[1].blob_path(&victim);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert!(!servers[1].holds(&victim));
    wait_until(
        "the corrupt blob replaced by a verified copy",
        Duration::from_secs(30),
        || servers[1].holds(&victim),
    )
    .await;
    let log = std::fs::read_to_string(dir.join("s2.log")).unwrap_or_default();
    assert!(
        log.contains("blob corrupt on disk"),
        "server 2 should say it found the corrupt copy"
    );

    // Kill server 1: pulls keep working from servers 2 and 3.
    servers[0].proc.as_mut().unwrap().kill9();
    servers[0].proc = None;
    for (i, s) in servers.iter().enumerate().skip(1) {
        let remote = format!("docker://{}/{path}", s.registry());
        let got = pull(
            &remote,
            &dir.join(format!("after-{i}")),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            got,
            (digest.clone(), blobs.clone()),
            "pull from {} after the kill",
            s.name
        );
    }
    // Through the agent's endpoint, which first tried the killed server (its first server).
    let remote = format!("docker://{agent_registry}/{path}");
    let got = pull(&remote, &dir.join("via-agent"), Duration::from_secs(20)).await;
    assert_eq!(
        got,
        (digest.clone(), blobs.clone()),
        "pull through the agent"
    );
    let pushed = skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:img", src.display()),
        &format!("{remote}-again"),
    ]);
    assert!(
        pushed.is_err(),
        "the node-local endpoint must refuse pushes"
    );
    // Docker too, through the node-local endpoint (127.0.0.1 registries are plain HTTP to the
    // engine without configuration).
    let docker_ref = format!("{agent_registry}/{path}");
    let _pulled = ImageGuard::new(&docker_ref);
    docker::docker(&["pull", "-q", &docker_ref]);
    let repo_digests = docker::docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &docker_ref,
    ]);
    assert!(
        repo_digests.contains(&digest),
        "docker pulled {repo_digests}, pushed {digest}"
    );
}

/// Pushes `bytes` as a blob of `repo` on `registry` (monolithic upload); returns its digest.
async fn push_blob(http: &reqwest::Client, registry: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let resp = http
        .post(format!(
            "http://{registry}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("push a blob");
    assert_eq!(resp.status(), 201, "blob push to {registry}");
    digest
}

/// Pushes a manifest of `config` and `layers` as `repo:tag`; returns its digest.
async fn push_manifest(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    tag: &str,
    config: (&str, usize),
    layers: &[(&str, usize)],
) -> String {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let resp = http
        .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(bytes.clone())
        .send()
        .await
        .expect("push a manifest");
    assert_eq!(resp.status(), 201, "manifest push to {registry}");
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_is_cluster_wide_and_keeps_what_a_manifest_still_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let servers = start_cluster(dir);
    for s in &servers {
        wait_http_ok(
            &format!("http://{}/v2/", s.registry()),
            Duration::from_secs(30),
        )
        .await;
    }
    let http = reqwest::Client::new();
    let r1 = servers[0].registry();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let shared: Vec<u8> = (0..400_000u32).map(|i| (i >> 3) as u8).collect();
    let only_a: Vec<u8> = (0..300_000u32).map(|i| (i >> 5) as u8 ^ 0x5a).collect();
    let c = push_blob(&http, &r1, "gc/app", config).await;
    let s = push_blob(&http, &r1, "gc/app", &shared).await;
    let a = push_blob(&http, &r1, "gc/app", &only_a).await;
    let m_a = push_manifest(
        &http,
        &r1,
        "gc/app",
        "a",
        (&c, config.len()),
        &[(&s, shared.len()), (&a, only_a.len())],
    )
    .await;
    let m_b = push_manifest(
        &http,
        &r1,
        "gc/app",
        "b",
        (&c, config.len()),
        &[(&s, shared.len())],
    )
    .await;
    let all = [c.clone(), s.clone(), a.clone(), m_a.clone(), m_b.clone()];
    wait_until(
        "every blob on two servers' disks",
        Duration::from_secs(30),
        || {
            all.iter()
                .all(|b| servers.iter().filter(|sv| sv.holds(b)).count() >= 2)
        },
    )
    .await;

    // Manifest a deleted through server 2, GC run on every server.
    let resp = http
        .delete(format!(
            "http://{}/v2/gc/app/manifests/{m_a}",
            servers[1].registry()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    for sv in &servers {
        let resp = http
            .post(format!("http://{}/_pier/gc?dry_run=false", sv.registry()))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "gc on {}", sv.name);
    }
    for sv in &servers {
        assert!(
            !sv.blob_path(&a).exists(),
            "{} kept the unreferenced layer",
            sv.name
        );
        assert!(
            !sv.blob_path(&m_a).exists(),
            "{} kept the deleted manifest",
            sv.name
        );
        let gone = http
            .get(format!("http://{}/v2/gc/app/blobs/{a}", sv.registry()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            gone.status(),
            404,
            "{} still serves the collected layer",
            sv.name
        );
        let kept = http
            .get(format!("http://{}/v2/gc/app/blobs/{s}", sv.registry()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            kept.status(),
            200,
            "{} lost the layer manifest b uses",
            sv.name
        );
        let body = kept.bytes().await.unwrap();
        assert_eq!(body.as_ref(), shared.as_slice());
    }
    assert!(
        [&s, &c, &m_b]
            .iter()
            .all(|b| servers.iter().filter(|sv| sv.holds(b)).count() >= 2),
        "what manifest b uses keeps two copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_servers_blobs_get_their_second_copy_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut servers = start_cluster(dir);
    for s in &servers {
        wait_http_ok(
            &format!("http://{}/v2/", s.registry()),
            Duration::from_secs(30),
        )
        .await;
    }
    let http = reqwest::Client::new();
    let r1 = servers[0].registry();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = push_blob(&http, &r1, "loss/app", config).await;
    let mut all = vec![c.clone()];
    let mut layers = Vec::new();
    for k in 0..6u32 {
        let bytes: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(k + 7) >> 4) as u8)
            .collect();
        let d = push_blob(&http, &r1, "loss/app", &bytes).await;
        layers.push((d.clone(), bytes.len()));
        all.push(d);
    }
    let refs: Vec<(&str, usize)> = layers.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    all.push(push_manifest(&http, &r1, "loss/app", "v1", (&c, config.len()), &refs).await);
    wait_until(
        "every blob on two servers' disks",
        Duration::from_secs(30),
        || {
            all.iter()
                .all(|b| servers.iter().filter(|s| s.holds(b)).count() >= 2)
        },
    )
    .await;
    // Server 1 (which took the push and holds everything) is lost: what it shared with only
    // one other server gets a copy on the third.
    servers[0].proc.as_mut().unwrap().kill9();
    servers[0].proc = None;
    wait_until(
        "every blob on both remaining servers' disks",
        Duration::from_secs(30),
        || {
            all.iter()
                .all(|b| servers[1].holds(b) && servers[2].holds(b))
        },
    )
    .await;
}
