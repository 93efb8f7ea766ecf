//! A fleet of simulated agents speaking pier's real agent protocol (register, heartbeat,
//! blocking task watch, status reports), and a scenario that drives a server through what a
//! fleet does: deploy many services at once, roll them all to a new image, lose a tenth of
//! the nodes. Used by `bench/scale` (thousands of nodes) and by a CI test at a small size, so
//! a control plane that turns quadratic fails a test.
//!
//! A simulated node runs no container: a task it is given reports `running` and `healthy` at
//! once, and `exited` as soon as the server asks it to stop. Everything the server sees comes
//! through the same HTTP calls a `pier agent` makes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_api::service::{
    AgentTasks, DesiredState, RegisterNode, StopPhase, TaskHealth, TaskState, TaskStatus,
};
use pier_api::time::now_ms;

pub mod scenario;

/// How many latency samples a fleet keeps per kind (older ones are dropped).
const MAX_SAMPLES: usize = 200_000;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Base URL of the server's API, e.g. `http://127.0.0.1:8500`.
    pub server: String,
    /// Node names are `<prefix>-<n>`.
    pub prefix: String,
    pub nodes: usize,
    /// Nodes are spread over zones `z0`, `z1`, ...
    pub zones: usize,
    /// What `pier agent` sends by default (500 ms).
    pub heartbeat_interval_ms: u64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

impl FleetConfig {
    pub fn new(server: &str, nodes: usize) -> FleetConfig {
        FleetConfig {
            server: server.trim_end_matches('/').to_string(),
            prefix: "sim".into(),
            nodes,
            zones: 3,
            heartbeat_interval_ms: 500,
            cpu_millis: 64_000,
            memory_mb: 262_144,
        }
    }
}

/// What the fleet saw, shared by every simulated node.
#[derive(Default)]
struct Counters {
    /// Distinct tasks ever given to a node to run.
    tasks_received: AtomicU64,
    reports_sent: AtomicU64,
    report_errors: AtomicU64,
    heartbeat_errors: AtomicU64,
    heartbeat_ms: Mutex<VecDeque<u32>>,
    report_ms: Mutex<VecDeque<u32>>,
}

impl Counters {
    /// Keeps the newest MAX_SAMPLES: a ring, since every heartbeat of the fleet lands here.
    fn sample(list: &Mutex<VecDeque<u32>>, elapsed: Duration) {
        let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_SAMPLES {
            list.pop_front();
        }
        list.push_back(elapsed.as_millis().min(u32::MAX as u128) as u32);
    }
}

/// A running fleet; dropping it stops every simulated node.
pub struct Fleet {
    config: FleetConfig,
    names: Vec<String>,
    alive: Vec<Arc<AtomicBool>>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Percentiles of latency samples, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: u32,
    pub p99_ms: u32,
    pub max_ms: u32,
}

impl Latency {
    pub fn of(samples: &[u32]) -> Latency {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let at = |q: f64| s.get(((s.len() as f64 * q) as usize).min(s.len().saturating_sub(1)));
        Latency {
            count: s.len(),
            p50_ms: at(0.50).copied().unwrap_or(0),
            p99_ms: at(0.99).copied().unwrap_or(0),
            max_ms: s.last().copied().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

#[derive(Clone, Debug)]
pub struct FleetStats {
    pub tasks_received: u64,
    pub reports_sent: u64,
    pub report_errors: u64,
    pub heartbeat_errors: u64,
    pub heartbeat: Latency,
    pub report: Latency,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("build the simulator's HTTP client")
}

impl Fleet {
    /// Registers every node (a few at a time), each starting its heartbeat and task watch
    /// as soon as it is registered, as an agent does. Panics when a registration fails: a
    /// fleet that is not there measures nothing.
    pub async fn start(config: FleetConfig) -> Fleet {
        let http = http_client();
        let counters = Arc::new(Counters::default());
        let names: Vec<String> = (0..config.nodes)
            .map(|n| format!("{}-{n}", config.prefix))
            .collect();
        let alive: Vec<Arc<AtomicBool>> = names
            .iter()
            .map(|_| Arc::new(AtomicBool::new(true)))
            .collect();
        let heartbeat_every = Duration::from_millis(config.heartbeat_interval_ms);
        let nodes = names
            .iter()
            .zip(&alive)
            .enumerate()
            .map(|(n, (name, alive))| {
                let node = SimNode {
                    http: http.clone(),
                    server: config.server.clone(),
                    name: name.clone(),
                    alive: alive.clone(),
                    counters: counters.clone(),
                };
                let config = config.clone();
                async move {
                    register(&node.http, &config, &node.name, n).await?;
                    Ok::<_, String>([
                        tokio::spawn(node.clone().heartbeats(heartbeat_every)),
                        tokio::spawn(node.watch()),
                    ])
                }
            });
        let mut tasks = Vec::new();
        let mut failed = None;
        for result in futures_bounded(nodes, 32).await {
            match result {
                Ok(handles) => tasks.extend(handles),
                Err(e) => failed = Some(e),
            }
        }
        let fleet = Fleet {
            config,
            names,
            alive,
            counters,
            tasks,
        };
        if let Some(err) = failed {
            panic!("a simulated node could not register: {err}");
        }
        fleet
    }

    /// The server's API base URL.
    pub fn server(&self) -> &str {
        &self.config.server
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The first `count` nodes stop answering (no heartbeat, no watch, no report), as nodes
    /// cut off or crashed. Returns their names.
    pub fn silence(&self, count: usize) -> Vec<String> {
        for alive in self.alive.iter().take(count) {
            alive.store(false, Ordering::SeqCst);
        }
        self.names.iter().take(count).cloned().collect()
    }

    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        let lock = |m: &Mutex<VecDeque<u32>>| -> Vec<u32> {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect()
        };
        FleetStats {
            tasks_received: c.tasks_received.load(Ordering::Relaxed),
            reports_sent: c.reports_sent.load(Ordering::Relaxed),
            report_errors: c.report_errors.load(Ordering::Relaxed),
            heartbeat_errors: c.heartbeat_errors.load(Ordering::Relaxed),
            heartbeat: Latency::of(&lock(&c.heartbeat_ms)),
            report: Latency::of(&lock(&c.report_ms)),
        }
    }
}

async fn register(
    http: &reqwest::Client,
    config: &FleetConfig,
    name: &str,
    n: usize,
) -> Result<(), String> {
    let body = RegisterNode {
        zone: format!("z{}", n % config.zones.max(1)),
        agent_addr: "127.0.0.1:9".into(),
        host_ip: "127.0.0.1".into(),
        attributes: BTreeMap::new(),
        cpu_millis: config.cpu_millis,
        memory_mb: config.memory_mb,
        volumes: Vec::new(),
        volume_roots: Vec::new(),
    };
    let url = format!("{}/api/v1/nodes/{name}", config.server);
    for attempt in 0..5 {
        match http
            .put(&url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if attempt == 4 => return Err(format!("{name}: {}", r.status())),
            Err(e) if attempt == 4 => return Err(format!("{name}: {e}")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    unreachable!("the last attempt returns")
}

/// Runs `futures` with at most `limit` in flight, returning their outputs in order.
async fn futures_bounded<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) -> Vec<F::Output> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let wrapped = futures.into_iter().map(|f| {
        let semaphore = semaphore.clone();
        async move {
            let _permit = semaphore.acquire().await.expect("semaphore never closed");
            f.await
        }
    });
    futures::future::join_all(wrapped).await
}

#[derive(Clone)]
struct SimNode {
    http: reqwest::Client,
    server: String,
    name: String,
    alive: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// What a simulated node has told the server about a task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Told {
    Running,
    Exited,
}

impl SimNode {
    async fn heartbeats(self, every: Duration) {
        let url = format!("{}/api/v1/nodes/{}/alive", self.server, self.name);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.alive.load(Ordering::SeqCst) {
            tick.tick().await;
            let started = Instant::now();
            // The real agent's heartbeat timeout: its interval, at least 200 ms... but a
            // simulator must see how slow the server is, so it waits up to 2 s.
            let ok = self
                .http
                .put(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            Counters::sample(&self.counters.heartbeat_ms, started.elapsed());
            if !ok {
                self.counters
                    .heartbeat_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn watch(self) {
        let mut index: Option<u64> = None;
        let mut told: HashMap<String, Told> = HashMap::new();
        while self.alive.load(Ordering::SeqCst) {
            let mut url = format!(
                "{}/api/v1/nodes/{}/tasks?wait=10000ms",
                self.server, self.name
            );
            if let Some(i) = index {
                url.push_str(&format!("&index={i}"));
            }
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let tasks: AgentTasks = match resp {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !self.alive.load(Ordering::SeqCst) {
                return;
            }
            index = Some(tasks.index);
            self.act(&tasks, &mut told).await;
        }
    }

    /// Reports what a real agent would after doing what each task record asks.
    async fn act(&self, tasks: &AgentTasks, told: &mut HashMap<String, Told>) {
        let listed: std::collections::HashSet<&str> =
            tasks.tasks.iter().map(|t| t.task.id.as_str()).collect();
        told.retain(|id, _| listed.contains(id.as_str()));
        for t in &tasks.tasks {
            let record = &t.task;
            let want = match record.stop_phase {
                StopPhase::Active if record.desired == DesiredState::Running => Told::Running,
                StopPhase::Active | StopPhase::Draining { .. } => continue,
                StopPhase::Stopping { .. } | StopPhase::Stopped => Told::Exited,
            };
            if told.get(&record.id) == Some(&want) {
                continue;
            }
            if want == Told::Running && !told.contains_key(&record.id) {
                self.counters.tasks_received.fetch_add(1, Ordering::Relaxed);
            }
            let status = status_for(&record.id, &t.spec.ports, want);
            if self.report(&record.id, &status).await {
                told.insert(record.id.clone(), want);
            }
        }
    }

    async fn report(&self, task: &str, status: &TaskStatus) -> bool {
        let url = format!(
            "{}/api/v1/tasks/{task}/status?node={}",
            self.server, self.name
        );
        let started = Instant::now();
        let ok = self
            .http
            .put(&url)
            .json(status)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        Counters::sample(&self.counters.report_ms, started.elapsed());
        let counter = if ok {
            &self.counters.reports_sent
        } else {
            &self.counters.report_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }
}

/// A running and healthy task with made-up host ports, or one that exited after its stop.
fn status_for(task: &str, ports: &[u16], told: Told) -> TaskStatus {
    let now = now_ms();
    // A stable fake host port per task and container port.
    let host_port = |p: u16| {
        let h = task.bytes().fold(u32::from(p), |h, b| {
            h.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        20_000 + (h % 40_000) as u16
    };
    let mut status = TaskStatus {
        container_id: Some(format!("sim-{task}")),
        host_ip: Some("127.0.0.1".into()),
        host_ports: ports.iter().map(|&p| (p, host_port(p))).collect(),
        started_at_ms: Some(now),
        updated_at_ms: now,
        ..TaskStatus::default()
    };
    match told {
        Told::Running => {
            status.state = TaskState::Running;
            status.health = TaskHealth::Healthy;
            status.healthy_since_ms = Some(now);
        }
        Told::Exited => {
            status.state = TaskState::Exited;
            status.exit_code = Some(0);
            status.finished_at_ms = Some(now);
        }
    }
    status
}
