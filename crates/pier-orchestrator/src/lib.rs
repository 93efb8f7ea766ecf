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
mod logs;
mod place;
mod routes;
pub mod secrets;
pub mod tables;
mod volumes;
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
    /// A task lost on a down node (replaced elsewhere, but left running in case the node was
    /// only cut off) is given up after this long.
    pub lost_task_timeout_ms: u64,
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub restart_backoff_reset_after_ms: u64,
    /// Revisions (and finished deployments) kept per service; older ones nothing names are
    /// deleted (`--keep-revisions`).
    pub keep_revisions: usize,
    /// Largest `count` a service may ask for.
    pub max_count: u32,
    /// `host:port` of the pier registry. Images under it are resolved to their manifest
    /// digest on deploy (and refused if they do not exist).
    pub registry_addr: Option<String>,
    /// Other names of the pier registry in image references (`127.0.0.1:5000`, the agents'
    /// node-local registry endpoint), resolved at `registry_addr` too.
    pub registry_aliases: Vec<String>,
    /// How this server calls other pier processes (the leader's API to forward heartbeats,
    /// agents for logs): TLS with the server's certificate in a secure cluster. None: plain.
    pub internal_http: Option<pier_net::HttpClient>,
    /// Seals secret values in the store: derived from the server join secret in a secure
    /// cluster. None (`pier dev`, `--insecure`): values are stored unsealed.
    pub secret_seal: Option<pier_security::seal::SealKey>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            tick_ms: 200,
            lost_task_timeout_ms: pier_core::deployment::DEFAULT_LOST_TASK_TIMEOUT_MS,
            restart_backoff_initial_ms: 1_000,
            restart_backoff_max_ms: 60_000,
            restart_backoff_reset_after_ms: 300_000,
            max_count: pier_api::service::DEFAULT_MAX_COUNT,
            keep_revisions: 10,
            registry_addr: None,
            registry_aliases: Vec::new(),
            internal_http: None,
            secret_seal: None,
        }
    }
}

pub(crate) struct Shared {
    pub store: Store,
    pub catalog: Catalog,
    pub config: OrchestratorConfig,
    pub http: reqwest::Client,
    /// See [`OrchestratorConfig::internal_http`].
    pub internal: pier_net::HttpClient,
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
    let internal = match config.internal_http.clone() {
        Some(c) => c,
        None => pier_net::HttpClient::new(
            |b| b.connect_timeout(std::time::Duration::from_secs(2)),
            None,
        )
        .unwrap_or_else(|e| panic!("an HTTP client without TLS always builds: {e}")),
    };
    let shared = Arc::new(Shared {
        store,
        catalog,
        config,
        http,
        internal,
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::run(shared.clone(), rx.clone()));
    tokio::spawn(routes::run(shared.clone(), rx));
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

pub(crate) use pier_api::time::now_ms;
