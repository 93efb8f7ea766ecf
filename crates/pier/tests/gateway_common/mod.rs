//! A real `pier dev --no-agent` on free ports, services registered through its Consul API,
//! and small in-process HTTP backends, for the gateway's process tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use pier_testkit::process::PierProcess;

pub const PIER: &str = env!("CARGO_BIN_EXE_pier");

pub struct Dev {
    pub process: PierProcess,
    pub http_port: u16,
    pub gateway_port: u16,
    pub https_port: u16,
}

impl Dev {
    /// `pier dev --no-agent` with its data in `dir/data` and its log in `dir/<name>.log`.
    pub async fn start(dir: &Path, name: &str, extra: &[&str]) -> Dev {
        Dev::start_on(dir, name, free_port(), free_port(), extra).await
    }

    /// As `start`, with the gateway's HTTP and HTTPS ports chosen by the caller.
    pub async fn start_on(
        dir: &Path,
        name: &str,
        gateway_port: u16,
        https_port: u16,
        extra: &[&str],
    ) -> Dev {
        let http_port = free_port();
        let mut args: Vec<String> = vec![
            "dev".into(),
            "--no-agent".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--http-port".into(),
            http_port.to_string(),
            "--raft-port".into(),
            free_port().to_string(),
            "--registry-port".into(),
            free_port().to_string(),
            "--gateway-port".into(),
            gateway_port.to_string(),
            "--https-port".into(),
            https_port.to_string(),
            "--dns-port".into(),
            free_port().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args = args.iter().map(String::as_str).collect::<Vec<_>>();
        let mut process = PierProcess::spawn(PIER, name, &args, dir);
        process
            .wait_http_ok(
                &format!("http://127.0.0.1:{http_port}/api/v1/status"),
                Duration::from_secs(30),
            )
            .await;
        Dev {
            process,
            http_port,
            gateway_port,
            https_port,
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Registers `id` of service `name` at `backend` with a passing TTL check and `tags`.
    pub async fn register(&self, id: &str, name: &str, backend: SocketAddr, tags: &[&str]) {
        let http = reqwest::Client::new();
        let reg = serde_json::json!({
            "ID": id, "Name": name, "Address": backend.ip().to_string(), "Port": backend.port(),
            "Tags": tags, "Check": {"CheckID": format!("{id}-ttl"), "TTL": "600s"}
        });
        let r = http
            .put(format!("{}/v1/agent/service/register", self.addr()))
            .json(&reg)
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let r = http
            .put(format!("{}/v1/agent/check/pass/{id}-ttl", self.addr()))
            .send()
            .await
            .expect("pass");
        assert_eq!(r.status(), 200);
    }

    /// `pier --addr <this dev> ARGS`.
    pub fn pier(&self, args: &[&str]) -> Output {
        Command::new(PIER)
            .args(["--addr", &self.addr()])
            .args(args)
            .output()
            .expect("run pier")
    }
}

/// A backend answering every request with `name`, on a free port.
pub async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Polls `check` every 20 ms until it holds, or panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `curl ARGS`, returning (exit success, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP GET through the gateway on `port` for `host`: the status and body (redirects are
/// not followed).
pub async fn gateway_get(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}
