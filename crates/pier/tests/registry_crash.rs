//! SIGKILL `pier registry` in the middle of a large streamed push, restart it
//! on the same data directory: everything pushed before still pulls with the
//! right digests, the half-pushed blob is not served, and the client can both
//! resume the interrupted upload and retry from scratch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_registry::digest::Digest;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use reqwest::StatusCode;
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: usize = 1024 * 1024;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn abs(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        self.abs(resp.headers()["location"].to_str().unwrap())
    }

    /// Chunked push: two PATCHes with Content-Range, then PUT.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let loc = self.start_upload(repo).await;
        let half = bytes.len() / 2;
        for (start, part) in [(0, &bytes[..half]), (half, &bytes[half..])] {
            let resp = self
                .http
                .patch(&loc)
                .header(
                    "content-range",
                    format!("{start}-{}", start + part.len() - 1),
                )
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
        }
        let resp = self
            .http
            .put(format!("{loc}?digest={digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        digest
    }

    async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        config: &Digest,
        config_len: usize,
        layers: &[(Digest, usize)],
    ) -> Digest {
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_len},
            "layers": layers.iter().map(|(d, n)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n})).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let resp = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{tag}", self.base))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        Digest::sha256_of(&bytes)
    }

    /// Pulls `repo:tag` and verifies every digest; returns the manifest digest.
    async fn pull(&self, repo: &str, tag: &str) -> Digest {
        let resp = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{tag}", self.base))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag}");
        let bytes = resp.bytes().await.unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        digests.extend(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for d in digests {
            let resp = self
                .http
                .get(format!("{}/v2/{repo}/blobs/{d}", self.base))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{d}");
            let body = resp.bytes().await.unwrap();
            assert_eq!(
                Digest::sha256_of(&body).to_string(),
                d,
                "blob content of {d}"
            );
        }
        Digest::sha256_of(&bytes)
    }

    async fn head_blob(&self, repo: &str, digest: &Digest) -> StatusCode {
        self.http
            .head(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn start(dir: &std::path::Path, listen: &str, name: &str) -> PierProcess {
    let data = dir.join("data");
    PierProcess::spawn(
        env!("CARGO_BIN_EXE_pier"),
        name,
        &[
            "registry",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            listen,
            "--gc-interval",
            "off",
        ],
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_push_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut registry = start(dir.path(), &listen, "registry-1");
    wait_http_ok(&format!("{base}/v2/"), Duration::from_secs(20)).await;
    let client = Client {
        base: base.clone(),
        http: reqwest::Client::new(),
    };

    // Images pushed before the crash.
    let mut before = Vec::new();
    for i in 0..3u64 {
        let config = format!("{{\"n\":{i}}}").into_bytes();
        let config_digest = client.push_blob("crash/app", &config).await;
        let layer = random_bytes(MIB + i as usize * 1000, i + 1);
        let layer_digest = client.push_blob("crash/app", &layer).await;
        let tag = format!("v{i}");
        let manifest = client
            .push_manifest(
                "crash/app",
                &tag,
                &config_digest,
                config.len(),
                &[(layer_digest, layer.len())],
            )
            .await;
        before.push((tag, manifest));
    }

    // A 96 MiB streamed PATCH, killed (SIGKILL) once about 40 MiB are out.
    let big = Arc::new(random_bytes(96 * MIB, 99));
    let big_digest = Digest::sha256_of(&big);
    let loc = client.start_upload("crash/big").await;
    let sent = Arc::new(AtomicU64::new(0));
    let stream = {
        let (big, sent) = (big.clone(), sent.clone());
        futures::stream::unfold(0usize, move |offset| {
            let (big, sent) = (big.clone(), sent.clone());
            async move {
                if offset >= big.len() {
                    return None;
                }
                // Slow enough that the kill lands mid-body.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let end = (offset + 256 * 1024).min(big.len());
                sent.store(end as u64, Ordering::Relaxed);
                Some((Ok::<_, std::io::Error>(big[offset..end].to_vec()), end))
            }
        })
    };
    let patch = {
        let (http, loc) = (client.http.clone(), loc.clone());
        tokio::spawn(async move {
            http.patch(&loc)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < 40 * MIB as u64 {
        assert!(Instant::now() < deadline, "the upload never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    registry.kill9();
    let outcome = patch.await.unwrap();
    assert!(
        outcome.is_err() || !outcome.unwrap().status().is_success(),
        "the interrupted PATCH cannot succeed"
    );
    let sent_at_kill = sent.load(Ordering::Relaxed);
    assert!(sent_at_kill < big.len() as u64);

    // Restart on the same data directory.
    let _registry = start(dir.path(), &listen, "registry-2");
    wait_http_ok(&format!("{base}/v2/"), Duration::from_secs(20)).await;

    for (tag, manifest) in &before {
        assert_eq!(
            client.pull("crash/app", tag).await,
            *manifest,
            "{tag} after the crash"
        );
    }
    // No partial blob is ever served.
    assert_eq!(
        client.head_blob("crash/big", &big_digest).await,
        StatusCode::NOT_FOUND
    );
    let resp = client
        .http
        .get(format!("{base}/v2/crash/big/blobs/{big_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Resume: the session survived with the bytes that reached the disk.
    let resp = client.http.get(&loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let range = resp.headers()["range"].to_str().unwrap().to_string();
    let held: u64 = range.strip_prefix("0-").unwrap().parse::<u64>().unwrap() + 1;
    assert!(
        held <= sent_at_kill,
        "server claims {held} bytes, only {sent_at_kill} were sent"
    );
    eprintln!("killed after {sent_at_kill} bytes sent; {held} bytes survived");
    let rest = big[held as usize..].to_vec();
    let resp = client
        .http
        .patch(&loc)
        .header("content-range", format!("{held}-{}", big.len() - 1))
        .body(rest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Completed after the restart: the hasher state is gone, so the file is re-hashed.
    let resp = client
        .http
        .put(format!("{loc}?digest={big_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(
        client.head_blob("crash/big", &big_digest).await,
        StatusCode::OK
    );

    // Retry from scratch in another repository, as docker/skopeo do.
    let retried = client.push_blob("crash/retry", &big).await;
    assert_eq!(retried, big_digest);
    let config = b"{\"retry\":true}".to_vec();
    let config_digest = client.push_blob("crash/retry", &config).await;
    let manifest = client
        .push_manifest(
            "crash/retry",
            "v1",
            &config_digest,
            config.len(),
            &[(big_digest.clone(), big.len())],
        )
        .await;
    assert_eq!(client.pull("crash/retry", "v1").await, manifest);
}
