//! Three `pier server --insecure` processes on loopback ports, each with its own HTTP, raft and
//! registry port and data directory: the harness of the multi-server process tests.

use std::path::{Path, PathBuf};

use crate::net::free_port;
use crate::process::PierProcess;

pub struct LoopbackServer {
    pub name: String,
    pub http: u16,
    pub raft: u16,
    pub registry: u16,
    pub data: PathBuf,
    /// None once killed.
    pub proc: Option<PierProcess>,
}

impl LoopbackServer {
    /// `http://127.0.0.1:PORT` of its API.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// `127.0.0.1:PORT` of its registry.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry)
    }

    /// Starts (or restarts) the process; `extra` goes after the common arguments.
    pub fn start(&mut self, bin: &str, log_dir: &Path, join: &str, extra: &[&str]) {
        let mut args = vec![
            "server".to_string(),
            "--insecure".into(),
            "--data-dir".into(),
            self.data.to_string_lossy().into_owned(),
            "--node-name".into(),
            self.name.clone(),
            "--http-port".into(),
            self.http.to_string(),
            "--raft-port".into(),
            self.raft.to_string(),
            "--registry-port".into(),
            self.registry.to_string(),
            "--bootstrap-expect".into(),
            "3".into(),
            "--join".into(),
            join.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = Some(PierProcess::spawn(bin, &self.name, &args, log_dir));
    }

    /// SIGKILL, and forget the process.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
        self.proc = None;
    }
}

/// Starts servers `s1`..`s3` under `dir`, each joining the other two.
pub fn start_three(bin: &str, dir: &Path, extra: &[&str]) -> Vec<LoopbackServer> {
    let mut servers: Vec<LoopbackServer> = (1..=3)
        .map(|i| LoopbackServer {
            name: format!("s{i}"),
            http: free_port(),
            raft: free_port(),
            registry: free_port(),
            data: dir.join(format!("s{i}")),
            proc: None,
        })
        .collect();
    let join = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.raft))
        .collect::<Vec<_>>()
        .join(",");
    for s in servers.iter_mut() {
        s.start(bin, dir, &join, extra);
    }
    servers
}
