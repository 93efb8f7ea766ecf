//! A secure cluster of real `pier server` processes on loopback: the first server makes the CA
//! and prints its tokens into its data directory; the others join with the server token.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use pier_testkit::process::PierProcess;
use serde_json::Value;

pub const PIER: &str = env!("CARGO_BIN_EXE_pier");

pub struct SecureServer {
    pub name: String,
    pub http: u16,
    pub raft: u16,
    pub dir: PathBuf,
    pub proc: Option<PierProcess>,
}

impl SecureServer {
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.http)
    }

    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft)
    }
}

pub struct SecureCluster {
    pub root: PathBuf,
    pub servers: Vec<SecureServer>,
}

fn tls_file(dir: &Path, name: &str) -> String {
    let p = dir.join("tls").join(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{} not written: {e}", p.display()))
        .trim()
        .to_string()
}

/// Waits until `path` exists (a server writes its tokens and certificates at first start).
pub async fn wait_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl SecureCluster {
    /// `n` servers: the first alone, the others with `--join` and its server token.
    pub async fn start(root: &Path, n: usize, extra: &[&str]) -> SecureCluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        SecureCluster::start_each(root, n, |_| extra.clone()).await
    }

    /// [`SecureCluster::start`] with the extra arguments of server `i` from `extra(i)`.
    pub async fn start_each(
        root: &Path,
        n: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> SecureCluster {
        let mut c = SecureCluster {
            root: root.to_path_buf(),
            servers: Vec::new(),
        };
        for i in 0..n {
            c.servers.push(SecureServer {
                name: format!("s{}", i + 1),
                http: free_port(),
                raft: free_port(),
                dir: root.join(format!("s{}", i + 1)),
                proc: None,
            });
        }
        let args = |i: usize| extra(i);
        let first = args(0);
        c.spawn(
            0,
            None,
            &first.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        wait_file(
            &c.servers[0].dir.join("tls/management.token"),
            Duration::from_secs(30),
        )
        .await;
        let token = c.server_token();
        for i in 1..n {
            let more = args(i);
            c.spawn(
                i,
                Some(&token),
                &more.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        c.wait_voters(n, Duration::from_secs(60)).await;
        c
    }

    pub fn spawn(&mut self, i: usize, token: Option<&str>, extra: &[&str]) {
        let join = if i == 0 {
            Vec::new()
        } else {
            vec!["--join".to_string(), self.servers[0].raft_addr()]
        };
        let s = &mut self.servers[i];
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            s.dir.to_string_lossy().into_owned(),
            "--node-name".into(),
            s.name.clone(),
            "--http-port".into(),
            s.http.to_string(),
            "--raft-port".into(),
            s.raft.to_string(),
        ];
        args.extend(join);
        if let Some(t) = token {
            args.extend(["--token".to_string(), t.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.proc = Some(PierProcess::spawn(PIER, &s.name, &args, &self.root));
    }

    pub fn first_dir(&self) -> &Path {
        &self.servers[0].dir
    }

    pub fn ca_path(&self) -> PathBuf {
        self.first_dir().join("tls/ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        tls_file(self.first_dir(), "ca.crt")
    }

    pub fn server_token(&self) -> String {
        tls_file(self.first_dir(), "server.token")
    }

    pub fn agent_token(&self) -> String {
        tls_file(self.first_dir(), "agent.token")
    }

    pub fn management_token(&self) -> String {
        tls_file(self.first_dir(), "management.token")
    }

    /// An HTTPS client trusting the cluster CA, sending `token` if given.
    pub fn client(&self, token: Option<&str>) -> reqwest::Client {
        let tls = pier_security::tls::client_config(&[&self.ca_pem()], None).unwrap();
        let mut b = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(15));
        if let Some(t) = token {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
            b = b.default_headers(h);
        }
        b.build().unwrap()
    }

    /// A client presenting the certificate in `dir/tls` (an agent's).
    pub fn node_client(&self, dir: &Path) -> reqwest::Client {
        let tls = pier_security::tls::client_config(
            &[&self.ca_pem()],
            Some((&tls_file(dir, "node.crt"), &tls_file(dir, "node.key"))),
        )
        .unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
    }

    pub async fn wait_voters(&self, n: usize, timeout: Duration) {
        let c = self.client(Some(&self.management_token()));
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for s in self.servers.iter().filter(|s| s.proc.is_some()) {
                let st: Option<Value> =
                    match c.get(format!("{}/api/v1/status", s.base())).send().await {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                let voters = st
                    .as_ref()
                    .and_then(|v| {
                        v["members"]
                            .as_array()
                            .map(|m| m.iter().filter(|x| x["voter"] == true).count())
                    })
                    .unwrap_or(0);
                let leader = st.as_ref().is_some_and(|v| !v["leader"].is_null());
                ok &= voters == n && leader;
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "secure cluster of {n} never formed (see {})",
                self.root.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A new API token with `policies`, made with the management token through the CLI:
    /// (secret, accessor).
    pub fn create_token(&self, policies: &[&str]) -> (String, String) {
        let mut args = vec!["acl", "token", "create", "--json"];
        for p in policies {
            args.extend(["--policy", p]);
        }
        let out = self.cli(0, Some(&self.management_token()), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["secret"].as_str().unwrap().to_string(),
            v["accessor"].as_str().unwrap().to_string(),
        )
    }

    /// Starts `pier agent` as node `name` (zone a, no pier network) joined with the agent token,
    /// its data in `dir`, its listener on a free port; `registry_port` for its node-local
    /// registry endpoint (None: off). The guard removes whatever containers it starts.
    pub fn spawn_agent(
        &self,
        name: &str,
        dir: &Path,
        registry_port: Option<u16>,
    ) -> (PierProcess, pier_testkit::docker::RunGuard) {
        self.spawn_agent_with(name, dir, registry_port, free_port(), &self.agent_token())
    }

    /// [`SecureCluster::spawn_agent`] with its listener on `listen_port`, joined with `token`.
    pub fn spawn_agent_with(
        &self,
        name: &str,
        dir: &Path,
        registry_port: Option<u16>,
        listen_port: u16,
        token: &str,
    ) -> (PierProcess, pier_testkit::docker::RunGuard) {
        let guard = pier_testkit::docker::RunGuard::new_run();
        let label = format!("{}={}", guard.label, guard.value);
        let listen = format!("127.0.0.1:{listen_port}");
        let registry = registry_port.unwrap_or(0).to_string();
        let data = dir.to_string_lossy().into_owned();
        let server = self.servers[0].base();
        let args = [
            "agent",
            "--server",
            &server,
            "--token",
            token,
            "--name",
            name,
            "--zone",
            "a",
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--registry-port",
            &registry,
            "--no-network",
            "--container-label",
            "pier.test=1",
            "--container-label",
            &label,
        ];
        let proc = PierProcess::spawn(PIER, &format!("agent-{name}"), &args, &self.root);
        (proc, guard)
    }

    /// Runs the CLI against server `i` with `token`.
    pub fn cli(&self, i: usize, token: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(PIER);
        cmd.args(["--addr", &self.servers[i].base()])
            .env("PIER_CACERT", self.ca_path())
            .env_remove("PIER_TOKEN")
            .args(args);
        if let Some(t) = token {
            cmd.env("PIER_TOKEN", t);
        }
        cmd.output().expect("run the pier CLI")
    }
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `program` with `args` and extra `env`; panics when it cannot be started.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// stdout and stderr of `o`, one after the other.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A FROM-scratch busybox httpd image serving `page`, tagged `tag` in the local engine (removed
/// when the guard drops) and copied by skopeo into an OCI layout at `layout` (`oci:<layout>:img`),
/// ready to push to a registry.
pub fn httpd_image_layout(
    tag: &str,
    page: &str,
    layout: &Path,
) -> pier_testkit::docker::ImageGuard {
    let image = pier_testkit::docker::ScratchImage::new()
        .with_busybox()
        .file("/www/index.html", page, 0o644)
        .cmd(&["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
        .build(tag);
    let out = run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("docker-daemon:{tag}"),
            &format!("oci:{}:img", layout.display()),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    image
}
