//! Shared helpers: an in-process registry on a real 127.0.0.1 port and a
//! small OCI client built on reqwest.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pier_registry::digest::{Algorithm, Digest};
use pier_registry::{Registry, RegistryConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct TestRegistry {
    pub addr: SocketAddr,
    pub base: String,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut RegistryConfig)) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RegistryConfig::new(dir.path().join("data"));
        cfg.gc_interval = None;
        tweak(&mut cfg);
        let registry = Registry::open(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let r = registry.clone();
        let task = tokio::spawn(async move {
            r.serve_on(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestRegistry {
            addr,
            base: format!("http://{addr}"),
            registry,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Location headers are relative; make them absolute.
    pub fn abs(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Monolithic POST-then-PUT upload.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let resp = self
            .http
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "{}",
            resp.text().await.unwrap()
        );
        let loc = self.abs(resp.headers()["location"].to_str().unwrap());
        let resp = self
            .http
            .put(format!("{loc}?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
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

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes config + layers + an OCI image manifest under `tag`; returns
    /// the manifest bytes and digest.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> (Vec<u8>, Digest) {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"tag\":\"{tag}\"}}")
            .into_bytes();
        let config_digest = self.push_blob(repo, &config).await;
        let mut descs = Vec::new();
        for layer in layers {
            let d = self.push_blob(repo, layer).await;
            descs.push(json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d.to_string(),"size":layer.len()}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":config_digest.to_string(),"size":config.len()},
            "layers": descs,
        });
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        let digest = Digest::sha256_of(&bytes);
        (bytes, digest)
    }

    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> StatusCode {
        self.http
            .head(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .get(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// Pulls a manifest and every blob it references, verifying digests.
    pub async fn pull_image(&self, repo: &str, reference: &str) -> Result<Digest, String> {
        let resp = self
            .http
            .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("manifest {repo}:{reference}: {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let mut digests = vec![manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string()];
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            digests.push(l["digest"].as_str().unwrap_or_default().to_string());
        }
        for d in digests {
            let digest = Digest::parse(&d).map_err(|e| e.to_string())?;
            let (status, body) = self.get_blob(repo, &digest).await;
            if status != StatusCode::OK {
                return Err(format!("blob {d} of {repo}:{reference}: {status}"));
            }
            if Digest::of(digest.algorithm(), &body) != digest {
                return Err(format!("blob {d} of {repo}:{reference}: wrong bytes"));
            }
        }
        Ok(Digest::sha256_of(&bytes))
    }

    /// Sends raw request bytes (for paths reqwest would normalise) and
    /// returns the status code and the response text.
    pub async fn raw(&self, request_line_path: &str, method: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!("{method} {request_line_path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", self.addr);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    pub fn blob_file(&self, digest: &Digest) -> std::path::PathBuf {
        self.dir
            .path()
            .join("data/blobs")
            .join(digest.algorithm().as_str())
            .join(&digest.hex()[..2])
            .join(digest.hex())
    }
}

pub fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn sha512(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha512, bytes)
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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
