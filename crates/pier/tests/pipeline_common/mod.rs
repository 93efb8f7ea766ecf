//! Harness of the pipeline process tests: `pier dev` on free ports (its containers carry
//! `pier.test=1` and a per-run label and are removed on drop, also on panic), git
//! repositories made with the git CLI, CLI runs, and what the service serves.
//!
//! "Served" means: what the gateway of that `pier dev` answers for `<service>.localhost`.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pier_testkit::dev::DevProcess;
use pier_testkit::docker::RunGuard;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pier");

pub struct Dev {
    pub dir: tempfile::TempDir,
    /// The server and its ports.
    pub dev: DevProcess,
    pub http: reqwest::Client,
    // Containers before images.
    pub guard: RunGuard,
    pub images: RegistryImages,
}

/// Removes every local image tagged under the dev registry when dropped.
pub struct RegistryImages(pub String);

impl Drop for RegistryImages {
    fn drop(&mut self) {
        let Ok(out) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        else {
            return;
        };
        let refs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&self.0))
            .map(str::to_string)
            .collect();
        if !refs.is_empty() {
            let _ = Command::new("docker")
                .arg("rmi")
                .arg("-f")
                .args(&refs)
                .output();
        }
    }
}

impl Dev {
    pub async fn start(extra: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let guard = RunGuard::new_run();
        let server = DevProcess::start(BIN, dir.path(), &guard, extra).await;
        let registry_port = server.registry_port;
        Dev {
            dir,
            dev: server,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            guard,
            images: RegistryImages(format!("127.0.0.1:{registry_port}/")),
        }
    }

    /// `kill -9` of the server, then a start on the same data dir and ports.
    pub async fn kill9_and_restart(&mut self) {
        self.dev
            .restart(BIN, "dev-restarted", self.dir.path())
            .await;
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.dev.http_port)
    }

    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.dev.registry_port)
    }

    /// Runs the CLI against this server.
    pub fn pier(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PIER_ADDR", self.addr())
            .output()
            .unwrap()
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn pier_ok(&self, args: &[&str]) -> String {
        let out = self.pier(args);
        assert!(
            out.status.success(),
            "pier {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn runs(&self, pipeline: &str) -> Vec<Value> {
        let out = self.pier_ok(&["pipeline", "runs", pipeline, "--json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until run `number` of `pipeline` is finished; returns it.
    pub async fn wait_run(&self, pipeline: &str, number: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("{}/api/v1/pipelines/{pipeline}/runs/{number}", self.addr());
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status().is_success() {
                    let run: Value = resp.json().await.unwrap();
                    let state = run["status"]["state"].as_str().unwrap_or("").to_string();
                    if !["queued", "building", "pushing", "deploying"].contains(&state.as_str()) {
                        return run;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {pipeline}/{number} did not finish in {timeout:?}: {:?}",
                self.runs(pipeline)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a run numbered `number` exists.
    pub async fn wait_run_exists(&self, pipeline: &str, number: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("{}/api/v1/pipelines/{pipeline}/runs/{number}", self.addr());
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "run {pipeline}/{number} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn log(&self, pipeline: &str, number: u64) -> String {
        let url = format!(
            "{}/api/v1/pipelines/{pipeline}/runs/{number}/logs",
            self.addr()
        );
        self.http
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `(request, body)` of several requests for `service` through the gateway, enough to reach
    /// every replica of the tests' services; an error or a non-2xx answer is its own body.
    pub async fn served(&self, service: &str, path: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in 0..6 {
            let resp = self
                .http
                .get(format!("http://127.0.0.1:{}{path}", self.dev.gateway_port))
                .header("Host", format!("{service}.localhost"))
                .send()
                .await;
            let body = match resp {
                Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => format!("error: {e}"),
            };
            out.push((format!("gateway request {i}"), body));
        }
        out
    }

    /// Waits until every request through the gateway is answered with `want`.
    pub async fn wait_served(&self, service: &str, want: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let served = self.served(service, "/index.html").await;
            if !served.is_empty() && served.iter().all(|(_, b)| b == want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{service} does not serve {want:?} after {timeout:?}: {served:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn registry_tags(&self, name: &str) -> Vec<String> {
        let url = format!("http://{}/v2/{name}/tags/list", self.registry());
        let resp = self.http.get(&url).send().await.unwrap();
        if resp.status() == 404 {
            return Vec::new();
        }
        let v: Value = resp.json().await.unwrap();
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}
