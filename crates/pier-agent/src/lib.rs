//! The node agent: registers its node (capacity from the engine, zone, attributes),
//! heartbeats, watches its tasks with a blocking query, runs each one in a worker that
//! drives the Docker engine (see [`docker`]) and runs its health checks, and reports every
//! transition. An agent that restarts adopts the containers it already runs (found by their
//! labels) instead of starting duplicates; containers of tasks no longer assigned are stopped
//! and removed, so nothing is orphaned.
//!
//! Use: `let agent = Agent::start(AgentConfig { .. }).await?;` … `agent.shutdown().await`.

pub mod client;
pub mod docker;
mod http;
mod probe;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use pier_api::service::RegisterNode;
use tokio::sync::mpsc;

use crate::client::ServerClient;
use crate::docker::{ContainerInfo, DockerDriver, DockerError};
use crate::worker::{WorkerCtx, WorkerMsg};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server's HTTP API, e.g. "http://127.0.0.1:8500".
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
    #[error("invalid agent configuration: {0}")]
    Config(String),
}

type Workers = Arc<Mutex<HashMap<String, mpsc::Sender<WorkerMsg>>>>;

pub struct Agent {
    addr: SocketAddr,
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
        let docker = DockerDriver::connect(&config.name, config.container_labels.clone()).await?;
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
        let (tx, rx) = tokio::sync::watch::channel(false);
        let client = ServerClient::new(&config.server);
        let registration = RegisterNode {
            zone: config.zone.clone(),
            agent_addr: addr.to_string(),
            host_ip: config.host_ip.clone(),
            attributes: config.attributes.clone(),
            cpu_millis: config.cpu_millis.unwrap_or(engine_cpu),
            memory_mb: config.memory_mb.unwrap_or(engine_mem),
        };
        let ctx = Arc::new(WorkerCtx {
            docker: docker.clone(),
            client: client.clone(),
            host_ip: config.host_ip.clone(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        });
        let workers: Workers = Arc::default();
        let tasks = vec![
            tokio::spawn(http::serve(listener, docker.clone(), rx.clone())),
            tokio::spawn(heartbeat_loop(
                client.clone(),
                config.clone(),
                registration,
                rx.clone(),
            )),
            tokio::spawn(events_loop(docker.clone(), workers.clone(), rx.clone())),
            tokio::spawn(sync_loop(ctx, config.name.clone(), workers, rx)),
        ];
        tracing::info!(node = %config.name, zone = %config.zone, agent = %addr, server = %config.server, "agent started");
        Ok(Agent {
            addr,
            shutdown: tx,
            tasks,
        })
    }

    /// The agent's own HTTP listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

async fn heartbeat_loop(
    client: ServerClient,
    config: AgentConfig,
    registration: RegisterNode,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut registered = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !registered {
            match client.register(&config.name, &registration).await {
                Ok(()) => registered = true,
                Err(e) => tracing::warn!(error = %e, "cannot register the node; retrying"),
            }
        } else if let Err(e) = client.heartbeat(&config.name).await {
            if e.is_not_found() {
                registered = false;
            } else {
                tracing::debug!(error = %e, "heartbeat failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(config.heartbeat_interval_ms)).await;
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
                for c in list {
                    if !wanted.contains_key(&c.task_id) && !live.contains(&c.task_id) {
                        tracing::info!(task = %c.task_id, container = %c.id, "removing the container of a task this node no longer runs");
                        let docker = ctx.docker.clone();
                        tokio::spawn(async move {
                            let _ = docker.stop(&c.id, 5_000).await;
                            let _ = docker.remove(&c.id).await;
                        });
                    }
                }
            }
        }
    }
}
