//! Pipelines: a change to a service's git repository is picked up (polling or a push webhook),
//! the image is built through the Docker engine, pushed to the pier registry and deployed;
//! every run's state and log live in the replicated store.
//!
//! Wiring (in the server): `let pipelines = pier_pipeline::spawn(store, config);`, merge
//! `pipelines.router()` into the HTTP router, and `pipelines.shutdown().await` on exit. The
//! runner acts only while this server is the raft leader.

mod api;
pub mod build;
pub mod definition;
pub mod deploy;
pub mod dockerignore;
pub mod error;
mod execute;
pub mod git;
pub mod log_sink;
pub mod records;
pub mod run_log;
pub mod run_state;
mod runner;
pub mod service_file;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use pier_store::Store;

pub use deploy::{DeployOutcome, Deployer, HttpDeployer};
pub use error::PipelineError;

/// Settings of the pipeline service on a server.
#[derive(Clone)]
pub struct PipelineConfig {
    /// Remote repositories are fetched into `<data_dir>/pipelines/git/`.
    pub data_dir: PathBuf,
    /// `host:port` of the pier registry images are pushed to (the Docker engine treats
    /// 127.0.0.0/8 registries as plain HTTP).
    pub registry: String,
    /// Rolls out built images and reports the outcome.
    pub deployer: Arc<dyn Deployer>,
    /// In a secure cluster: makes a short-lived registry token that lets the Docker engine push
    /// to a repository (the argument); None where the registry asks for no credentials.
    pub push_token: Option<PushTokenFn>,
}

/// See [`PipelineConfig::push_token`].
pub type PushTokenFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub(crate) struct Shared {
    pub store: Store,
    pub config: PipelineConfig,
    pub git: git::GitRepos,
    pub docker: Result<bollard::Docker, String>,
    /// Unique per process start: tells this process's runs from those of a previous one.
    pub runner_id: String,
}

/// The running pipeline service.
pub struct Pipelines {
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Starts the runner loop (it acts only while this server is the raft leader).
pub fn spawn(store: Store, config: PipelineConfig) -> Pipelines {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string());
    let git = git::GitRepos::new(config.data_dir.join("pipelines").join("git"));
    let runner_id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let shared = Arc::new(Shared {
        store,
        config,
        git,
        docker,
        runner_id,
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(runner::run(shared.clone(), rx));
    Pipelines {
        shared,
        shutdown: tx,
        task: tokio::sync::Mutex::new(Some(task)),
    }
}

impl Pipelines {
    /// The `/api/v1/pipelines…` routes, to merge into the server's router.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Stops the runner; runs it was executing are marked interrupted.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}
