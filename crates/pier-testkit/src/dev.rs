//! A `pier dev` for process tests: every port free (so tests run in parallel and beside a
//! running `pier dev`), containers labelled `pier.test=1` plus the test's run label, and
//! started only once its API answers.

use std::path::Path;
use std::time::Duration;

use crate::docker::RunGuard;
use crate::net::free_port;
use crate::process::PierProcess;

pub struct DevProcess {
    pub process: PierProcess,
    pub http_port: u16,
    pub registry_port: u16,
    /// The gateway inside `pier dev`: `Host: <service>.localhost`.
    pub gateway_port: u16,
    /// Its HTTPS listener: `*.localhost` with certificates from its local CA
    /// (`data/tls/local-ca.pem` in its directory).
    pub https_port: u16,
    /// What it was started with: a restart reuses the same data dir and ports.
    pub args: Vec<String>,
}

impl DevProcess {
    /// `bin dev` with its data in `dir/data` and its log in `dir/dev.log`; `extra` is appended
    /// to the arguments (e.g. `--no-agent`, `--zone a`).
    pub async fn start(bin: &str, dir: &Path, guard: &RunGuard, extra: &[&str]) -> Self {
        crate::docker::docker_available();
        let http_port = free_port();
        let registry_port = free_port();
        let gateway_port = free_port();
        let https_port = free_port();
        let mut args: Vec<String> = vec![
            "dev".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--http-port".into(),
            http_port.to_string(),
            "--raft-port".into(),
            free_port().to_string(),
            "--registry-port".into(),
            registry_port.to_string(),
            "--gateway-port".into(),
            gateway_port.to_string(),
            // `pier dev` serves HTTPS on 8443 unless told otherwise.
            "--https-port".into(),
            https_port.to_string(),
            "--dns-port".into(),
            free_port().to_string(),
            "--container-label".into(),
            "pier.test=1".into(),
            "--container-label".into(),
            format!("{}={}", guard.label, guard.value),
            "--network".into(),
            guard.network_name(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = spawn_and_wait(bin, "dev", &args, dir, http_port).await;
        DevProcess {
            process,
            http_port,
            registry_port,
            gateway_port,
            https_port,
            args,
        }
    }

    /// Starts the same server again (after it was killed), logging to `dir/<name>.log`.
    pub async fn restart(&mut self, bin: &str, name: &str, dir: &Path) {
        self.process.kill9();
        self.process = spawn_and_wait(bin, name, &self.args, dir, self.http_port).await;
    }
}

async fn spawn_and_wait(
    bin: &str,
    name: &str,
    args: &[String],
    dir: &Path,
    http_port: u16,
) -> PierProcess {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = PierProcess::spawn(bin, name, &refs, dir);
    process
        .wait_http_ok(
            &format!("http://127.0.0.1:{http_port}/api/v1/status"),
            Duration::from_secs(30),
        )
        .await;
    process
}
