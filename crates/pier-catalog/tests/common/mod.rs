//! Test servers: a real `Store` (openraft + redb on real TCP), the catalog, the agent of the
//! server's own node, the node monitor, the HTTP API on a free loopback port and DNS on a free
//! UDP+TCP port. Each server has its own runtime so a test can kill it abruptly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pier_catalog::{Agent, AgentConfig, Catalog, CatalogConfig, DnsConfig, DnsServer, NodeMonitor};
use pier_store::{Store, StoreConfig};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

#[derive(Default)]
pub struct Options {
    pub catalog: CatalogConfig,
    pub dns: DnsConfig,
    pub enable_script_checks: bool,
    /// Networks the agent's checks may reach (None: the library default).
    pub check_allow: Option<pier_catalog::CheckAllow>,
}

pub struct TestServer {
    pub name: String,
    pub http_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub catalog: Option<Catalog>,
    pub agent: Option<Agent>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub async fn start(
        name: &str,
        dir: &Path,
        expect: usize,
        join: Vec<String>,
        opts: Options,
    ) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let name_owned = name.to_string();
        let dir = dir.to_path_buf();
        let (catalog, agent, http_addr, dns_addr, raft_addr) = rt
            .spawn(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let http_addr = listener.local_addr().unwrap();
                let cfg = StoreConfig {
                    node_name: name_owned.clone(),
                    data_dir: dir,
                    raft_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    raft_advertise: None,
                    http_advertise: http_addr.to_string(),
                    bootstrap_expect: expect,
                    join,
                    heartbeat_interval_ms: 100,
                    election_timeout_min_ms: 400,
                    election_timeout_max_ms: 800,
                    snapshot_every_logs: 10_000,
                    tls: None,
                    extra_routes: None,
                };
                let store = Store::open(cfg).await.unwrap();
                let raft_addr = store.raft_addr();
                let catalog = Catalog::new(store, opts.catalog);
                let mut agent_cfg = AgentConfig::new(name_owned.clone(), "127.0.0.1");
                agent_cfg.heartbeat_interval_ms = 300;
                agent_cfg.checks.enable_script_checks = opts.enable_script_checks;
                if let Some(allow) = opts.check_allow {
                    agent_cfg.checks.check_allow = allow;
                }
                let agent = Agent::start(catalog.clone(), agent_cfg);
                let monitor = NodeMonitor::start(catalog.clone());
                std::mem::forget(monitor);
                let app = pier_catalog::router(catalog.clone(), agent.clone());
                tokio::spawn(async move {
                    axum::serve(listener, app).await.unwrap();
                });
                let dns = DnsServer::bind(
                    catalog.clone(),
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    opts.dns,
                )
                .await
                .unwrap();
                let dns_addr = dns.local_addr().unwrap();
                tokio::spawn(dns.run(std::future::pending()));
                (catalog, agent, http_addr, dns_addr, raft_addr)
            })
            .await
            .unwrap();
        TestServer {
            name: name.to_string(),
            http_addr,
            dns_addr,
            raft_addr,
            catalog: Some(catalog),
            agent: Some(agent),
            rt: Some(rt),
        }
    }

    /// One server, leader of itself, with its agent's node registered.
    pub async fn single(dir: &Path, opts: Options) -> TestServer {
        let s = TestServer::start("server1", dir, 1, vec![], opts).await;
        s.catalog()
            .store()
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap();
        s.wait_node_registered(Duration::from_secs(10)).await;
        s
    }

    pub fn catalog(&self) -> &Catalog {
        self.catalog.as_ref().expect("server is down")
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("server is down")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub fn is_up(&self) -> bool {
        self.rt.is_some()
    }

    /// Runs a future on this server's runtime (catalog calls spawn tasks there).
    pub async fn on<F, T>(&self, f: F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.rt
            .as_ref()
            .expect("server is down")
            .spawn(f)
            .await
            .unwrap()
    }

    pub async fn wait_node_registered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            let r = client
                .get(self.url(&format!("/v1/catalog/node/{}", self.name)))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() && r.text().await.unwrap_or_default() != "null" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} never registered",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Abrupt stop: every task is dropped mid-flight, nothing is flushed, sockets close.
    pub fn kill(&mut self) {
        self.catalog = None;
        self.agent = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny HTTP server answering every request with the status in `status` (changeable).
pub struct StatusServer {
    pub addr: SocketAddr,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    pub async fn start(status: u16) -> StatusServer {
        use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let code = Arc::new(AtomicU16::new(status));
        let hits = Arc::new(AtomicU64::new(0));
        let (c, h) = (code.clone(), hits.clone());
        let app = axum::Router::new().fallback(move || {
            let c = c.clone();
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::Relaxed);
                let code = axum::http::StatusCode::from_u16(c.load(Ordering::Relaxed)).unwrap();
                (code, "status server")
            }
        });
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StatusServer {
            addr,
            status: code,
            hits,
            handle,
        }
    }

    pub fn set(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// GET `url` and decode its JSON body; `None` when the request or the decoding fails, so a
/// poll inside `eventually` simply tries again.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: String,
) -> Option<T> {
    c.get(url).send().await.ok()?.json().await.ok()
}

/// Kills a child process (a scraper under test) when the test ends, also on failure.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Registers instances of `web` on 127.0.0.1 with passing TTL checks: what the Consul-SD
/// scraper tests discover.
pub async fn register_web(c: &reqwest::Client, s: &TestServer, instances: &[(&str, u16)]) {
    for (id, port) in instances {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(
                &serde_json::json!({"ID": id, "Name": "web", "Address": "127.0.0.1",
                "Port": port, "Tags": ["metrics"], "Check": {"TTL": "1h", "Status": "passing"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Deregisters instance `id` through the agent API, expecting 200.
pub async fn deregister(c: &reqwest::Client, s: &TestServer, id: &str) {
    let r = c
        .put(s.url(&format!("/v1/agent/service/deregister/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A Prometheus-compatible scraper under test (killed when dropped) at `base`.
pub struct Scraper {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    _process: KillOnDrop,
}

impl Scraper {
    /// Writes the `consul_sd_scrape_config` for the catalog of `s` (with `sd_extra`) to
    /// `config`, runs `cmd` (which reads `config` and listens on 127.0.0.1:`port`; it comes from
    /// the Debian package `package`) and waits until `ready_path` answers 200.
    pub async fn start(
        s: &TestServer,
        config: &Path,
        sd_extra: &str,
        mut cmd: std::process::Command,
        package: &str,
        port: u16,
        ready_path: &str,
    ) -> Scraper {
        std::fs::write(
            config,
            consul_sd_scrape_config(s.http_addr.port(), sd_extra),
        )
        .unwrap();
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is required (apt-get install {package}): {e}",
                    cmd.get_program().to_string_lossy()
                )
            });
        let process = KillOnDrop(child);
        let base = format!("http://127.0.0.1:{port}");
        pier_testkit::process::wait_http_ok(
            &format!("{base}{ready_path}"),
            Duration::from_secs(30),
        )
        .await;
        Scraper {
            base,
            _process: process,
        }
    }
}

/// A Prometheus scrape configuration: job `pier-consul-sd` discovering `web` through the
/// Consul API on `catalog_port`; `sd_extra` adds lines to the `consul_sd_configs` entry.
pub fn consul_sd_scrape_config(catalog_port: u16, sd_extra: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pier-consul-sd\n    \
         consul_sd_configs:\n      - server: '127.0.0.1:{catalog_port}'\n        \
         services: ['web']\n{sd_extra}"
    )
}

/// Active targets of job `pier-consul-sd` in a Prometheus-style `/api/v1/targets` answer at
/// `base`: (discovered address, health), sorted.
pub async fn consul_sd_targets(c: &reqwest::Client, base: &str) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = get_json(c, format!("{base}/api/v1/targets")).await?;
    let mut out: Vec<(String, String)> = v["data"]["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == "pier-consul-sd")
        .map(|t| {
            (
                t["discoveredLabels"]["__address__"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                t["health"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    Some(out)
}
