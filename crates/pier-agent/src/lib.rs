//! The node agent: registers its node (capacity from the engine, zone, attributes),
//! heartbeats, watches its tasks with a blocking query, runs each one in a worker that
//! drives the Docker engine (see [`docker`]) and runs its health checks, and reports every
//! transition. An agent that restarts adopts the containers it already runs (found by their
//! labels) instead of starting duplicates; containers of tasks no longer assigned are stopped
//! and removed, so nothing is orphaned.
//!
//! Use: `let agent = Agent::start(AgentConfig { .. }).await?;` … `agent.shutdown().await`.

pub mod client;
pub mod contact;
pub mod docker;
pub mod files;
mod http;
mod probe;
pub mod registry;
pub mod secrets;
pub mod task_env;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use pier_api::service::RegisterNode;
use tokio::sync::mpsc;

use crate::client::{ClientError, ServerClient};
use crate::contact::{Contact, Transition};
use crate::docker::{ContainerInfo, DockerDriver, DockerError};
use crate::worker::{WorkerCtx, WorkerMsg};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The servers' HTTP API addresses, comma separated, e.g. "http://10.0.0.1:8500,10.0.0.2:8500".
    /// One is enough: the agent learns every member from it and fails over between them.
    pub server: String,
    /// Unique node name (default: the host name).
    pub name: String,
    pub zone: String,
    /// The agent's own HTTP listener (logs); port 0 picks a free one.
    pub listen: SocketAddr,
    /// Address container ports are published on and health checks connect to.
    pub host_ip: String,
    pub attributes: BTreeMap<String, String>,
    /// Extra labels on every container; the agent only manages containers that carry all of
    /// them (tests use a per-run label so they never touch each other's containers).
    pub container_labels: BTreeMap<String, String>,
    pub heartbeat_interval_ms: u64,
    /// Override the capacity read from the engine.
    pub cpu_millis: Option<u64>,
    pub memory_mb: Option<u64>,
    /// The node-local registry endpoint (`127.0.0.1:5000`): a pull-through to the cluster
    /// registry. None: not served (`pier dev`, whose registry is on that port itself).
    pub registry_listen: Option<SocketAddr>,
    /// In a secure cluster: the agent's certificate for calling servers, and its listener's
    /// TLS (servers fetch logs with their certificates). None: plain HTTP.
    pub tls: Option<AgentTls>,
    /// The Docker bridge network the agent creates and runs every task on (`pier0`); the
    /// node's gateway and DNS listen on its gateway address, which is each container's
    /// resolver. None: Docker's default bridge, no node resolver.
    pub network: Option<String>,
    /// Whether a service has a healthy instance (for `needs`). None: needs never wait.
    pub readiness: Option<Readiness>,
    /// Where tasks' secret files are written (one directory per task, bind-mounted read-only
    /// at `/run/secrets`): a tmpfs, `/run/pier/secrets` by default.
    pub secrets_dir: std::path::PathBuf,
    /// Host directories under which services may mount host paths (`--volume-root`); empty:
    /// none may.
    pub volume_roots: Vec<String>,
}

/// See [`AgentConfig::readiness`].
#[derive(Clone)]
pub struct Readiness(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness(..)")
    }
}

/// See [`AgentConfig::tls`]. Both can be replaced while the agent runs (renewal).
#[derive(Clone)]
pub struct AgentTls {
    /// Built with the agent's certificate (connect timeout is the caller's choice).
    pub client: pier_net::HttpClient,
    pub listener: pier_net::ServerTls,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentTls { .. }")
    }
}

impl AgentConfig {
    pub fn new(
        server: impl Into<String>,
        name: impl Into<String>,
        zone: impl Into<String>,
    ) -> AgentConfig {
        AgentConfig {
            server: server.into(),
            name: name.into(),
            zone: zone.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            host_ip: "127.0.0.1".into(),
            attributes: BTreeMap::new(),
            container_labels: BTreeMap::new(),
            heartbeat_interval_ms: 500,
            cpu_millis: None,
            memory_mb: None,
            registry_listen: None,
            tls: None,
            network: None,
            readiness: None,
            secrets_dir: secrets::default_dir(),
            volume_roots: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the node-local registry endpoint on {addr}: {source} (pick another --registry-port)")]
    RegistryListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid agent configuration: {0}")]
    Config(String),
}

type Workers = Arc<Mutex<HashMap<String, mpsc::Sender<WorkerMsg>>>>;
pub(crate) type SharedContact = Arc<Mutex<Contact>>;

/// Wall-clock milliseconds since the epoch (what operators compare with their logs).
fn wall_ms() -> u64 {
    pier_api::time::now_ms()
}

pub struct Agent {
    addr: SocketAddr,
    bridge_ip: Option<std::net::Ipv4Addr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.name.is_empty() || config.zone.is_empty() {
            return Err(AgentError::Config(
                "the node name and the zone must not be empty".into(),
            ));
        }
        let docker = DockerDriver::connect(&config.name, config.container_labels.clone())
            .await?
            .with_network(config.network.clone());
        let bridge_ip = match &config.network {
            Some(name) => docker.ensure_network(name).await?.gateway,
            None => None,
        };
        let (engine_cpu, engine_mem) = docker.capacity().await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| AgentError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
        let registry_listener = match config.registry_listen {
            Some(addr) => Some(
                registry::bind(addr)
                    .await
                    .map_err(|source| AgentError::RegistryListen { addr, source })?,
            ),
            None => None,
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let client = ServerClient::new(
            &config.server,
            Duration::from_millis(config.heartbeat_interval_ms),
            config.tls.as_ref().map(|t| t.client.clone()),
        )
        .map_err(|e| AgentError::Config(format!("HTTP client: {e}")))?;
        let registration = RegisterNode {
            zone: config.zone.clone(),
            agent_addr: addr.to_string(),
            host_ip: config.host_ip.clone(),
            attributes: config.attributes.clone(),
            cpu_millis: config.cpu_millis.unwrap_or(engine_cpu),
            memory_mb: config.memory_mb.unwrap_or(engine_mem),
            volumes: docker.list_volumes().await?,
            volume_roots: config.volume_roots.clone(),
        };
        let ctx = Arc::new(WorkerCtx {
            docker: docker.clone(),
            client: client.clone(),
            host_ip: config.host_ip.clone(),
            network: config.network.clone(),
            readiness: config.readiness.clone(),
            secrets: secrets::SecretsDir::new(config.secrets_dir.join(&config.name)),
            volume_roots: config.volume_roots.clone(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        });
        let workers: Workers = Arc::default();
        let contact: SharedContact = Arc::new(Mutex::new(Contact::new(
            wall_ms(),
            contact::cut_off_after_ms(config.heartbeat_interval_ms),
        )));
        let state = http::AppState {
            docker: docker.clone(),
            contact: contact.clone(),
            node: config.name.clone(),
            client: client.clone(),
        };
        let mut tasks = vec![
            tokio::spawn(http::serve(
                listener,
                state,
                config.tls.as_ref().map(|t| t.listener.clone()),
                rx.clone(),
            )),
            tokio::spawn(heartbeat_loop(
                client.clone(),
                docker.clone(),
                config.clone(),
                registration,
                contact,
                rx.clone(),
            )),
            tokio::spawn(events_loop(docker.clone(), workers.clone(), rx.clone())),
            tokio::spawn(sync_loop(ctx, config.name.clone(), workers, rx.clone())),
        ];
        if let Some(listener) = registry_listener {
            tracing::info!(addr = ?listener.local_addr().ok(), "node-local registry endpoint listening");
            tasks.push(tokio::spawn(registry::serve(listener, client.clone(), rx)));
        }
        tracing::info!(node = %config.name, zone = %config.zone, agent = %addr, server = %config.server, "agent started");
        Ok(Agent {
            addr,
            bridge_ip,
            shutdown: tx,
            tasks,
        })
    }

    /// The agent's own HTTP listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host's address on the pier network (where the node's gateway and DNS belong).
    pub fn bridge_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.bridge_ip
    }

    /// Stops the agent's loops. Containers keep running: a restarted agent adopts them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Every this many heartbeats the agent compares its named volumes with what it reported.
const VOLUME_CHECK_EVERY_BEATS: u64 = 2;

/// How often the agent re-reads the cluster's member list.
const MEMBERS_REFRESH_EVERY: Duration = Duration::from_secs(30);

async fn heartbeat_loop(
    client: ServerClient,
    docker: DockerDriver,
    config: AgentConfig,
    mut registration: RegisterNode,
    contact: SharedContact,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut registered = false;
    let mut beats: u64 = 0;
    let mut members_refreshed: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Learn every server of the cluster, so losing the one in use costs one heartbeat.
        if members_refreshed.is_none_or(|at| at.elapsed() >= MEMBERS_REFRESH_EVERY) {
            match client.refresh_members().await {
                Ok(()) => members_refreshed = Some(std::time::Instant::now()),
                Err(e) => tracing::debug!(error = %e, "cannot read the cluster's members yet"),
            }
        }
        // The node's named volumes, reported again (registration) when they change: the
        // scheduler pins services to the node holding theirs.
        beats += 1;
        if beats.is_multiple_of(VOLUME_CHECK_EVERY_BEATS) {
            if let Ok(volumes) = docker.list_volumes().await {
                if volumes != registration.volumes {
                    tracing::info!(?volumes, "this node's volumes changed; reporting them");
                    registration.volumes = volumes;
                    registered = false;
                }
            }
        }
        let outcome = beat(&client, &config, &registration, &mut registered).await;
        let now = wall_ms();
        let transition = {
            let mut c = contact.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Some(Ok(())) => c.acknowledged(now),
                Some(Err(error)) => c.refused(now, error),
                None => None,
            }
        };
        if let Some(t) = transition {
            log_transition(&config, t, now);
        }
        tokio::time::sleep(Duration::from_millis(config.heartbeat_interval_ms)).await;
    }
}

/// One registration or heartbeat: `Some(Ok)` when the quorum acknowledged it, `Some(Err)` when
/// not, `None` for a registration that went through (it says nothing about the quorum: the
/// next heartbeat will).
async fn beat(
    client: &ServerClient,
    config: &AgentConfig,
    registration: &RegisterNode,
    registered: &mut bool,
) -> Option<Result<(), String>> {
    if !*registered {
        return match client.register(&config.name, registration).await {
            Ok(()) => {
                *registered = true;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot register the node; retrying");
                Some(Err(format!("registration failed: {e}")))
            }
        };
    }
    match client.heartbeat(&config.name).await {
        Ok(()) => Some(Ok(())),
        Err(e) => {
            if e.is_not_found() {
                *registered = false;
            }
            tracing::debug!(error = %e, "heartbeat not acknowledged");
            Some(Err(e.to_string()))
        }
    }
}

/// Once per change of state, never per beat.
fn log_transition(config: &AgentConfig, transition: Transition, now_ms: u64) {
    let at = |ms: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
    };
    match transition {
        Transition::CutOff { since_ms, error } => tracing::warn!(
            node = %config.name,
            server = %config.server,
            since = %at(since_ms),
            silent_ms = now_ms.saturating_sub(since_ms),
            last_error = %error,
            "cut off from the cluster quorum: no heartbeat acknowledged since {}; the cluster may mark this node down and start its tasks elsewhere; its containers keep running",
            at(since_ms)
        ),
        Transition::Restored { cut_off_ms } => tracing::info!(
            node = %config.name,
            server = %config.server,
            cut_off_ms,
            "heartbeats acknowledged by the cluster quorum again after {:.1} s cut off; tasks it replaced meanwhile are stopped as their replacements pass",
            cut_off_ms as f64 / 1_000.0
        ),
    }
}

async fn events_loop(
    docker: DockerDriver,
    workers: Workers,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut events = Box::pin(docker.events());
        while let Some(item) = events.next().await {
            match item {
                Ok(ev) => {
                    let Some(task) = ev.task_id else { continue };
                    let sender = workers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&task)
                        .cloned();
                    if let Some(s) = sender {
                        let _ = s.send(WorkerMsg::Event(ev.action)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Removes secret files whose container is gone (removed while the agent was down, or by
/// hand): they would otherwise stay on the host. Task ids are unique, so a directory without
/// a container of its name serves nobody (whichever agent wrote it).
async fn sweep_secrets(ctx: &WorkerCtx) {
    for task in ctx.secrets.tasks_older_than(Duration::from_secs(60)) {
        if let Ok(false) = ctx
            .docker
            .container_exists(&docker::container_name(&task))
            .await
        {
            tracing::info!(%task, "removing the secret and rendered files of a task whose container is gone");
            ctx.secrets.remove(&task);
        }
    }
}

async fn sync_loop(
    ctx: Arc<WorkerCtx>,
    node: String,
    workers: Workers,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Containers this agent ran before a restart, to adopt instead of starting duplicates.
    let mut adoptable: HashMap<String, ContainerInfo> = loop {
        match ctx.docker.list_managed().await {
            Ok(list) => break list.into_iter().map(|c| (c.task_id.clone(), c)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut index: Option<u64> = None;
    let mut first = true;
    let mut last_orphan_sweep = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let desired = match ctx.client.tasks(&node, index, 10_000).await {
            Ok(d) => d,
            // Moved to another server: ask it at once.
            Err(ClientError::Switched(_)) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read this node's tasks; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        index = Some(desired.index);
        let wanted: HashMap<String, _> = desired
            .tasks
            .into_iter()
            .map(|t| (t.task.id.clone(), t))
            .collect();
        let current: Vec<(String, mpsc::Sender<WorkerMsg>)> = workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, sender) in &current {
            if !wanted.contains_key(id) {
                let _ = sender.send(WorkerMsg::Gone).await;
                workers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            }
        }
        for (id, task) in wanted.iter() {
            let existing = workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned();
            if let Some(sender) = existing {
                if sender
                    .send(WorkerMsg::Desired(Box::new(task.clone())))
                    .await
                    .is_ok()
                {
                    continue;
                }
            }
            let (tx, rx) = mpsc::channel(16);
            workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), tx);
            let adopted = adoptable.remove(id);
            let ctx2 = ctx.clone();
            let workers2 = workers.clone();
            let id2 = id.clone();
            let task = task.clone();
            tokio::spawn(async move {
                worker::run(ctx2, task, adopted, rx).await;
                let mut map = workers2.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&id2).is_some_and(|s| s.is_closed()) {
                    map.remove(&id2);
                }
            });
        }
        // Containers of tasks this node no longer runs: stop them (no orphans).
        if first || last_orphan_sweep.elapsed() > Duration::from_secs(10) {
            first = false;
            last_orphan_sweep = std::time::Instant::now();
            adoptable.retain(|id, _| wanted.contains_key(id));
            if let Ok(list) = ctx.docker.list_managed().await {
                let live: std::collections::HashSet<String> = workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                sweep_secrets(&ctx).await;
                for c in list {
                    if !wanted.contains_key(&c.task_id) && !live.contains(&c.task_id) {
                        tracing::info!(task = %c.task_id, container = %c.id, "removing the container of a task this node no longer runs");
                        let docker = ctx.docker.clone();
                        let secrets = ctx.secrets.clone();
                        tokio::spawn(async move {
                            let _ = docker.stop(&c.id, 5_000).await;
                            let _ = docker.remove(&c.id).await;
                            secrets.remove(&c.task_id);
                        });
                    }
                }
            }
        }
    }
}
