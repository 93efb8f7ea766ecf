//! Harness of the orchestrator process tests: a `pier dev` (with or without its built-in
//! agent) on free ports, extra `pier agent` processes, busybox httpd images pushed to the dev
//! server's registry, and CLI runs. Every container carries `pier.test=1` and a per-test
//! label, and is removed when the harness is dropped (also on panic).

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pier_testkit::dev::DevProcess;
use pier_testkit::docker::{ImageGuard, RunGuard};
use pier_testkit::images::{build_httpd_image, HttpdVariant};
use pier_testkit::process::PierProcess;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pier");

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub dev: PierProcess,
    pub http_port: u16,
    pub registry_port: u16,
    /// The gateway inside `pier dev`: `Host: <service>.localhost`.
    pub gateway_port: u16,
    /// The same gateway's HTTPS listener (certificates from the local CA).
    pub https_port: u16,
    /// Roots of the certificates `provide_cert` stored, trusted by `gateway_clients`.
    pub provided_roots: String,
    pub agents: Vec<PierProcess>,
    // Field order: containers go before images.
    pub guard: RunGuard,
    pub images: ImageGuard,
}

impl Cluster {
    /// `pier dev` on free ports; `builtin_agent` runs the in-process agent (zone "local"
    /// unless `extra` has `--zone`).
    pub async fn start(builtin_agent: bool, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let guard = RunGuard::new_run();
        let mut extra_args: Vec<&str> = extra.to_vec();
        if !builtin_agent {
            extra_args.push("--no-agent");
        }
        let DevProcess {
            process: dev,
            http_port,
            registry_port,
            gateway_port,
            https_port,
            ..
        } = DevProcess::start(BIN, dir.path(), &guard, &extra_args).await;
        Cluster {
            dir,
            dev,
            http_port,
            registry_port,
            gateway_port,
            https_port,
            provided_roots: String::new(),
            agents: Vec::new(),
            guard,
            images: ImageGuard::default(),
        }
    }

    /// `pier dev --no-agent` plus two `pier agent` processes, `node-a` in zone `a` (index 0 of
    /// `agents`) and `node-b` in zone `b` (index 1), both registered.
    pub async fn start_two_zones(extra: &[&str]) -> Cluster {
        let mut c = Cluster::start(false, extra).await;
        c.start_agent("node-a", "a");
        c.start_agent("node-b", "b");
        eventually("two nodes registered", Duration::from_secs(20), || async {
            c.get("/api/v1/nodes")
                .await
                .as_array()
                .is_some_and(|n| n.len() == 2)
        })
        .await;
        c
    }

    /// One client per gateway listener, HTTP then HTTPS (trusting `pier dev`'s local CA), so
    /// a test runs the same cases over both against one started server.
    pub fn gateway_clients(&self) -> Vec<GatewayClient> {
        let mut ca = std::fs::read(self.dir.path().join("data/tls/local-ca.pem"))
            .expect("pier dev wrote its local CA");
        ca.extend_from_slice(self.provided_roots.as_bytes());
        vec![
            GatewayClient::new(Listener::Http, self.gateway_port, None),
            GatewayClient::new(Listener::Https, self.https_port, Some(&ca)),
        ]
    }

    /// Stores (`pier cert add`) a certificate for `host` from a CA made here, which
    /// `gateway_clients` then trusts: for routes whose host the local CA does not cover.
    pub fn provide_cert(&mut self, host: &str) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test provided CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let cert_file = self.write_file(&format!("{host}.crt"), &leaf.pem());
        let key_file = self.write_file(&format!("{host}.key"), &key.serialize_pem());
        let out = self.pier(&[
            "cert", "add", host, "--cert", &cert_file, "--key", &key_file,
        ]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        self.provided_roots.push_str(&ca_cert.pem());
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn agent_args(&self, name: &str, zone: &str) -> Vec<String> {
        vec![
            "agent".into(),
            "--server".into(),
            self.addr(),
            "--name".into(),
            name.into(),
            "--zone".into(),
            zone.into(),
            // Images are pulled from `pier dev`'s registry directly; tests share the machine.
            "--registry-port".into(),
            "0".into(),
            "--container-label".into(),
            "pier.test=1".into(),
            "--container-label".into(),
            format!("{}={}", self.guard.label, self.guard.value),
            "--network".into(),
            self.guard.network_name(),
        ]
    }

    /// Starts a `pier agent` process; returns its index in `agents`.
    pub fn start_agent(&mut self, name: &str, zone: &str) -> usize {
        let args = self.agent_args(name, zone);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agents.push(PierProcess::spawn(
            BIN,
            &format!("agent-{name}"),
            &refs,
            self.dir.path(),
        ));
        self.agents.len() - 1
    }

    /// Builds a busybox httpd image, pushes it to this cluster's registry and removes the
    /// local tag, so agents really pull it. Returns the image reference.
    pub fn push_image(&mut self, name_tag: &str, variant: HttpdVariant) -> String {
        let image = format!("127.0.0.1:{}/{name_tag}", self.registry_port);
        build_httpd_image(&image, variant);
        self.images.also(&image);
        let out = Command::new("docker")
            .args(["push", &image])
            .output()
            .expect("docker push");
        assert!(
            out.status.success(),
            "docker push {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = Command::new("docker").args(["rmi", &image]).output();
        image
    }

    pub fn pier(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--addr")
            .arg(self.addr())
            .args(args)
            .output()
            .expect("run pier")
    }

    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    pub async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.addr()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Passing catalog instances of `service`: (task id, host port, revision tag).
    pub async fn passing(&self, service: &str) -> Vec<(String, u16, String)> {
        let v = self
            .get(&format!("/v1/health/service/{service}?passing"))
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let tags = e["Service"]["Tags"].as_array().cloned().unwrap_or_default();
                        let rev = tags
                            .iter()
                            .filter_map(|t| t.as_str())
                            .find(|t| t.starts_with("rev-"))
                            .unwrap_or("")
                            .to_string();
                        (
                            e["Service"]["ID"].as_str().unwrap_or("").to_string(),
                            e["Service"]["Port"].as_u64().unwrap_or(0) as u16,
                            rev,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn tasks(&self, service: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/services/{service}/tasks"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Tasks in display state `state`.
    pub async fn count_state(&self, service: &str, state: &str) -> usize {
        self.tasks(service)
            .await
            .iter()
            .filter(|t| t["display_state"] == state)
            .count()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

pub fn service_file(name: &str, image: &str, count: u32, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"{image}\"\ncount = {count}\nport = 8080\n\n[health]\nhttp = \"/healthz\"\ninterval = \"1s\"\n\n[deploy]\nmin_healthy_time = \"1s\"\ndrain_delay = \"500ms\"\n{extra}"
    )
}

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

pub async fn body_of(port: u16) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

/// A GET through the gateway of `pier dev` with `Host: host`: status and trimmed body.
pub async fn gateway_get(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((
        status,
        resp.text().await.unwrap_or_default().trim().to_string(),
    ))
}

/// Ids of this test's containers on `node` (running or not).
pub fn containers_of_node(c: &Cluster, node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &c.guard.filter(),
            "--filter",
            &format!("label=pier.node={node}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Which gateway listener a [`GatewayClient`] speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
}

/// Every name is the gateway on loopback: `<service>.localhost` needs no resolver, and SNI
/// carries the real host name over HTTPS.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}

/// A keep-alive client of one gateway listener (HTTP/1.1 over plain HTTP; HTTP/2 by ALPN
/// over HTTPS), requests addressed by host name.
#[derive(Clone)]
pub struct GatewayClient {
    pub listener: Listener,
    port: u16,
    ca_pem: Option<Vec<u8>>,
    http: reqwest::Client,
}

impl GatewayClient {
    /// `ca_pem`: the root to trust over HTTPS.
    pub fn new(listener: Listener, port: u16, ca_pem: Option<&[u8]>) -> GatewayClient {
        let mut b = reqwest::Client::builder()
            .dns_resolver(Loopback)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem).expect("PEM roots"));
        }
        GatewayClient {
            listener,
            port,
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            http: b.build().expect("a gateway client"),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root trusted over HTTPS.
    pub fn ca(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        let scheme = match self.listener {
            Listener::Http => "http",
            Listener::Https => "https",
        };
        format!("{scheme}://{host}:{}{path}", self.port)
    }

    /// GET `path` of `host`: (status, trimmed body), or the client error.
    pub async fn try_get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .http
            .get(self.url(host, path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("{:?}: {e:?}", self.listener))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("{:?} body: {e}", self.listener))?;
        Ok((status, body.trim().to_string()))
    }

    /// As `gateway_get`, over this client's listener.
    pub async fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        self.try_get(host, path).await.ok()
    }
}
