//! Failover benchmark of issue 12, pier against etcd, run by `bench/faults/run.sh`.
//!
//! Three pier servers and three etcd members run side by side, one of each per network
//! namespace (`pier_testkit::netns`), both with their default settings. For each fault case
//! and each system, a round runs two kinds of writers against every member at once:
//!
//! * **closed loop**: one writer per member that waits for each answer (30 s timeout) and sends
//!   the next write at once (after an error, 20 ms later) — what a simple client sees;
//! * **open loop**: a new write to every member every 50 ms, each on its own — when the cluster
//!   accepts writes again, whatever requests are stuck.
//!
//! After a warm-up comes the fault; for each kind, measured is the time from the fault to the
//! first acknowledged write *sent after it*. Then the fault is repaired and both clusters are
//! waited on until every member has applied everything and a write succeeds; a cluster that
//! does not recover within 60 s is rebuilt from empty data directories (and said so), so one
//! broken round does not end the benchmark. Rounds alternate pier / etcd.
//!
//! Then "behind": a follower is cut off from its peers, the leader's log grows by `--behind`
//! entries (concurrent writes to one key: each its own entry in both systems), the follower is
//! healed, and the time until it has applied the leader's commit index is measured.
//!
//! ```text
//! faults_bench --pier PATH [--etcd PATH] [--rounds 10] [--behind 10000] [--behind-rounds 3]
//!              [--cases leader_isolated,follower_isolated,bridge_partition,leader_kill9,full_restart]
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use pier_testkit::netns::Net;
use pier_testkit::process::PierProcess;
use serde_json::{json, Value};

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A round whose writes do not come back within this counts as this long (and says so).
const ROUND_LIMIT: Duration = Duration::from_secs(30);
const WARM_UP: Duration = Duration::from_millis(1500);
/// The open-loop writers send one write to every member this often.
const OPEN_LOOP_EVERY: Duration = Duration::from_millis(50);
/// A cluster that is not healthy this long after a round is rebuilt.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sys {
    Pier,
    Etcd,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Pier => "pier",
            Sys::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    LeaderIsolated,
    FollowerIsolated,
    BridgePartition,
    LeaderKill9,
    FullRestart,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::LeaderIsolated,
        Case::FollowerIsolated,
        Case::BridgePartition,
        Case::LeaderKill9,
        Case::FullRestart,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::LeaderIsolated => "leader_isolated",
            Case::FollowerIsolated => "follower_isolated",
            Case::BridgePartition => "bridge_partition",
            Case::LeaderKill9 => "leader_kill9",
            Case::FullRestart => "full_restart",
        }
    }
}

/// What a member says about itself.
#[derive(Clone, Copy, Debug)]
struct Status {
    leader: bool,
    term: u64,
    commit: u64,
    applied: u64,
}

struct Member {
    proc: Option<PierProcess>,
    data: PathBuf,
}

struct Bench {
    net: Net,
    dir: PathBuf,
    http: reqwest::Client,
    pier_bin: String,
    etcd_bin: String,
    pier: Vec<Member>,
    etcd: Vec<Member>,
    /// Times each system had to be rebuilt after not recovering.
    rebuilds: [usize; 2],
}

/// A JSON number or a string holding one (etcd's gateway writes uint64 as strings).
fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Bench {
    fn members(&mut self, sys: Sys) -> &mut Vec<Member> {
        match sys {
            Sys::Pier => &mut self.pier,
            Sys::Etcd => &mut self.etcd,
        }
    }

    fn url(&self, sys: Sys, host: usize) -> String {
        match sys {
            Sys::Pier => format!("http://{}:8500", self.net.addr(host)),
            Sys::Etcd => format!("http://{}:2379", self.net.addr(host)),
        }
    }

    fn start(&mut self, sys: Sys, host: usize) {
        let dir = self.dir.clone();
        let addr = self.net.addr(host).to_string();
        let data = self.members(sys)[host].data.to_string_lossy().into_owned();
        let name = format!("{}{}", sys.name(), host + 1);
        let args: Vec<String> = match sys {
            Sys::Pier => {
                let join: Vec<String> = (0..3)
                    .map(|i| format!("{}:8300", self.net.addr(i)))
                    .collect();
                vec![
                    "server".into(),
                    "--insecure".into(),
                    "--data-dir".into(),
                    data,
                    "--node-name".into(),
                    name.clone(),
                    "--bind".into(),
                    addr,
                    "--bootstrap-expect".into(),
                    "3".into(),
                    "--join".into(),
                    join.join(","),
                ]
            }
            Sys::Etcd => {
                let cluster: Vec<String> = (0..3)
                    .map(|i| format!("etcd{}=http://{}:2380", i + 1, self.net.addr(i)))
                    .collect();
                vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    data,
                    "--listen-client-urls".into(),
                    format!("http://{addr}:2379"),
                    "--advertise-client-urls".into(),
                    format!("http://{addr}:2379"),
                    "--listen-peer-urls".into(),
                    format!("http://{addr}:2380"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://{addr}:2380"),
                    "--initial-cluster".into(),
                    cluster.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    "pier-faults-bench".into(),
                    "--log-level".into(),
                    "info".into(),
                    "--logger".into(),
                    "zap".into(),
                ]
            }
        };
        let bin = match sys {
            Sys::Pier => self.pier_bin.clone(),
            Sys::Etcd => self.etcd_bin.clone(),
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = self.net.spawn(host, &bin, &name, &refs, &dir);
        self.members(sys)[host].proc = Some(proc);
    }

    fn kill9(&mut self, sys: Sys, host: usize) {
        if let Some(mut p) = self.members(sys)[host].proc.take() {
            p.kill9();
        }
    }

    fn stop(&mut self, sys: Sys, host: usize) {
        if let Some(mut p) = self.members(sys)[host].proc.take() {
            p.signal_and_wait("TERM", Duration::from_secs(15));
        }
    }

    async fn status(&self, sys: Sys, host: usize) -> Option<Status> {
        let base = self.url(sys, host);
        let req = match sys {
            Sys::Pier => self.http.get(format!("{base}/api/v1/status")),
            Sys::Etcd => self
                .http
                .post(format!("{base}/v3/maintenance/status"))
                .json(&json!({})),
        };
        let v: Value = req
            .timeout(Duration::from_millis(800))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(match sys {
            Sys::Pier => Status {
                leader: v["is_leader"] == Value::Bool(true),
                term: num(&v["term"]),
                commit: num(&v["commit_index"]),
                applied: num(&v["last_applied_index"]),
            },
            Sys::Etcd => Status {
                leader: num(&v["leader"]) != 0
                    && num(&v["leader"]) == num(&v["header"]["member_id"]),
                term: num(&v["raftTerm"]),
                commit: num(&v["raftIndex"]),
                applied: num(&v["raftAppliedIndex"]),
            },
        })
    }

    async fn write(
        http: &reqwest::Client,
        sys: Sys,
        base: &str,
        key: &str,
        value: &str,
    ) -> Result<(), String> {
        let req = match sys {
            Sys::Pier => http
                .put(format!("{base}/api/v1/kv/{key}"))
                .body(value.to_string()),
            Sys::Etcd => http
                .post(format!("{base}/v3/kv/put"))
                .json(&json!({"key": b64(key), "value": b64(value)})),
        };
        let resp = req
            .timeout(WRITE_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        let ok = match sys {
            Sys::Pier => status.is_success() && body["written"] == Value::Bool(true),
            Sys::Etcd => status.is_success() && body.get("error").is_none(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    /// The member that leads with the highest term, waiting up to `limit`.
    async fn leader(&self, sys: Sys, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let mut best: Option<(u64, usize)> = None;
            for h in 0..3 {
                if let Some(st) = self.status(sys, h).await {
                    if st.leader && best.is_none_or(|(t, _)| st.term > t) {
                        best = Some((st.term, h));
                    }
                }
            }
            if let Some((_, h)) = best {
                return Some(h);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until a write through the leader succeeds and every member has applied the leader's
    /// commit index; false after `limit`.
    async fn healthy_within(&self, sys: Sys, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.leader(sys, Duration::from_secs(5)).await {
                let base = self.url(sys, l);
                if Bench::write(&self.http, sys, &base, "bench/health", "x")
                    .await
                    .is_ok()
                {
                    if let Some(target) = self.status(sys, l).await.map(|s| s.commit) {
                        let mut all = true;
                        for h in 0..3 {
                            all &= self
                                .status(sys, h)
                                .await
                                .is_some_and(|s| s.applied >= target);
                        }
                        if all {
                            return true;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `sys` to be healthy; if it is not within [`RECOVERY_LIMIT`], kills it and
    /// starts it again from empty data directories (keeping the old ones for a look).
    async fn recover(&mut self, sys: Sys) {
        if self.healthy_within(sys, RECOVERY_LIMIT).await {
            return;
        }
        let n = &mut self.rebuilds[usize::from(sys == Sys::Etcd)];
        *n += 1;
        let n = *n;
        println!(
            "  !! {} did not recover within {RECOVERY_LIMIT:?}: rebuilding it from empty data directories (rebuild {n}; the old ones are kept in {})",
            sys.name(),
            self.dir.display()
        );
        for h in 0..3 {
            self.kill9(sys, h);
            let data = self.members(sys)[h].data.clone();
            let kept = data.with_extension(format!("broken-{n}"));
            std::fs::rename(&data, &kept)
                .unwrap_or_else(|e| panic!("move {} away: {e}", data.display()));
        }
        for h in 0..3 {
            self.start(sys, h);
        }
        assert!(
            self.healthy_within(sys, Duration::from_secs(60)).await,
            "{} did not form a healthy cluster from empty data directories within 60 s; logs in {}",
            sys.name(),
            self.dir.display()
        );
    }

    /// One measured round: closed-loop and open-loop writers on every member, the fault, the
    /// time to the first acknowledged write sent after it for each; then repair and recovery.
    async fn round(&mut self, sys: Sys, case: Case) -> [(Duration, bool); 2] {
        // (open loop?, sent, acknowledged)
        let acks: Arc<Mutex<Vec<(bool, Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for h in 0..3 {
            let http = self.http.clone();
            let base = self.url(sys, h);
            let acks = acks.clone();
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    n += 1;
                    let sent = Instant::now();
                    let key = format!("bench/closed{h}");
                    match Bench::write(&http, sys, &base, &key, &n.to_string()).await {
                        Ok(()) => acks.lock().unwrap_or_else(|p| p.into_inner()).push((
                            false,
                            sent,
                            Instant::now(),
                        )),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        let open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        {
            let http = self.http.clone();
            let bases: Vec<String> = (0..3).map(|h| self.url(sys, h)).collect();
            let acks = acks.clone();
            let open_tasks = open.clone();
            writers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(OPEN_LOOP_EVERY);
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    for (h, base) in bases.iter().enumerate() {
                        n += 1;
                        let (http, base, acks) = (http.clone(), base.clone(), acks.clone());
                        let task = tokio::spawn(async move {
                            let sent = Instant::now();
                            let key = format!("bench/open{h}");
                            if Bench::write(&http, sys, &base, &key, &n.to_string())
                                .await
                                .is_ok()
                            {
                                acks.lock().unwrap_or_else(|p| p.into_inner()).push((
                                    true,
                                    sent,
                                    Instant::now(),
                                ));
                            }
                        });
                        let mut tasks = open_tasks.lock().unwrap_or_else(|p| p.into_inner());
                        tasks.retain(|t| !t.is_finished());
                        tasks.push(task);
                    }
                }
            }));
        }
        tokio::time::sleep(WARM_UP).await;
        let leader = self
            .leader(sys, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{}: no leader before the fault", sys.name()));
        let follower = (leader + 1) % 3;
        let fault_at;
        let mut repair: Vec<usize> = Vec::new();
        match case {
            Case::LeaderIsolated => {
                self.net.isolate(leader);
                fault_at = Instant::now();
            }
            Case::FollowerIsolated => {
                self.net.isolate(follower);
                fault_at = Instant::now();
            }
            Case::BridgePartition => {
                self.net.cut(leader, follower);
                fault_at = Instant::now();
            }
            Case::LeaderKill9 => {
                self.kill9(sys, leader);
                fault_at = Instant::now();
                repair.push(leader);
            }
            Case::FullRestart => {
                for h in 0..3 {
                    self.stop(sys, h);
                }
                for h in 0..3 {
                    self.start(sys, h);
                }
                fault_at = Instant::now();
            }
        }
        let first = |open_loop: bool| {
            acks.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(o, sent, _)| *o == open_loop && *sent >= fault_at)
                .map(|(_, _, acked)| *acked - fault_at)
                .min()
        };
        let result = loop {
            let (closed, open_first) = (first(false), first(true));
            if let (Some(c), Some(o)) = (closed, open_first) {
                break [(c, true), (o, true)];
            }
            if fault_at.elapsed() > ROUND_LIMIT {
                let at_limit = |d: Option<Duration>| d.map_or((ROUND_LIMIT, false), |d| (d, true));
                break [at_limit(closed), at_limit(open_first)];
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for w in writers {
            w.abort();
        }
        for t in open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        self.net.heal();
        for h in repair {
            self.start(sys, h);
        }
        self.recover(Sys::Pier).await;
        self.recover(Sys::Etcd).await;
        result
    }

    /// A follower `behind` entries behind, healed: time until it applied the leader's commit.
    async fn behind_round(&mut self, sys: Sys, behind: u64) -> (Duration, bool) {
        let leader = self
            .leader(sys, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{}: no leader", sys.name()));
        let follower = (leader + 1) % 3;
        let start = self
            .status(sys, leader)
            .await
            .map(|s| s.commit)
            .unwrap_or(0);
        self.net.isolate(follower);
        let base = self.url(sys, leader);
        let target = start + behind;
        let mut tasks = Vec::new();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for w in 0..32 {
            let http = self.http.clone();
            let base = base.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let _ =
                        Bench::write(&http, sys, &base, "bench/fill", &format!("{w}-{n}")).await;
                }
            }));
        }
        let fill_started = Instant::now();
        loop {
            let commit = self
                .status(sys, leader)
                .await
                .map(|s| s.commit)
                .unwrap_or(0);
            if commit >= target {
                break;
            }
            assert!(
                fill_started.elapsed() < Duration::from_secs(300),
                "{}: the leader's log grew only to {commit} of {target} in 300 s",
                sys.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let target = self
            .status(sys, leader)
            .await
            .map(|s| s.commit)
            .unwrap_or(target);
        let lag = target.saturating_sub(
            self.status(sys, follower)
                .await
                .map(|s| s.applied)
                .unwrap_or(0),
        );
        self.net.heal();
        let healed = Instant::now();
        let result = loop {
            if self
                .status(sys, follower)
                .await
                .is_some_and(|s| s.applied >= target)
            {
                break (healed.elapsed(), true);
            }
            if healed.elapsed() > Duration::from_secs(60) {
                break (Duration::from_secs(60), false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!(
            "  {} behind: follower {} was {lag} entries behind, caught up: {} after {:.3} s",
            sys.name(),
            follower + 1,
            result.1,
            result.0.as_secs_f64()
        );
        self.recover(Sys::Pier).await;
        self.recover(Sys::Etcd).await;
        result
    }
}

struct Stats {
    median: Duration,
    max: Duration,
    misses: usize,
}

fn stats(samples: &[(Duration, bool)]) -> Stats {
    let mut v: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    v.sort();
    let median = if v.is_empty() {
        Duration::ZERO
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    };
    Stats {
        median,
        max: v.last().copied().unwrap_or_default(),
        misses: samples.iter().filter(|s| !s.1).count(),
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
    }
}

fn print_row(label: &str, pier: &[(Duration, bool)], etcd: &[(Duration, bool)]) {
    let (p, e) = (stats(pier), stats(etcd));
    let miss = |s: &Stats| {
        if s.misses > 0 {
            format!(" ({} ≥ limit)", s.misses)
        } else {
            String::new()
        }
    };
    println!(
        "{label:<20} {:>8.3} {:>8.3}{:<12} {:>8.3} {:>8.3}{:<12} {:>7} {:>7}",
        p.median.as_secs_f64(),
        p.max.as_secs_f64(),
        miss(&p),
        e.median.as_secs_f64(),
        e.max.as_secs_f64(),
        miss(&e),
        ratio(p.median, e.median),
        ratio(p.max, e.max)
    );
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pier_bin = arg(&args, "--pier").expect("--pier PATH to the release pier binary");
    let etcd_bin = arg(&args, "--etcd").unwrap_or_else(|| "/usr/bin/etcd".into());
    let rounds: usize = arg(&args, "--rounds").map_or(10, |r| r.parse().expect("--rounds N"));
    let behind: u64 = arg(&args, "--behind").map_or(10_000, |r| r.parse().expect("--behind N"));
    let behind_rounds: usize =
        arg(&args, "--behind-rounds").map_or(3, |r| r.parse().expect("--behind-rounds N"));
    let cases: Vec<Case> = match arg(&args, "--cases") {
        None => Case::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                *Case::ALL
                    .iter()
                    .find(|c| c.name() == s)
                    .unwrap_or_else(|| panic!("unknown case {s}"))
            })
            .collect(),
    };

    let net = Net::new(3);
    // Kept: after a run, the logs are the first thing to look at; printed at the start.
    let dir = tempfile::Builder::new()
        .prefix("pier-faults-bench-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let member = |sys: &str, i: usize| Member {
        proc: None,
        data: dir.join(format!("{sys}{}-data", i + 1)),
    };
    let pier: Vec<Member> = (0..3).map(|i| member("pier", i)).collect();
    let etcd: Vec<Member> = (0..3).map(|i| member("etcd", i)).collect();
    let mut b = Bench {
        net,
        http: reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("HTTP client"),
        pier_bin,
        etcd_bin,
        pier,
        etcd,
        dir,
        rebuilds: [0, 0],
    };
    println!("logs and data in {} (delete it when done)", b.dir.display());
    for h in 0..3 {
        b.start(Sys::Pier, h);
        b.start(Sys::Etcd, h);
    }
    for sys in [Sys::Pier, Sys::Etcd] {
        assert!(
            b.healthy_within(sys, Duration::from_secs(60)).await,
            "{} did not form a cluster within 60 s; logs in {}",
            sys.name(),
            b.dir.display()
        );
    }

    type Samples = Vec<(Duration, bool)>;
    // Per case: [closed, open] x [pier, etcd].
    let mut results: Vec<(Case, [[Samples; 2]; 2])> = Vec::new();
    for &case in &cases {
        let mut got: [[Samples; 2]; 2] = Default::default();
        for r in 0..rounds {
            for sys in [Sys::Pier, Sys::Etcd] {
                let [closed, open] = b.round(sys, case).await;
                let show = |(d, ok): (Duration, bool)| {
                    format!(
                        "{:.3} s{}",
                        d.as_secs_f64(),
                        if ok { "" } else { " (none within the limit)" }
                    )
                };
                println!(
                    "  {} round {} {}: closed loop {}, open loop {}",
                    case.name(),
                    r + 1,
                    sys.name(),
                    show(closed),
                    show(open)
                );
                let i = usize::from(sys == Sys::Etcd);
                got[0][i].push(closed);
                got[1][i].push(open);
            }
        }
        results.push((case, got));
    }
    let (mut bp, mut be) = (Vec::new(), Vec::new());
    for _ in 0..behind_rounds {
        bp.push(b.behind_round(Sys::Pier, behind).await);
        be.push(b.behind_round(Sys::Etcd, behind).await);
    }

    println!();
    for (kind, k) in [
        (
            "closed loop (a writer per member that waits for each answer)",
            0,
        ),
        ("open loop (a new write to every member every 50 ms)", 1),
    ] {
        println!("time from fault to the next acknowledged write (s), {rounds} rounds, {kind}");
        println!(
            "{:<20} {:>8} {:>8}{:<12} {:>8} {:>8}{:<12} {:>7} {:>7}",
            "case", "pier p50", "max", "", "etcd p50", "max", "", "p50 x", "max x"
        );
        for (case, got) in &results {
            print_row(case.name(), &got[k][0], &got[k][1]);
        }
        println!();
    }
    if behind_rounds > 0 {
        println!(
            "catch-up of a follower healed {behind} entries behind (s), {behind_rounds} rounds"
        );
        print_row(&format!("behind {behind}"), &bp, &be);
    }
    println!(
        "(x = pier / etcd; \"≥ limit\": rounds that hit the limit, counted at the limit; \
         clusters rebuilt after not recovering within {RECOVERY_LIMIT:?}: pier {}, etcd {})",
        b.rebuilds[0], b.rebuilds[1]
    );
    for sys in [Sys::Pier, Sys::Etcd] {
        for h in 0..3 {
            b.kill9(sys, h);
        }
    }
}
