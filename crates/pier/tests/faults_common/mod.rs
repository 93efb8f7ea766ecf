//! Harness of the fault suite (`tests/faults.rs`): `pier server` processes each in its own
//! network namespace with its own address (`pier_testkit::netns`), a closed-loop client load
//! from the test process recorded into a history, and the checks every case ends with:
//!
//! * the history is linearizable (`pier_testkit::linearizable`), final reads included;
//! * no acknowledged write is lost: every acknowledged unique-key write is on every server;
//! * writes are acknowledged again within [`RECOVERY_BOUND`] of a majority being available,
//!   for every client whose server is on the majority side (recovery windows the case names);
//! * every server has applied what the cluster had committed within [`CONVERGENCE_BOUND`] of
//!   healing, and once the load stops all servers hold identical data.
//!
//! A case collects every failed check and panics once, with all of them, a per-client account
//! of what each failing client saw, and the tail of every server's log; its directory (data
//! dirs and logs) is kept for a look. Timings are printed in every case (`--no-capture`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use pier_testkit::linearizable::{self, Call, Completion, Op, Outcome, Recorder, Ret};
use pier_testkit::netns::Net;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::Value;
use tokio::task::JoinHandle;

pub const PIER: &str = env!("CARGO_BIN_EXE_pier");
pub const HTTP_PORT: u16 = 8500;
pub const RAFT_PORT: u16 = 8300;
/// Writes must be acknowledged again this soon after a majority is available.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(3);
/// Every server must have caught up this soon after healing.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(5);
/// A client gives up on one request after this; its outcome is then unknown.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys every client reads, compare-and-sets and deletes.
pub const SHARED_KEYS: [&str; 3] = ["cas/0", "cas/1", "cas/2"];
/// The client id of the final consistent reads in a history.
pub const FINAL_READER: usize = 1000;

/// One `pier server` (host `host` of the net).
pub struct Server {
    pub name: String,
    pub host: usize,
    pub data: PathBuf,
    pub proc: Option<PierProcess>,
    /// Raft addresses passed as `--join`.
    pub join: Vec<String>,
}

/// At most this many cases of one test process run at once (`cargo test` runs 4 threads in
/// CI): each case is three debug-built servers under load, and the 3 s recovery bound assumes
/// they get CPU. Separate processes (nextest) are limited by nextest's own parallelism.
const CASES_AT_ONCE: usize = 2;

fn case_slots() -> Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(CASES_AT_ONCE)))
        .clone()
}

/// The servers of one case, their net and their directory. Dropping it kills the servers and
/// deletes the namespaces; when the test is failing the directory is kept and its path printed.
pub struct Cluster {
    pub case: &'static str,
    // Field order is drop order: processes, then namespaces, then files.
    pub servers: Vec<Server>,
    pub net: Net,
    dir: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
    pub snapshot_every: u64,
    /// This case's slot among [`CASES_AT_ONCE`]; released when the case ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// An error with its sources: reqwest's own message alone hides the cause.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(10))
        .build()
        .expect("build the test's HTTP client")
}

impl Cluster {
    /// A net of `hosts` namespaces and `servers` (<= hosts) servers on the first ones, formed
    /// with `--bootstrap-expect servers`; returns once a leader has all of them as members.
    pub async fn start(
        case: &'static str,
        hosts: usize,
        servers: usize,
        snapshot_every: u64,
    ) -> Cluster {
        assert!(servers <= hosts);
        let slot = case_slots()
            .acquire_owned()
            .await
            .expect("the case semaphore is never closed");
        let net = Net::new(hosts);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pier-faults-{case}-"))
            .tempdir()
            .expect("temp dir for the case");
        let join: Vec<String> = (0..servers)
            .map(|i| format!("{}:{RAFT_PORT}", net.addr(i)))
            .collect();
        let mut c = Cluster {
            case,
            servers: Vec::new(),
            net,
            dir: Some(dir),
            http: http_client(),
            snapshot_every,
            _slot: slot,
        };
        for host in 0..servers {
            c.add_server(host, join.clone());
        }
        for host in 0..servers {
            c.start_server(host).await;
        }
        let all: Vec<usize> = (0..servers).collect();
        c.wait_members(&all, servers, Duration::from_secs(30)).await;
        c
    }

    pub fn dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("the case directory")
            .path()
            .to_path_buf()
    }

    /// Registers a server on `host` (not started): name `s<host+1>`.
    pub fn add_server(&mut self, host: usize, join: Vec<String>) {
        let name = format!("s{}", host + 1);
        let data = self.dir().join(&name);
        self.servers.push(Server {
            name,
            host,
            data,
            proc: None,
            join,
        });
    }

    fn server_mut(&mut self, host: usize) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("no server on host {host}"))
    }

    pub fn server(&self, host: usize) -> &Server {
        self.servers
            .iter()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("no server on host {host}"))
    }

    pub fn name(&self, host: usize) -> String {
        self.server(host).name.clone()
    }

    pub fn base(&self, host: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.net.addr(host))
    }

    /// Starts (or restarts, from its data dir) the server on `host`; returns once its HTTP API
    /// answers.
    pub async fn start_server(&mut self, host: usize) {
        let addr = self.net.addr(host).to_string();
        let snapshot_every = self.snapshot_every.to_string();
        let dir = self.dir();
        let server = self.server(host);
        assert!(server.proc.is_none(), "{} is already running", server.name);
        let data = server.data.to_string_lossy().into_owned();
        let join = server.join.join(",");
        let name = server.name.clone();
        let http_port = HTTP_PORT.to_string();
        let raft_port = RAFT_PORT.to_string();
        let args = [
            "server",
            "--insecure",
            "--data-dir",
            &data,
            "--node-name",
            &name,
            "--bind",
            &addr,
            "--http-port",
            &http_port,
            "--raft-port",
            &raft_port,
            "--bootstrap-expect",
            "3",
            "--join",
            &join,
            "--raft-snapshot-every",
            &snapshot_every,
        ];
        // Plain log lines: they end up in failure messages.
        let env = [("NO_COLOR", "1")];
        let proc = self
            .net
            .spawn_with_env(host, PIER, &name, &args, &env, &dir);
        self.server_mut(host).proc = Some(proc);
        wait_http_ok(
            &format!("{}/api/v1/status", self.base(host)),
            Duration::from_secs(30),
        )
        .await;
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self, host: usize) {
        let server = self.server_mut(host);
        let mut proc = server
            .proc
            .take()
            .unwrap_or_else(|| panic!("{} is not running", server.name));
        proc.kill9();
    }

    /// SIGTERM to all of `hosts` at once, then waits for each to exit (15 s each at most).
    pub fn stop_all(&mut self, hosts: &[usize]) {
        for &h in hosts {
            let pid = self.server(h).proc.as_ref().map(|p| p.pid());
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for &h in hosts {
            self.stop(h);
        }
    }

    /// SIGTERM and wait for a clean exit (panics if it does not exit within 15 s).
    pub fn stop(&mut self, host: usize) {
        let server = self.server_mut(host);
        let name = server.name.clone();
        let mut proc = server
            .proc
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = proc.signal_and_wait("TERM", Duration::from_secs(15));
        assert!(
            status.is_some(),
            "{name} did not exit within 15 s of SIGTERM"
        );
    }

    /// Deletes the data directory of a stopped server.
    pub fn wipe(&mut self, host: usize) {
        let server = self.server_mut(host);
        assert!(server.proc.is_none(), "wipe {} while running", server.name);
        std::fs::remove_dir_all(&server.data)
            .unwrap_or_else(|e| panic!("delete {}: {e}", server.data.display()));
    }

    pub fn running(&self) -> Vec<usize> {
        self.servers
            .iter()
            .filter(|s| s.proc.is_some())
            .map(|s| s.host)
            .collect()
    }

    pub fn probe(&self) -> Probe {
        Probe {
            http: self.http.clone(),
            servers: self
                .servers
                .iter()
                .map(|s| (s.host, s.name.clone(), self.base(s.host)))
                .collect(),
        }
    }

    pub async fn status(&self, host: usize) -> Option<Value> {
        self.probe().status(host).await
    }

    /// The leader among `hosts`: a server there that says it leads, with the highest term of
    /// those that answer (an isolated old leader may still say it leads, in an older term).
    /// Panics after `timeout`.
    pub async fn leader_among(&self, hosts: &[usize], timeout: Duration) -> usize {
        match self.try_leader_among(hosts, timeout).await {
            Ok(h) => h,
            Err(seen) => panic!(
                "[{}] no leader among {hosts:?} within {timeout:?}:{seen}",
                self.case
            ),
        }
    }

    /// [`Cluster::leader_among`] that says what each server answered instead of panicking.
    pub async fn try_leader_among(
        &self,
        hosts: &[usize],
        timeout: Duration,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let probe = self.probe();
        let mut seen = String::new();
        loop {
            let mut best: Option<(u64, usize)> = None;
            seen.clear();
            for &h in hosts {
                match probe.status(h).await {
                    Some(st) => {
                        let term = st["term"].as_u64().unwrap_or(0);
                        let _ = write!(
                            seen,
                            " {}: leader={} term={term};",
                            self.name(h),
                            st["is_leader"]
                        );
                        if st["is_leader"] == Value::Bool(true)
                            && best.is_none_or(|(t, _)| term > t)
                        {
                            best = Some((term, h));
                        }
                    }
                    None => {
                        let _ = write!(seen, " {}: no answer;", self.name(h));
                    }
                }
            }
            if let Some((_, h)) = best {
                return Ok(h);
            }
            if Instant::now() >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a leader among `hosts` lists `count` members.
    pub async fn wait_members(&self, hosts: &[usize], count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self
                .leader_among(hosts, deadline.saturating_duration_since(Instant::now()))
                .await;
            let members = self.member_names(leader).await;
            if members.len() == count {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] the leader {} lists members {members:?}, not {count}, after {timeout:?}",
                self.case,
                self.name(leader)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Members by name with their node ids, as `host` reports them.
    pub async fn member_ids(&self, host: usize) -> BTreeMap<String, u64> {
        self.status(host)
            .await
            .and_then(|st| {
                st["members"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["id"].as_u64()?)))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The names of the voting members as `host` reports them.
    pub async fn voter_names(&self, host: usize) -> BTreeSet<String> {
        self.status(host)
            .await
            .and_then(|st| {
                st["members"].as_array().map(|m| {
                    m.iter()
                        .filter(|m| m["voter"] == Value::Bool(true))
                        .filter_map(|m| m["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    pub async fn member_names(&self, host: usize) -> BTreeSet<String> {
        self.status(host)
            .await
            .and_then(|st| {
                st["members"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The highest last log index any running server reports.
    pub async fn last_log_index(&self) -> u64 {
        let mut last = 0;
        for h in self.running() {
            if let Some(st) = self.status(h).await {
                last = last.max(st["last_log_index"].as_u64().unwrap_or(0));
            }
        }
        last
    }

    /// Writes to one key from many concurrent requests (each a log entry of its own, as
    /// writes to one key are never grouped) until the leader's log is at least `entries`
    /// long. Returns the log length reached.
    pub async fn fill_log(&self, entries: u64) -> u64 {
        let leader = self
            .leader_among(&self.running(), Duration::from_secs(20))
            .await;
        let base = self.base(leader);
        let started = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..48 {
            let http = self.http.clone();
            let base = base.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let _ = http
                        .put(format!("{base}/api/v1/kv/fill/x"))
                        .body(format!("{w}-{n}"))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    n += 1;
                }
            }));
        }
        let reached = loop {
            let last = self
                .status(leader)
                .await
                .and_then(|st| st["last_log_index"].as_u64())
                .unwrap_or(0);
            if last >= entries {
                break last;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "[{}] the log reached only {last} of {entries} entries in 90 s",
                self.case
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        eprintln!(
            "[{}] log filled to {reached} entries in {:.1} s",
            self.case,
            started.elapsed().as_secs_f64()
        );
        reached
    }

    /// Runs the pier CLI (a client command, in the test's own namespace).
    pub fn pier_cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(PIER)
            .args(args)
            .env_remove("PIER_ADDR")
            .output()
            .expect("run the pier CLI")
    }

    /// Every panic a server logged: `name: message (location)`, once per distinct message.
    pub fn panics(&self) -> Vec<String> {
        let mut found = Vec::new();
        for s in &self.servers {
            let path = self.dir().join(format!("{}.log", s.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let mut seen = BTreeSet::new();
            for (i, l) in lines.iter().enumerate() {
                if let Some(at) = l.find("panicked at ") {
                    let location = &l[at + "panicked at ".len()..];
                    let message = lines.get(i + 1).copied().unwrap_or("").trim();
                    if seen.insert(message.to_string()) {
                        found.push(format!(
                            "{} panicked: {message} (at {})",
                            s.name,
                            location.trim_end_matches(':')
                        ));
                    }
                }
            }
        }
        found
    }

    /// The last `lines` lines of every server's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let path = self.dir().join(format!("{}.log", s.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            let _ = write!(
                out,
                "\n----- {} ({}) last {} lines -----",
                s.name,
                path.display(),
                all.len() - from
            );
            for l in &all[from..] {
                out.push('\n');
                out.push_str(l);
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut p) = s.proc.take() {
                p.kill9();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "[{}] kept the data dirs and server logs in {}",
                    self.case,
                    kept.display()
                );
            }
        }
    }
}

/// Status and listing requests to the servers, cheap to clone into tasks.
#[derive(Clone)]
pub struct Probe {
    http: reqwest::Client,
    /// (host, name, base URL)
    servers: Vec<(usize, String, String)>,
}

impl Probe {
    fn base(&self, host: usize) -> &str {
        &self
            .servers
            .iter()
            .find(|s| s.0 == host)
            .unwrap_or_else(|| panic!("no server on host {host}"))
            .2
    }

    fn name(&self, host: usize) -> &str {
        &self
            .servers
            .iter()
            .find(|s| s.0 == host)
            .unwrap_or_else(|| panic!("no server on host {host}"))
            .1
    }

    pub async fn status(&self, host: usize) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}/api/v1/status", self.base(host)))
            .timeout(Duration::from_millis(800))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Every key with its value and modify index, read locally (`?stale`).
    pub async fn listing(&self, host: usize) -> Result<BTreeMap<String, (String, u64)>, String> {
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/kv?recurse=true&stale=true",
                self.base(host)
            ))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| format!("listing from {}: {}", self.name(host), chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!(
                "listing from {}: {}",
                self.name(host),
                resp.status()
            ));
        }
        let entries: Vec<Value> = resp
            .json()
            .await
            .map_err(|e| format!("listing from {}: {e}", self.name(host)))?;
        Ok(entries
            .into_iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap_or_default().to_string(),
                    (
                        e["value"].as_str().unwrap_or_default().to_string(),
                        e["modify_index"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect())
    }

    /// Time from `since` until every server in `hosts` has applied the highest commit index
    /// any of them reports at the start; gives up after `limit` with what each had.
    pub async fn catch_up(
        &self,
        hosts: &[usize],
        since: Instant,
        limit: Duration,
    ) -> Result<Duration, String> {
        // The target: the highest commit index any of them reports; every server is asked
        // until it answers (a busy one may miss a short timeout), for up to 2 s.
        let mut target = 0;
        let mut unanswered: Vec<usize> = hosts.to_vec();
        let asking = Instant::now();
        while !unanswered.is_empty() && asking.elapsed() < Duration::from_secs(2) {
            let mut still = Vec::new();
            for &h in &unanswered {
                match self.status(h).await {
                    Some(st) => target = target.max(st["commit_index"].as_u64().unwrap_or(0)),
                    None => still.push(h),
                }
            }
            unanswered = still;
        }
        let mut last = String::new();
        loop {
            let mut all = true;
            last.clear();
            for &h in hosts {
                let st = self.status(h).await;
                let applied = st
                    .as_ref()
                    .and_then(|s| s["last_applied_index"].as_u64())
                    .unwrap_or(0);
                let _ = write!(
                    last,
                    " {} applied {}{};",
                    self.name(h),
                    applied,
                    if st.is_none() { " (no answer)" } else { "" }
                );
                all &= applied >= target;
            }
            if all {
                return Ok(since.elapsed());
            }
            if since.elapsed() > limit {
                return Err(format!(
                    "not every server applied the committed index {target} within {limit:?}:{last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Probe::catch_up`] as a `'static` future, for `tokio::spawn`.
    pub async fn catch_up_owned(
        self,
        hosts: Vec<usize>,
        since: Instant,
        limit: Duration,
    ) -> Result<Duration, String> {
        self.catch_up(&hosts, since, limit).await
    }

    /// Waits until every server in `hosts` lists exactly the same keys, values and indexes.
    pub async fn identical(
        &self,
        hosts: &[usize],
        limit: Duration,
    ) -> Result<(Duration, BTreeMap<String, (String, u64)>), String> {
        let started = Instant::now();
        let mut problem;
        loop {
            let mut listings = Vec::new();
            problem = String::new();
            for &h in hosts {
                match self.listing(h).await {
                    Ok(l) => listings.push((h, l)),
                    Err(e) => problem = e,
                }
            }
            if problem.is_empty() {
                let (h0, first) = &listings[0];
                let differing: Vec<String> = listings[1..]
                    .iter()
                    .filter(|(_, l)| l != first)
                    .map(|(h, l)| describe_difference(self.name(*h0), first, self.name(*h), l))
                    .collect();
                if differing.is_empty() {
                    return Ok((started.elapsed(), listings.swap_remove(0).1));
                }
                problem = differing.join("; ");
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "the servers' data still differ after {limit:?}: {problem}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn describe_difference(
    a_name: &str,
    a: &BTreeMap<String, (String, u64)>,
    b_name: &str,
    b: &BTreeMap<String, (String, u64)>,
) -> String {
    let only_a = a.keys().filter(|k| !b.contains_key(*k)).count();
    let only_b = b.keys().filter(|k| !a.contains_key(*k)).count();
    let differ: Vec<&String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    format!(
        "{a_name} has {} keys, {b_name} {}: {only_a} only on {a_name}, {only_b} only on {b_name}, \
         {} with other values (first: {:?})",
        a.len(),
        b.len(),
        differ.len(),
        differ.first()
    )
}

// ---------------------------------------------------------------------------------------
// The client load.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/api/v1/kv/...`
    Pier,
    /// `/v1/kv/...` (Consul's)
    Consul,
}

/// A client's fixed traits: the server it talks to, the API, its read mode.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: usize,
    pub host: usize,
    pub server: String,
    pub api: Api,
    pub consistent_reads: bool,
    /// False for a reader: it only reads the shared keys, and so never needs to recover
    /// writes.
    pub writes: bool,
}

impl std::fmt::Display for ClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (via {}, {:?} API, {} reads)",
            if self.writes { "client" } else { "reader" },
            self.id,
            self.server,
            self.api,
            if self.consistent_reads {
                "consistent"
            } else {
                "default"
            }
        )
    }
}

/// One request as a client saw it, for explanations.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub client: usize,
    pub what: String,
    pub invoke: Duration,
    pub end: Duration,
    pub result: String,
    pub write: bool,
    pub acknowledged: bool,
}

struct LoadShared {
    rec: Recorder,
    stop: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
    next_client: AtomicUsize,
}

/// Closed-loop clients, each doing unique-key writes, read-then-CAS cycles on the shared keys,
/// reads and deletes of them, as fast as answers come.
pub struct Load {
    shared: Arc<LoadShared>,
    http: reqwest::Client,
    pub clients: Vec<ClientInfo>,
    tasks: Vec<JoinHandle<()>>,
    /// The test's clock: the history's time 0.
    pub start: Instant,
}

enum Answer<T> {
    Ok(T),
    /// Certainly had no effect.
    Failed(String),
    /// May or may not have had an effect.
    Unknown(String),
}

impl Load {
    pub fn new(c: &Cluster) -> Load {
        let shared = Arc::new(LoadShared {
            rec: Recorder::new(),
            stop: AtomicBool::new(false),
            attempts: Mutex::new(Vec::new()),
            next_client: AtomicUsize::new(0),
        });
        Load {
            shared,
            http: c.http.clone(),
            clients: Vec::new(),
            tasks: Vec::new(),
            start: Instant::now(),
        }
    }

    /// Time since the load's start (the history's clock).
    pub fn now(&self) -> Duration {
        self.shared.rec.now()
    }

    /// The history's clock reading of an instant.
    pub fn at(&self, instant: Instant) -> Duration {
        self.shared.rec.at(instant)
    }

    /// Two writing clients on the server on `host`: one on pier's API, one on Consul's; one with
    /// default reads, one with consistent reads (alternating by host).
    ///
    /// Plus a reader that only reads the shared keys with default consistency: a writing
    /// client spends a partition waiting on writes, a reader keeps asking, so a server that
    /// answers stale data is caught.
    pub fn add_clients(&mut self, c: &Cluster, host: usize) {
        let reader_api = [Api::Pier, Api::Consul][host % 2];
        for (api, writes) in [(Api::Pier, true), (Api::Consul, true), (reader_api, false)] {
            let id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
            let info = ClientInfo {
                id,
                host,
                server: c.name(host),
                api,
                consistent_reads: writes && (host + usize::from(api == Api::Consul)) % 2 == 1,
                writes,
            };
            let client = Client {
                info: info.clone(),
                base: c.base(host),
                http: self.http.clone(),
                shared: self.shared.clone(),
            };
            self.tasks.push(tokio::spawn(client.run()));
            self.clients.push(info);
        }
    }

    /// Stops every client after its current request and waits for them.
    pub async fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.expect("a client task panicked");
        }
    }

    pub fn history(&self) -> Vec<Op> {
        self.shared.rec.history()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A consistent read of every key, recorded as reads of each key that the history
    /// touches (absent keys read as absent). Returns the listing.
    pub async fn final_reads(
        &self,
        c: &Cluster,
        host: usize,
    ) -> Result<BTreeMap<String, String>, String> {
        let rec = &self.shared.rec;
        let invoke = rec.now();
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/kv?recurse=true&consistent=true",
                c.base(host)
            ))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "final consistent listing from {}: {}",
                    c.name(host),
                    chain(&e)
                )
            })?;
        if !resp.status().is_success() {
            return Err(format!(
                "final consistent listing from {}: {} {}",
                c.name(host),
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
        let entries: Vec<Value> = resp
            .json()
            .await
            .map_err(|e| format!("final listing body: {e}"))?;
        let listing: BTreeMap<String, String> = entries
            .into_iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let keys: BTreeSet<String> = rec.history().into_iter().map(|o| o.key).collect();
        for key in keys {
            let id = rec.invoke_at(FINAL_READER, &key, Call::Read, invoke);
            rec.complete(id, Completion::Ok(Ret::Read(listing.get(&key).cloned())));
        }
        Ok(listing)
    }
}

struct Client {
    info: ClientInfo,
    base: String,
    http: reqwest::Client,
    shared: Arc<LoadShared>,
}

impl Client {
    fn url(&self, key: &str, query: &[String]) -> String {
        let path = match self.info.api {
            Api::Pier => "api/v1/kv",
            Api::Consul => "v1/kv",
        };
        if query.is_empty() {
            format!("{}/{path}/{key}", self.base)
        } else {
            format!("{}/{path}/{key}?{}", self.base, query.join("&"))
        }
    }

    async fn run(self) {
        if !self.info.writes {
            return self.run_reader().await;
        }
        let mut seq = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            seq += 1;
            let roll: u32 = rand::random_range(0..100);
            let shared_key = SHARED_KEYS[rand::random_range(0..SHARED_KEYS.len())];
            let value = format!("c{}-{seq}", self.info.id);
            let ok = if roll < 40 {
                let key = format!("u/{value}");
                self.write(&key, &value).await
            } else if roll < 80 {
                match self.read(shared_key).await {
                    Some((current, index)) => self.cas(shared_key, current, index, &value).await,
                    None => false,
                }
            } else if roll < 95 {
                self.read(shared_key).await.is_some()
            } else {
                self.delete(shared_key).await
            };
            if !ok {
                // Do not spin on a server that refuses connections.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn run_reader(self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let key = SHARED_KEYS[rand::random_range(0..SHARED_KEYS.len())];
            let pause = if self.read(key).await.is_some() {
                5
            } else {
                50
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn note(&self, what: String, invoke: Duration, result: String, write: bool, ack: bool) {
        let end = self.shared.rec.now();
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Attempt {
                client: self.info.id,
                what,
                invoke,
                end,
                result,
                write,
                acknowledged: ack,
            });
    }

    /// Sends a request; sorts the answer into done / certainly not done / unknown.
    async fn send(&self, req: reqwest::RequestBuilder) -> Answer<(u16, Vec<u8>)> {
        match req.timeout(CLIENT_TIMEOUT).send().await {
            Err(e) if e.is_connect() => Answer::Failed(format!("connect: {}", chain(&e))),
            Err(e) if e.is_timeout() => {
                Answer::Unknown(format!("no answer within {CLIENT_TIMEOUT:?}"))
            }
            Err(e) => Answer::Unknown(format!("request broke: {}", chain(&e))),
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(body) => Answer::Ok((status, body.to_vec())),
                    Err(e) => {
                        Answer::Unknown(format!("status {status}, body broke: {}", chain(&e)))
                    }
                }
            }
        }
    }

    /// Sorts an HTTP error status: 4xx = refused, nothing done; 5xx = maybe done.
    fn error_status<T>(status: u16, body: &[u8]) -> Answer<T> {
        let text = String::from_utf8_lossy(body);
        let text = text.chars().take(300).collect::<String>();
        if (400..500).contains(&status) {
            Answer::Failed(format!("{status}: {text}"))
        } else {
            Answer::Unknown(format!("{status}: {text}"))
        }
    }

    /// Reads a shared key; records the read; returns (value, modify_index) when it answered.
    async fn read(&self, key: &str) -> Option<(Option<String>, u64)> {
        let rec = &self.shared.rec;
        let query = if self.info.consistent_reads {
            vec!["consistent".to_string()]
        } else {
            vec![]
        };
        let id = rec.invoke(self.info.id, key, Call::Read);
        let invoke = rec.now();
        let answer = match self.send(self.http.get(self.url(key, &query))).await {
            Answer::Ok((200, body)) => self.parse_entry(&body),
            Answer::Ok((404, _)) => Answer::Ok((None, 0)),
            Answer::Ok((status, body)) => Self::error_status(status, &body),
            Answer::Failed(e) => Answer::Failed(e),
            Answer::Unknown(e) => Answer::Unknown(e),
        };
        let what = format!("read {key}");
        match answer {
            Answer::Ok((value, index)) => {
                rec.complete(id, Completion::Ok(Ret::Read(value.clone())));
                self.note(what, invoke, format!("{value:?}"), false, true);
                Some((value, index))
            }
            Answer::Failed(e) => {
                rec.complete(id, Completion::Failed);
                self.note(what, invoke, format!("failed: {e}"), false, false);
                None
            }
            Answer::Unknown(e) => {
                rec.complete(id, Completion::Unknown);
                self.note(what, invoke, format!("unknown: {e}"), false, false);
                None
            }
        }
    }

    fn parse_entry(&self, body: &[u8]) -> Answer<(Option<String>, u64)> {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Answer::Unknown(format!("unparsable read answer: {e}")),
        };
        match self.info.api {
            Api::Pier => Answer::Ok((
                v["value"].as_str().map(str::to_string),
                v["modify_index"].as_u64().unwrap_or(0),
            )),
            Api::Consul => {
                let e = &v[0];
                let value = e["Value"].as_str().map(|b64| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                });
                Answer::Ok((value, e["ModifyIndex"].as_u64().unwrap_or(0)))
            }
        }
    }

    /// Whether a write answer says "written": pier's `{"written": b}`, Consul's `b`.
    fn written(&self, body: &[u8]) -> Option<bool> {
        let v: Value = serde_json::from_slice(body).ok()?;
        match self.info.api {
            Api::Pier => v["written"].as_bool(),
            Api::Consul => v.as_bool(),
        }
    }

    async fn finish_write(
        &self,
        id: linearizable::OpId,
        invoke: Duration,
        what: String,
        answer: Answer<(u16, Vec<u8>)>,
        ret: impl Fn(bool) -> Ret,
    ) -> bool {
        let rec = &self.shared.rec;
        let answer = match answer {
            Answer::Ok((200, body)) => match self.written(&body) {
                Some(b) => Answer::Ok(b),
                None => Answer::Unknown(format!(
                    "unparsable write answer {:?}",
                    String::from_utf8_lossy(&body)
                )),
            },
            Answer::Ok((status, body)) => Self::error_status(status, &body),
            Answer::Failed(e) => Answer::Failed(e),
            Answer::Unknown(e) => Answer::Unknown(e),
        };
        match answer {
            Answer::Ok(written) => {
                rec.complete(id, Completion::Ok(ret(written)));
                self.note(what, invoke, format!("written={written}"), true, true);
                true
            }
            Answer::Failed(e) => {
                rec.complete(id, Completion::Failed);
                self.note(what, invoke, format!("failed: {e}"), true, false);
                false
            }
            Answer::Unknown(e) => {
                rec.complete(id, Completion::Unknown);
                self.note(what, invoke, format!("unknown: {e}"), true, false);
                false
            }
        }
    }

    async fn write(&self, key: &str, value: &str) -> bool {
        let rec = &self.shared.rec;
        let id = rec.invoke(self.info.id, key, Call::Write(value.to_string()));
        let invoke = rec.now();
        let answer = self
            .send(self.http.put(self.url(key, &[])).body(value.to_string()))
            .await;
        self.finish_write(id, invoke, format!("write {key}={value}"), answer, |_| {
            Ret::Write
        })
        .await
    }

    async fn cas(&self, key: &str, expected: Option<String>, index: u64, value: &str) -> bool {
        let rec = &self.shared.rec;
        let call = Call::Cas {
            expected: expected.clone(),
            new: value.to_string(),
        };
        let id = rec.invoke(self.info.id, key, call);
        let invoke = rec.now();
        let query = [format!("cas={index}")];
        let answer = self
            .send(self.http.put(self.url(key, &query)).body(value.to_string()))
            .await;
        let what = format!("cas {key} {expected:?}@{index} -> {value}");
        self.finish_write(id, invoke, what, answer, Ret::Cas).await
    }

    async fn delete(&self, key: &str) -> bool {
        let rec = &self.shared.rec;
        let id = rec.invoke(self.info.id, key, Call::Delete);
        let invoke = rec.now();
        let answer = self.send(self.http.delete(self.url(key, &[]))).await;
        self.finish_write(id, invoke, format!("delete {key}"), answer, |_| Ret::Delete)
            .await
    }
}

// ---------------------------------------------------------------------------------------
// What a case checks at the end.

/// Clients on `hosts` must have a write acknowledged within [`RECOVERY_BOUND`] of `from`.
pub struct Window {
    pub label: String,
    pub from: Duration,
    pub hosts: Vec<usize>,
    /// Count writes already in flight at `from` (after a heal: a request waiting on the
    /// formerly cut-off server may be answered); otherwise only writes sent at or after it.
    pub in_flight_counts: bool,
}

/// The record of one case: its load, recovery windows, measured catch-up, failures.
pub struct Report {
    pub case: &'static str,
    pub windows: Vec<Window>,
    pub timings: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(case: &'static str) -> Report {
        Report {
            case,
            windows: Vec::new(),
            timings: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// After a fault at `from`, clients on `hosts` (the side with a majority) must write again.
    pub fn expect_writes_after_fault(&mut self, label: &str, from: Duration, hosts: &[usize]) {
        self.windows.push(Window {
            label: label.to_string(),
            from,
            hosts: hosts.to_vec(),
            in_flight_counts: false,
        });
    }

    /// After healing at `from`, clients on `hosts` (all) must write again.
    pub fn expect_writes_after_heal(&mut self, label: &str, from: Duration, hosts: &[usize]) {
        self.windows.push(Window {
            label: label.to_string(),
            from,
            hosts: hosts.to_vec(),
            in_flight_counts: true,
        });
    }

    pub fn timing(&mut self, text: String) {
        eprintln!("[{}] {text}", self.case);
        self.timings.push(text);
    }

    pub fn fail(&mut self, text: String) {
        eprintln!("[{}] FAILED: {text}", self.case);
        self.failures.push(text);
    }

    /// Catch-up after healing at `since`: records the time, or a failure.
    pub fn catch_up(&mut self, label: &str, result: Result<Duration, String>) {
        match result {
            Ok(d) if d <= CONVERGENCE_BOUND => self.timing(format!(
                "{label}: every server caught up after {:.2} s",
                d.as_secs_f64()
            )),
            Ok(d) => self.fail(format!(
                "{label}: servers caught up only after {:.2} s (bound {CONVERGENCE_BOUND:?})",
                d.as_secs_f64()
            )),
            Err(e) => self.fail(format!("{label}: {e}")),
        }
    }

    /// Stops the load, then checks everything: recovery windows, identical data on `live`,
    /// no acknowledged write lost, linearizability. Panics with every failure (and the
    /// server logs) if any check failed.
    pub async fn finish(mut self, c: &Cluster, mut load: Load, live: &[usize]) {
        load.stop().await;
        let attempts = load.attempts();
        self.check_windows(&load, &attempts);

        let probe = c.probe();
        let listing =
            match probe.identical(live, CONVERGENCE_BOUND).await {
                Ok((d, listing)) => {
                    self.timing(format!(
                    "after the load stopped, all of {} held identical data ({} keys) after {:.2} s",
                    live.iter().map(|&h| c.name(h)).collect::<Vec<_>>().join(", "),
                    listing.len(),
                    d.as_secs_f64()
                ));
                    Some(listing)
                }
                Err(e) => {
                    self.fail(e);
                    None
                }
            };

        match c.try_leader_among(live, Duration::from_secs(10)).await {
            Ok(leader) => match load.final_reads(c, leader).await {
                Ok(final_listing) => {
                    self.check_lost(&load.history(), &final_listing, listing.as_ref())
                }
                Err(e) => self.fail(e),
            },
            Err(seen) => self.fail(format!(
                "no leader for the final reads within 10 s after the load stopped:{seen}"
            )),
        }

        let history = load.history();
        let started = Instant::now();
        match linearizable::check(&history) {
            Ok(s) => self.timing(format!(
                "history linearizable: {} ops on {} keys ({} with unknown outcome, at most {} on one key), checked in {:.2} s",
                s.ops,
                s.keys,
                s.unknown,
                s.max_ops_per_key,
                started.elapsed().as_secs_f64()
            )),
            Err(v) => {
                let legend: Vec<String> = load.clients.iter().map(|c| c.to_string()).collect();
                self.fail(format!(
                    "history NOT linearizable: {v}\n    (the clients: {}; client {FINAL_READER} = the final consistent reads)",
                    legend.join(", ")
                ))
            }
        }
        let writes = attempts.iter().filter(|a| a.write).count();
        let acked = attempts
            .iter()
            .filter(|a| a.write && a.acknowledged)
            .count();
        self.timing(format!(
            "{} requests, {writes} writes of which {acked} acknowledged",
            attempts.len()
        ));

        if !self.failures.is_empty() {
            let mut msg = format!(
                "fault case {} failed {} check(s):\n",
                self.case,
                self.failures.len()
            );
            for (i, f) in self.failures.iter().enumerate() {
                let _ = writeln!(msg, "{}. {f}", i + 1);
            }
            let panics = c.panics();
            if !panics.is_empty() {
                let _ = writeln!(msg, "server panics:\n  {}", panics.join("\n  "));
            }
            let _ = write!(
                msg,
                "timings: {}\n{}",
                self.timings.join("; "),
                c.log_tails(25)
            );
            panic!("{msg}");
        }
    }

    fn check_windows(&mut self, load: &Load, attempts: &[Attempt]) {
        let windows = std::mem::take(&mut self.windows);
        for w in &windows {
            let mut cluster_first: Option<Duration> = None;
            let mut per_client = Vec::new();
            for client in load
                .clients
                .iter()
                .filter(|c| c.writes && w.hosts.contains(&c.host))
            {
                let first = attempts
                    .iter()
                    .filter(|a| a.client == client.id && a.write && a.acknowledged)
                    .filter(|a| {
                        if w.in_flight_counts {
                            a.end >= w.from
                        } else {
                            a.invoke >= w.from
                        }
                    })
                    .map(|a| a.end.saturating_sub(w.from))
                    .min();
                cluster_first = match (cluster_first, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                per_client.push(format!(
                    "{}: {}",
                    client.server,
                    first.map_or("none".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
                ));
                let late = first.is_none_or(|d| d > RECOVERY_BOUND);
                if late {
                    // What the client did: its last requests before `from`, then the
                    // window itself (at most a dozen lines).
                    let mine: Vec<&Attempt> =
                        attempts.iter().filter(|a| a.client == client.id).collect();
                    let before = mine.iter().filter(|a| a.invoke < w.from).count();
                    let mut story = String::new();
                    for a in mine
                        .iter()
                        .skip(before.saturating_sub(2))
                        .filter(|a| a.invoke <= w.from + RECOVERY_BOUND + CLIENT_TIMEOUT)
                        .take(12)
                    {
                        let _ = write!(
                            story,
                            "\n      sent {:+.2} s, answered {:+.2} s: {} -> {}",
                            a.invoke.as_secs_f64() - w.from.as_secs_f64(),
                            a.end.as_secs_f64() - w.from.as_secs_f64(),
                            a.what,
                            a.result
                        );
                    }
                    self.fail(format!(
                        "{} (at {:.2} s): {client} had no acknowledged write within {RECOVERY_BOUND:?} \
                         (first after {}); its requests around then:{story}",
                        w.label,
                        w.from.as_secs_f64(),
                        first.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
                    ));
                }
            }
            self.timing(format!(
                "{} -> next acknowledged write after {} (per client {})",
                w.label,
                cluster_first.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
                per_client.join(", ")
            ));
        }
        self.windows = windows;
    }

    fn check_lost(
        &mut self,
        history: &[Op],
        final_listing: &BTreeMap<String, String>,
        identical: Option<&BTreeMap<String, (String, u64)>>,
    ) {
        let mut lost = Vec::new();
        let mut acked = 0;
        for op in history {
            if let (Call::Write(v), Outcome::Done { .. }) = (&op.call, &op.outcome) {
                if !op.key.starts_with("u/") {
                    continue;
                }
                acked += 1;
                let on_leader = final_listing.get(&op.key);
                let everywhere = identical.map(|l| l.get(&op.key).map(|e| &e.0));
                if on_leader != Some(v) || everywhere.is_some_and(|e| e != Some(v)) {
                    lost.push(format!("{} (acknowledged to client {})", op.key, op.client));
                }
            }
        }
        if lost.is_empty() {
            self.timing(format!(
                "all {acked} acknowledged unique-key writes are present"
            ));
        } else {
            self.fail(format!(
                "{} of {acked} acknowledged unique-key writes are lost, e.g. {}",
                lost.len(),
                lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
}
