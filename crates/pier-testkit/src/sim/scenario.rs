//! The fleet scenario of issue 16: deploy every service at once, roll all of them to a new
//! image, silence a tenth of the nodes; time each phase as a user would see it (through the
//! API and the catalog), watch that no live node is ever marked down, and measure the API's
//! latency and the server's idle cost at the end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_api::service::{DeployResponse, DeploymentStatus, ServiceSummary};

use super::{Fleet, Latency};

#[derive(Clone, Debug)]
pub struct Scenario {
    pub services: usize,
    pub tasks_per_service: u32,
    /// `[deploy] min_healthy_time` of every service.
    pub min_healthy_time: String,
    /// Nodes silenced in the last phase, in percent of the fleet.
    pub silence_percent: usize,
    /// Each phase fails after this long.
    pub phase_timeout: Duration,
    /// The server's process, for its idle CPU and memory (figures left out without it).
    pub server_pid: Option<u32>,
    /// How long the idle CPU is measured.
    pub idle_window: Duration,
}

impl Scenario {
    pub fn new(services: usize, tasks_per_service: u32) -> Scenario {
        Scenario {
            services,
            tasks_per_service,
            min_healthy_time: "3s".into(),
            silence_percent: 10,
            phase_timeout: Duration::from_secs(600),
            server_pid: None,
            idle_window: Duration::from_secs(10),
        }
    }
}

/// Every figure of a run; times in seconds from the first request of the phase.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub tasks: u64,
    pub deploy_requests_s: f64,
    /// Every task handed to a simulated node.
    pub placed_s: f64,
    /// Every service at its count, healthy in the API, deployment succeeded.
    pub healthy_s: f64,
    pub rolling_update_s: f64,
    pub silenced_nodes: usize,
    /// Every service back at its count of passing catalog instances on live nodes.
    pub failover_s: f64,
    /// Times a node that was heartbeating was seen down (must stay 0).
    pub live_node_down_sightings: u64,
    pub services_api: Latency,
    pub health_api: Latency,
    pub nodes_api: Latency,
    pub idle_cpu_percent: Option<f64>,
    pub rss_mib: Option<u64>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks = self.tasks as f64;
        writeln!(f, "tasks                      {}", self.tasks)?;
        writeln!(
            f,
            "deploy requests done       {:.2} s",
            self.deploy_requests_s
        )?;
        writeln!(
            f,
            "all placed (at the agents) {:.2} s  ({:.0} placements/s end to end)",
            self.placed_s,
            tasks / self.placed_s.max(0.001)
        )?;
        writeln!(
            f,
            "all healthy, succeeded     {:.2} s  ({:.2} s after the last placement)",
            self.healthy_s,
            self.healthy_s - self.placed_s
        )?;
        writeln!(
            f,
            "rolling update of all      {:.2} s  ({:.2} ms of wall time per task)",
            self.rolling_update_s,
            1000.0 * self.rolling_update_s / tasks.max(1.0)
        )?;
        writeln!(
            f,
            "{} nodes silenced: tasks passing elsewhere after {:.2} s",
            self.silenced_nodes, self.failover_s
        )?;
        writeln!(
            f,
            "live nodes seen down       {}",
            self.live_node_down_sightings
        )?;
        writeln!(f, "GET /api/v1/services       {}", self.services_api)?;
        writeln!(f, "GET /v1/health/service/?passing {}", self.health_api)?;
        writeln!(f, "GET /api/v1/nodes (during the run) {}", self.nodes_api)?;
        if let (Some(cpu), Some(rss)) = (self.idle_cpu_percent, self.rss_mib) {
            writeln!(
                f,
                "idle server                {cpu:.1} % of one core, {rss} MiB RSS"
            )?;
        }
        Ok(())
    }
}

fn service_file(name: &str, tag: &str, count: u32, min_healthy_time: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"sim.example/app:{tag}\"\ncount = {count}\nport = 8080\n\
         cpu = 10\nmemory = \"16MiB\"\n\n[deploy]\nmax_surge = \"25%\"\n\
         min_healthy_time = \"{min_healthy_time}\"\n"
    )
}

/// Runs the whole scenario against the fleet's server.
pub async fn run(fleet: &Fleet, scenario: &Scenario) -> Result<Figures, String> {
    let server = fleet.server().to_string();
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..scenario.services).map(|i| format!("svc-{i}")).collect();
    let mut figures = Figures {
        tasks: scenario.services as u64 * u64::from(scenario.tasks_per_service),
        ..Figures::default()
    };
    let monitor = NodeMonitor::start(&server);

    // 1. Every service deployed at once.
    let started = Instant::now();
    deploy_all(&http, &server, &names, "v1", scenario).await?;
    figures.deploy_requests_s = started.elapsed().as_secs_f64();
    wait_until("every task placed", scenario.phase_timeout, || async {
        fleet.stats().tasks_received >= figures.tasks
    })
    .await?;
    figures.placed_s = started.elapsed().as_secs_f64();
    wait_until("every service healthy", scenario.phase_timeout, || async {
        all_succeeded(&http, &server, &names, None, scenario.tasks_per_service).await
    })
    .await?;
    figures.healthy_s = started.elapsed().as_secs_f64();

    // 2. Every service rolled to a new image.
    let started = Instant::now();
    let revisions = deploy_all(&http, &server, &names, "v2", scenario).await?;
    wait_until(
        "every rolling update done",
        scenario.phase_timeout,
        || async {
            all_succeeded(
                &http,
                &server,
                &names,
                Some(&revisions),
                scenario.tasks_per_service,
            )
            .await
        },
    )
    .await?;
    figures.rolling_update_s = started.elapsed().as_secs_f64();

    // 3. A share of the nodes goes silent.
    let silent_count = fleet.names().len() * scenario.silence_percent / 100;
    let started = Instant::now();
    let silenced: HashSet<String> = fleet.silence(silent_count).into_iter().collect();
    monitor.set_silenced(&silenced);
    figures.silenced_nodes = silenced.len();
    wait_until(
        "tasks passing away from the silent nodes",
        scenario.phase_timeout,
        || async {
            passing_on_live_nodes(
                &http,
                &server,
                &names,
                &silenced,
                scenario.tasks_per_service,
            )
            .await
        },
    )
    .await?;
    figures.failover_s = started.elapsed().as_secs_f64();

    let (sightings, nodes_latency) = monitor.stop().await;
    figures.live_node_down_sightings = sightings;
    figures.nodes_api = nodes_latency;
    figures.services_api = latency_of(&http, &format!("{server}/api/v1/services"), 100).await?;
    figures.health_api = latency_of(
        &http,
        &format!("{server}/v1/health/service/{}?passing", names[0]),
        100,
    )
    .await?;
    if let Some(pid) = scenario.server_pid {
        figures.idle_cpu_percent = Some(cpu_percent(pid, scenario.idle_window).await?);
        figures.rss_mib = rss_mib(pid);
    }
    Ok(figures)
}

/// Deploys every service with `tag`, 8 requests in flight: each service's new revision.
async fn deploy_all(
    http: &reqwest::Client,
    server: &str,
    names: &[String],
    tag: &str,
    scenario: &Scenario,
) -> Result<Vec<u64>, String> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(8));
    let requests = names.iter().map(|name| {
        let file = service_file(
            name,
            tag,
            scenario.tasks_per_service,
            &scenario.min_healthy_time,
        );
        let (http, semaphore) = (http.clone(), semaphore.clone());
        let url = format!("{server}/api/v1/services");
        async move {
            let _permit = semaphore.acquire().await.map_err(|e| e.to_string())?;
            let r = http
                .post(&url)
                .json(&serde_json::json!({ "file": file }))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| format!("deploy: {e}"))?;
            if !r.status().is_success() {
                let status = r.status();
                return Err(format!(
                    "deploy: {status} {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            let resp: DeployResponse = r.json().await.map_err(|e| format!("deploy: {e}"))?;
            Ok(resp.revision)
        }
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .collect()
}

/// Every service at `count` healthy with its deployment succeeded (at `revisions`, when given).
async fn all_succeeded(
    http: &reqwest::Client,
    server: &str,
    names: &[String],
    revisions: Option<&[u64]>,
    count: u32,
) -> bool {
    let Ok(list) =
        get_json::<Vec<ServiceSummary>>(http, &format!("{server}/api/v1/services")).await
    else {
        return false;
    };
    names.iter().enumerate().all(|(i, name)| {
        list.iter().any(|s| {
            &s.name == name
                && s.desired == count
                && s.healthy == count
                && s.deployment_status == Some(DeploymentStatus::Succeeded)
                && revisions.is_none_or(|r| s.revision == r[i])
        })
    })
}

/// Every service has `count` passing catalog instances on nodes outside `silenced`.
async fn passing_on_live_nodes(
    http: &reqwest::Client,
    server: &str,
    names: &[String],
    silenced: &HashSet<String>,
    count: u32,
) -> bool {
    for name in names {
        let url = format!("{server}/v1/health/service/{name}?passing");
        let Ok(entries) = get_json::<Vec<serde_json::Value>>(http, &url).await else {
            return false;
        };
        let live = entries
            .iter()
            .filter(|e| {
                e["Node"]["Node"]
                    .as_str()
                    .is_some_and(|n| !silenced.contains(n))
            })
            .count();
        if live < count as usize {
            return false;
        }
    }
    true
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let r = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    r.json().await.map_err(|e| e.to_string())
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what}: not within {timeout:?}"))
}

/// `count` sequential GETs of `url`: their latency.
async fn latency_of(http: &reqwest::Client, url: &str, count: usize) -> Result<Latency, String> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let r = http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = r.status().is_success();
        r.bytes().await.map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!("{url} failed"));
        }
        samples.push(started.elapsed().as_millis() as u32);
    }
    Ok(Latency::of(&samples))
}

/// Samples `GET /api/v1/nodes` every 500 ms and counts nodes seen down that were still
/// heartbeating (not silenced by the scenario).
struct NodeMonitor {
    stop: Arc<AtomicBool>,
    silenced: Arc<Mutex<HashSet<String>>>,
    sightings: Arc<AtomicU64>,
    latency: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeMonitor {
    fn start(server: &str) -> NodeMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let silenced = Arc::new(Mutex::new(HashSet::new()));
        let sightings = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{server}/api/v1/nodes");
        let task = tokio::spawn({
            let (stop, silenced, sightings, latency) = (
                stop.clone(),
                silenced.clone(),
                sightings.clone(),
                latency.clone(),
            );
            async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    if let Ok(nodes) = get_json::<Vec<serde_json::Value>>(&http, &url).await {
                        let elapsed = started.elapsed().as_millis() as u32;
                        latency
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(elapsed);
                        let silenced = silenced.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let down = nodes
                            .iter()
                            .filter(|n| n["state"] == "down")
                            .filter(|n| n["name"].as_str().is_some_and(|m| !silenced.contains(m)))
                            .count();
                        sightings.fetch_add(down as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        NodeMonitor {
            stop,
            silenced,
            sightings,
            latency,
            task,
        }
    }

    fn set_silenced(&self, names: &HashSet<String>) {
        *self.silenced.lock().unwrap_or_else(|p| p.into_inner()) = names.clone();
    }

    async fn stop(self) -> (u64, Latency) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let samples = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            self.sightings.load(Ordering::Relaxed),
            Latency::of(&samples),
        )
    }
}

/// CPU time of a process (user + system), in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    Ok(field(11) + field(12))
}

/// Percent of one core a process used over `window`.
async fn cpu_percent(pid: u32, window: Duration) -> Result<f64, String> {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(window).await;
    let after = cpu_ticks(pid)?;
    Ok(100.0 * (after - before) as f64 / ticks_per_s / window.as_secs_f64())
}

fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}
