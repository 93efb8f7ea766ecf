//! Wiring of one server process: the replicated store, the HTTP API and (as
//! they land) the registry, catalog DNS, gateway and local agent. `pier dev`
//! and `pier server` both end up here with different configurations, so a
//! one-machine setup runs exactly the code path of a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pier_store::{Store, StoreConfig};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    pub bootstrap_expect: usize,
    pub join: Vec<String>,
    pub snapshot_every_logs: u64,
}

/// Creates the data directory if needed and refuses paths that cannot hold one,
/// naming the path and what to do.
pub fn prepare_data_dir(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() && !path.is_dir() {
        anyhow::bail!(
            "data dir {} exists but is not a directory; pass --data-dir with a directory path",
            path.display()
        );
    }
    std::fs::create_dir_all(path).with_context(|| {
        format!(
            "cannot create data dir {}; check its parent exists and is writable",
            path.display()
        )
    })
}

/// Runs until SIGINT/SIGTERM, then shuts down in order: stop accepting HTTP,
/// finish in-flight requests, stop raft.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    prepare_data_dir(&cfg.data_dir)?;
    let http_listener = TcpListener::bind(cfg.http_listen).await.with_context(|| {
        format!(
            "cannot listen for HTTP on {}; is another pier running? pick another port",
            cfg.http_listen
        )
    })?;
    let http_addr = http_listener
        .local_addr()
        .context("reading the bound HTTP address")?;
    let store = Store::open(StoreConfig {
        raft_listen: cfg.raft_listen,
        http_advertise: http_addr.to_string(),
        bootstrap_expect: cfg.bootstrap_expect,
        join: cfg.join.clone(),
        snapshot_every_logs: cfg.snapshot_every_logs,
        ..StoreConfig::single_node(cfg.node_name.clone(), cfg.data_dir.join("raft"))
    })
    .await
    .with_context(|| {
        format!(
            "cannot open the state store in {}",
            cfg.data_dir.join("raft").display()
        )
    })?;
    tracing::info!(node = %cfg.node_name, http = %http_addr, raft = %store.raft_addr(), "pier server started");

    let metrics = Arc::new(Metrics::new());
    let app = api::router(AppState {
        store: store.clone(),
        metrics,
    });
    let serve = axum::serve(
        http_listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal());
    let result = serve.await.context("HTTP server failed");
    tracing::info!("shutting down the state store");
    if let Err(err) = tokio::time::timeout(Duration::from_secs(10), store.shutdown()).await {
        tracing::warn!(error = %err, "state store did not shut down within 10s");
    }
    result
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
