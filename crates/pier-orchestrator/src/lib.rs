//! The orchestrator: services → immutable revisions → deployments → tasks, kept in the
//! replicated store; the leader-only controller loop that turns them into plans with
//! pier-core; and the HTTP API under `/api/v1/{services,deployments,nodes,tasks}` that the
//! CLI and the node agents use.
//!
//! Wiring (in the server): `let orch = pier_orchestrator::spawn(store, catalog, config);`
//! then merge `orch.router()` into the HTTP router, and `orch.shutdown().await` on exit.

mod api;
mod catalog_sync;
mod controller;
mod error;
mod heartbeats;
mod logs;
mod place;
pub mod tables;
mod world;

use std::sync::Arc;

pub use error::OrchestratorError;
use pier_catalog::Catalog;
use pier_store::Store;

/// Settings of the orchestrator (server side).
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// Longest time between two controller passes when nothing is written.
    pub tick_ms: u64,
    /// A node silent for longer is down and its tasks are placed elsewhere. Shorter blips move
    /// nothing.
    pub node_down_after_ms: u64,
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub restart_backoff_reset_after_ms: u64,
    /// Largest `count` a service may ask for.
    pub max_count: u32,
    /// `host:port` of the pier registry. Images under it are checked up front on deploy.
    pub registry_addr: Option<String>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            tick_ms: 200,
            node_down_after_ms: 3_000,
            restart_backoff_initial_ms: 1_000,
            restart_backoff_max_ms: 60_000,
            restart_backoff_reset_after_ms: 300_000,
            max_count: pier_api::service::DEFAULT_MAX_COUNT,
            registry_addr: None,
        }
    }
}

pub(crate) struct Shared {
    pub store: Store,
    pub catalog: Catalog,
    pub heartbeats: heartbeats::Heartbeats,
    pub config: OrchestratorConfig,
    pub http: reqwest::Client,
}

/// A running orchestrator: the controller task plus what the API routes need.
pub struct Orchestrator {
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Starts the controller loop (it acts only while this server is the raft leader).
pub fn spawn(store: Store, catalog: Catalog, config: OrchestratorConfig) -> Orchestrator {
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        store,
        catalog,
        heartbeats: Default::default(),
        config,
        http,
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::run(shared.clone(), rx));
    Orchestrator {
        shared,
        shutdown: tx,
        task: tokio::sync::Mutex::new(Some(task)),
    }
}

impl Orchestrator {
    /// The `/api/v1/services|deployments|nodes|tasks` routes, to merge into the server's router.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
