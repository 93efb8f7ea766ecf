//! Two hosts (issue 15): a secure `pier server` and two `pier agent`s, each agent on its own
//! "machine" — a network namespace with its own address and its own Docker engine
//! (`pier_testkit::netns_docker`) — joined with the agent join token over the namespaces'
//! network, as on two real machines. `api` runs only on host B and `web` only on host A;
//! from inside web's container (A's engine), `api.internal` and `api.service.consul` resolve
//! through A's node DNS, api's page comes back through A's node gateway, and the
//! `api.service.consul` address is host B's own address with a port that answers from A.
//!
//! ```text
//!  host 0 (10.x.y.1): pier server (secure: CA, join tokens, mTLS)
//!  host 1 (10.x.y.2): dockerd A + pier agent host-a   ── web
//!  host 2 (10.x.y.3): dockerd B + pier agent host-b   ── api × 2
//! ```
//!
//! The images go the way a user's do: built on the test machine, pushed with `docker login`
//! (a push-only API token) and `docker push` to the server's registry (TLS, the cluster CA in
//! `/etc/docker/certs.d`), deployed as `127.0.0.1:5000/...`, and pulled by each host's engine
//! through its agent's node-local registry endpoint.
//!
//! Busybox-static's wget crashes on DNS lookups, so names are resolved with `nslookup` and
//! fetched with `nc` and a `Host` header.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pier_testkit::docker::ImageGuard;
use pier_testkit::images::{build_httpd_image, HttpdVariant};
use pier_testkit::netns::Net;
use pier_testkit::netns_docker::NetnsDocker;
use pier_testkit::process::PierProcess;
use serde_json::Value;

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const HTTP_PORT: u16 = 8500;
const RAFT_PORT: u16 = 8300;
const REGISTRY_PORT: u16 = 5000;
const SERVER: usize = 0;
const HOST_A: usize = 1;
const HOST_B: usize = 2;

/// Field order is drop order: processes, then engines (their containers), the test
/// machine's images and CA trust, then the namespaces, then the files. When the test fails
/// (or `TWO_HOSTS_DEBUG` is set) the tails of the pier logs are printed first.
struct TwoHosts {
    agents: Vec<PierProcess>,
    _server: PierProcess,
    engines: Vec<NetnsDocker>,
    _images: Vec<ImageGuard>,
    _certs: CertsDir,
    net: Net,
    dir: tempfile::TempDir,
    ca_pem: String,
    management: String,
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TWO_HOSTS_DEBUG").is_some() {
            for name in ["server", "agent-host-a", "agent-host-b"] {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- last lines of {name}.log ---\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()))
        .trim()
        .to_string()
}

fn wait_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl TwoHosts {
    /// The server, both engines and both agents, registered.
    fn start() -> TwoHosts {
        let net = Net::new(3);
        let dir = tempfile::Builder::new()
            .prefix("pier-two-hosts-")
            .tempdir()
            .expect("temp dir");
        let server = start_server(&net, dir.path());
        // The engines start while the server makes its CA.
        let engines: Vec<NetnsDocker> = [HOST_A, HOST_B]
            .iter()
            .map(|&h| NetnsDocker::start(&net, h, dir.path()))
            .collect();
        let tls = dir.path().join("server/tls");
        wait_file(&tls.join("management.token"), Duration::from_secs(30));
        let ca_pem = read_trimmed(&tls.join("ca.crt"));
        let certs = CertsDir::trust(&format!("{}:{REGISTRY_PORT}", net.addr(SERVER)), &ca_pem);
        let mut c = TwoHosts {
            agents: Vec::new(),
            _server: server,
            engines,
            _images: Vec::new(),
            _certs: certs,
            net,
            ca_pem,
            management: read_trimmed(&tls.join("management.token")),
            dir,
        };
        let token = read_trimmed(&tls.join("agent.token"));
        c.agents.push(c.start_agent(HOST_A, "host-a", "a", &token));
        c.agents.push(c.start_agent(HOST_B, "host-b", "b", &token));
        c
    }

    /// Builds `repo:tag` as a busybox httpd image on the test machine's engine and pushes it
    /// to the server's registry as a user would (`docker login` with a push-only token, then
    /// `docker push`); returns the name services use for it: `127.0.0.1:5000/repo:tag`.
    fn push_image(&mut self, repo_tag: &str, variant: HttpdVariant) -> String {
        let registry = format!("{}:{REGISTRY_PORT}", self.net.addr(SERVER));
        let image = format!("{registry}/{repo_tag}");
        build_httpd_image(&image, variant);
        self._images.push(ImageGuard::new(&image));
        let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
        let out = self.cli(&[
            "acl",
            "token",
            "create",
            "--json",
            "--policy",
            &format!("registry:push:{repo}"),
        ]);
        assert!(out.status.success(), "token create: {}", stderr(&out));
        let token: Value = serde_json::from_slice(&out.stdout).expect("token json");
        let secret = token["secret"].as_str().expect("token secret");
        let config = self.dir.path().join("docker-config");
        let docker = |args: &[&str], input: Option<&str>| -> Output {
            use std::io::Write;
            let mut child = Command::new("docker")
                .env("DOCKER_CONFIG", &config)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run docker");
            let mut stdin = child.stdin.take().expect("docker's stdin");
            stdin
                .write_all(input.unwrap_or("").as_bytes())
                .expect("write docker's stdin");
            drop(stdin);
            child.wait_with_output().expect("wait for docker")
        };
        let login = docker(
            &["login", "--username", "ci", "--password-stdin", &registry],
            Some(secret),
        );
        assert!(login.status.success(), "docker login: {}", stderr(&login));
        let push = docker(&["push", &image], None);
        assert!(
            push.status.success(),
            "docker push {image}: {}",
            stderr(&push)
        );
        format!("127.0.0.1:5000/{repo_tag}")
    }

    fn server_url(&self) -> String {
        format!("https://{}:{HTTP_PORT}", self.net.addr(SERVER))
    }

    /// `pier agent` in `host`'s namespace on that host's own engine, publishing ports on the
    /// host's address, joined with the agent token.
    fn start_agent(&self, host: usize, name: &str, attr: &str, token: &str) -> PierProcess {
        let engine = &self.engines[host - 1];
        let data = self.dir.path().join(name);
        let secrets = self.dir.path().join(format!("{name}-secrets"));
        let (data, secrets) = (data.display().to_string(), secrets.display().to_string());
        let server = self.server_url();
        let attr = format!("host={attr}");
        let args = [
            "agent",
            "--server",
            &server,
            "--token",
            token,
            "--name",
            name,
            "--zone",
            name,
            "--attr",
            &attr,
            "--data-dir",
            &data,
            "--secrets-dir",
            &secrets,
            "--container-label",
            "pier.test=1",
        ];
        let docker_host = engine.host();
        let env = [("DOCKER_HOST", docker_host.as_str()), ("NO_COLOR", "1")];
        self.net.spawn_with_env(
            host,
            PIER,
            &format!("agent-{name}"),
            &args,
            &env,
            self.dir.path(),
        )
    }

    fn client(&self) -> reqwest::Client {
        let tls = pier_security::tls::client_config(&[&self.ca_pem], None).expect("tls config");
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {}", self.management).parse().unwrap(),
        );
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .default_headers(h)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("https client")
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .client()
            .get(format!("{}{path}", self.server_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("json body")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(PIER)
            .args(["--addr", &self.server_url()])
            .env("PIER_CACERT", self.dir.path().join("server/tls/ca.crt"))
            .env("PIER_TOKEN", &self.management)
            .args(args)
            .output()
            .expect("run the pier CLI")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a service file");
        path
    }

    /// Healthy tasks of `service`.
    async fn healthy(&self, service: &str) -> Vec<Value> {
        let tasks = self.get(&format!("/api/v1/services/{service}/tasks")).await;
        tasks
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["display_state"] == "healthy")
            .collect()
    }

    /// Runs `argv` in `container` on host A's engine: (success, stdout + stderr).
    fn exec_a(&self, container: &str, argv: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        let out = self.engines[HOST_A - 1].docker(&args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The addresses `nslookup name` printed inside `container` on host A.
    fn nslookup(&self, container: &str, name: &str) -> (Vec<String>, String) {
        let (_, out) = self.exec_a(container, &["/bin/busybox", "nslookup", name]);
        let mut after_name = false;
        let mut addrs = Vec::new();
        for line in out.lines() {
            if line.starts_with("Name:") {
                after_name = true;
            } else if after_name {
                if let Some(a) = line.strip_prefix("Address:") {
                    addrs.push(a.trim().to_string());
                }
            }
        }
        (addrs, out)
    }

    /// `GET /` with `Host: host` sent to `ip:port` from inside `container` on host A.
    fn http_get(&self, container: &str, ip: &str, port: u16, host: &str) -> String {
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | /bin/busybox nc -w 3 {ip} {port}"
        );
        self.exec_a(container, &["/bin/busybox", "sh", "-c", &script])
            .1
    }
}

/// The cluster CA trusted by the machine's Docker engine for one registry address
/// (`/etc/docker/certs.d/HOST:PORT/ca.crt`), removed again when dropped. A directory of a
/// run killed before that (marked by [`CERTS_MARKER`]) is removed by the next run once its
/// net's hub namespace is gone.
struct CertsDir(PathBuf);

const CERTS_DIR: &str = "/etc/docker/certs.d";
const CERTS_MARKER: &str = "pier-two-hosts-test";

impl CertsDir {
    fn trust(registry: &str, ca_pem: &str) -> CertsDir {
        CertsDir::remove_stale();
        let dir = Path::new(CERTS_DIR).join(registry);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        std::fs::write(dir.join(CERTS_MARKER), "").expect("write the marker");
        std::fs::write(dir.join("ca.crt"), format!("{ca_pem}\n")).expect("write ca.crt");
        CertsDir(dir)
    }

    fn remove_stale() {
        let Ok(entries) = std::fs::read_dir(CERTS_DIR) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ip) = name.strip_suffix(&format!(":{REGISTRY_PORT}")) else {
                continue;
            };
            let octets: Vec<&str> = ip.split('.').collect();
            let hub = format!(
                "/run/netns/{}{}-hub",
                pier_testkit::netns::NS_PREFIX,
                octets[..octets.len().min(3)].join("-")
            );
            if e.path().join(CERTS_MARKER).exists() && !Path::new(&hub).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Drop for CertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_server(net: &Net, dir: &Path) -> PierProcess {
    let addr = net.addr(SERVER).to_string();
    let data = dir.join("server").display().to_string();
    let (http, raft) = (HTTP_PORT.to_string(), RAFT_PORT.to_string());
    let registry = REGISTRY_PORT.to_string();
    let args = [
        "server",
        "--data-dir",
        &data,
        "--node-name",
        "s1",
        "--bind",
        &addr,
        "--http-port",
        &http,
        "--raft-port",
        &raft,
        "--registry-port",
        &registry,
    ];
    net.spawn_with_env(SERVER, PIER, "server", &args, &[("NO_COLOR", "1")], dir)
}

fn service(name: &str, image: &str, count: u32, host: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"{image}\"\ncount = {count}\nport = 8080\n{extra}\n\
         [health]\nhttp = \"/healthz\"\ninterval = \"1s\"\n\n\
         [deploy]\nmin_healthy_time = \"500ms\"\ndrain_delay = \"500ms\"\n\n\
         [placement]\nconstraints = [\"attr.host == {host}\"]\n"
    )
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_on_host_a_reaches_api_on_host_b_by_name() {
    let started = Instant::now();
    let mut c = TwoHosts::start();
    let run = format!("{:08x}", rand::random::<u32>());
    // api prints a line every second: its logs come from host B's agent through the server.
    let api_image = c.push_image(&format!("two-hosts-{run}/api:v1"), HttpdVariant::Ticking);
    let web_image = c.push_image(&format!("two-hosts-{run}/web:v1"), HttpdVariant::Healthy);
    let (addr_a, addr_b) = (
        c.net.addr(HOST_A).to_string(),
        c.net.addr(HOST_B).to_string(),
    );

    eventually(
        "both agents registered",
        Duration::from_secs(30),
        || async {
            c.get("/api/v1/nodes")
                .await
                .as_array()
                .is_some_and(|n| n.len() == 2)
        },
    )
    .await;

    let api = c.write("api.toml", &service("api", &api_image, 2, "b", ""));
    let out = c.cli(&["deploy", &api.display().to_string()]);
    assert!(out.status.success(), "deploy api: {}", stderr(&out));
    let web = c.write(
        "web.toml",
        &service("web", &web_image, 1, "a", "needs = [\"api\"]"),
    );
    let out = c.cli(&["deploy", &web.display().to_string()]);
    assert!(out.status.success(), "deploy web: {}", stderr(&out));

    // Placement as pinned: api's tasks on host B publishing on B's address, web on A.
    let api_tasks = c.healthy("api").await;
    assert_eq!(api_tasks.len(), 2, "{api_tasks:?}");
    let mut api_ports: Vec<u16> = Vec::new();
    for t in &api_tasks {
        assert_eq!(t["task"]["node"], "host-b", "{t}");
        assert_eq!(t["status"]["host_ip"], addr_b.as_str(), "{t}");
        let port = t["status"]["host_ports"]["8080"]
            .as_u64()
            .unwrap_or_else(|| panic!("no published port: {t}"));
        api_ports.push(port as u16);
    }
    api_ports.sort_unstable();
    let web_tasks = c.healthy("web").await;
    assert_eq!(web_tasks.len(), 1, "{web_tasks:?}");
    assert_eq!(web_tasks[0]["task"]["node"], "host-a");
    let web = web_tasks[0]["status"]["container_id"]
        .as_str()
        .expect("web's container id")
        .to_string();

    // Host A's node DNS answers inside web's container (its resolver is A's bridge address).
    let (_, env) = c.exec_a(&web, &["/bin/busybox", "env"]);
    let bridge = env
        .lines()
        .find_map(|l| l.strip_prefix("PIER_DNS="))
        .unwrap_or_else(|| panic!("PIER_DNS missing: {env}"))
        .to_string();
    assert!(
        env.lines().any(|l| l == "API_URL=http://api.internal"),
        "{env}"
    );
    let (internal, out) = c.nslookup(&web, "api.internal");
    assert_eq!(internal, vec![bridge.clone()], "api.internal: {out}");

    // api.service.consul: host B's own address, the published ports, reachable from A.
    let (consul, out) = c.nslookup(&web, "api.service.consul");
    assert!(!consul.is_empty(), "api.service.consul: {out}");
    assert!(
        consul.iter().all(|a| *a == addr_b),
        "api.service.consul must be host B's address {addr_b} (not loopback, not a \
         Docker-internal address of B): {out}"
    );
    let (_, srv) = c.exec_a(
        &web,
        &[
            "/bin/busybox",
            "nslookup",
            "-type=SRV",
            "api.service.consul",
        ],
    );
    for port in &api_ports {
        assert!(srv.contains(&format!(" {port} ")), "SRV port {port}: {srv}");
        let page = c.http_get(&web, &addr_b, *port, "api");
        assert!(
            page.contains("/api:v1"),
            "api at {addr_b}:{port} from A: {page}"
        );
    }

    // http://api.internal/ through A's node gateway reaches api on B.
    for _ in 0..4 {
        let page = c.http_get(&web, &bridge, 80, "api.internal");
        assert!(
            page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
            "{page}"
        );
        assert!(
            page.contains("/api:v1"),
            "api's page via api.internal: {page}"
        );
    }
    assert_ne!(addr_a, addr_b);

    // Each engine pulled (through its agent's 127.0.0.1:5000, by the digest the deploy
    // pinned, so untagged) only what runs on its host.
    let has = |engine: &NetnsDocker, image: &str| {
        let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
        let out = engine.docker(&["images", "-q", repo]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    let (a, b) = (&c.engines[HOST_A - 1], &c.engines[HOST_B - 1]);
    assert!(has(b, &api_image) && !has(b, &web_image), "host B's images");
    assert!(has(a, &web_image) && !has(a, &api_image), "host A's images");

    // `pier logs` reaches host B's agent from the server (its listener is on B's address).
    let logs = c.cli(&["logs", "api"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.status.success() && text.contains("tick"),
        "pier logs api: {text}{}",
        stderr(&logs)
    );
    eprintln!("two hosts: passed in {:?}", started.elapsed());
}
