//! Wiring of one server process: the replicated store, the HTTP API and (as
//! they land) the registry, catalog DNS, gateway and local agent. `pier dev`
//! and `pier server` both end up here with different configurations, so a
//! one-machine setup runs exactly the code path of a cluster.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pier_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    /// The address peers dial when the listeners bind a wildcard address.
    pub advertise: Option<std::net::IpAddr>,
    pub bootstrap_expect: usize,
    pub join: Vec<String>,
    pub snapshot_every_logs: u64,
    /// Where the OCI registry listens; None runs no registry in this process.
    pub registry_listen: Option<SocketAddr>,
    pub orchestrator: pier_orchestrator::OrchestratorConfig,
    /// A node agent in this process (`pier dev`); its `server` is filled in with the API address.
    pub agent: Option<pier_agent::AgentConfig>,
    /// The gateway in this process, following this server's catalog.
    pub gateway: Option<GatewayWiring>,
    /// The catalog's DNS interface (UDP and TCP).
    pub dns_listen: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct GatewayWiring {
    pub listen: SocketAddr,
    pub zone: String,
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

/// A shutdown that every listener of the process waits on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Fires on the first SIGINT or SIGTERM.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone, which also means shut down.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; is another pier running? pick another port")
    })
}

/// Runs until SIGINT/SIGTERM, then shuts down in order: stop accepting,
/// finish in-flight requests, stop raft.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    prepare_data_dir(&cfg.data_dir)?;
    let shutdown = Shutdown::on_signals();
    // Bind every listener first so a port clash fails before any state is touched.
    let http_listener = bind(cfg.http_listen, "the HTTP API").await?;
    let http_addr = http_listener
        .local_addr()
        .context("reading the bound HTTP address")?;
    let registry_listener = match cfg.registry_listen {
        Some(addr) => Some(bind(addr, "the registry").await?),
        None => None,
    };
    // The gateway binds here too; its routes arrive once the API answers.
    let (routes_tx, routes_rx) = crate::gateway_feed::channel();
    let gateway = match &cfg.gateway {
        Some(g) => Some(
            pier_gateway::Gateway::new(
                crate::cmd::gateway::config(g.listen, &g.zone, false),
                routes_rx,
            )
            .with_context(|| {
                format!(
                    "cannot start the gateway on {}; pick another port",
                    g.listen
                )
            })?,
        ),
        None => None,
    };

    let store_dir = cfg.data_dir.join("raft");
    let store = Store::open(StoreConfig {
        raft_listen: cfg.raft_listen,
        http_advertise: match cfg.advertise {
            Some(ip) => SocketAddr::new(ip, http_addr.port()).to_string(),
            None => http_addr.to_string(),
        },
        raft_advertise: cfg
            .advertise
            .map(|ip| SocketAddr::new(ip, cfg.raft_listen.port())),
        bootstrap_expect: cfg.bootstrap_expect,
        join: cfg.join.clone(),
        snapshot_every_logs: cfg.snapshot_every_logs,
        ..StoreConfig::single_node(cfg.node_name.clone(), store_dir.clone())
    })
    .await
    .with_context(|| format!("cannot open the state store in {}", store_dir.display()))?;
    tracing::info!(node = %cfg.node_name, http = %http_addr, raft = %store.raft_addr(), "pier server started");

    let metrics = Arc::new(Metrics::new());
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(listener) = registry_listener {
        let registry_dir = cfg.data_dir.join("registry");
        let registry =
            pier_registry::Registry::open(pier_registry::RegistryConfig::new(&registry_dir))
                .await
                .with_context(|| {
                    format!("cannot open the registry in {}", registry_dir.display())
                })?;
        registry.spawn_background_gc();
        let addr = listener
            .local_addr()
            .context("reading the bound registry address")?;
        tracing::info!(%addr, "registry listening");
        let router = registry.router();
        let stop = shutdown.wait();
        tasks.spawn(async move {
            axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stop)
                .await
                .context("registry server failed")
        });
    }

    // Catalog and orchestrator: the controllers act only while this server is the raft leader.
    let catalog = pier_catalog::Catalog::new(store.clone(), pier_catalog::CatalogConfig::default());
    let node_monitor = pier_catalog::NodeMonitor::start(catalog.clone());
    let catalog_agent = pier_catalog::Agent::start(
        catalog.clone(),
        pier_catalog::AgentConfig::new(cfg.node_name.clone(), http_addr.ip().to_string()),
    );
    let mut orchestrator_config = cfg.orchestrator.clone();
    if orchestrator_config.registry_addr.is_none() {
        orchestrator_config.registry_addr = cfg.registry_listen.map(|a| a.to_string());
    }
    let pipelines = pier_pipeline::spawn(
        store.clone(),
        pier_pipeline::PipelineConfig {
            data_dir: cfg.data_dir.clone(),
            registry: orchestrator_config
                .registry_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:5000".into()),
            deployer: Arc::new(pier_pipeline::HttpDeployer::new(format!(
                "http://{http_addr}"
            ))),
        },
    );
    let orchestrator =
        pier_orchestrator::spawn(store.clone(), catalog.clone(), orchestrator_config);
    let app = api::router(AppState {
        store: store.clone(),
        metrics: metrics.clone(),
    })
    .merge(orchestrator.router())
    .merge(pipelines.router())
    .merge(pier_catalog::router(catalog.clone(), catalog_agent.clone()));
    let node_agent = match cfg.agent.clone() {
        Some(mut agent_cfg) => {
            agent_cfg.server = format!("http://{http_addr}");
            Some(
                pier_agent::Agent::start(agent_cfg)
                    .await
                    .context("cannot start the node agent")?,
            )
        }
        None => None,
    };
    if let Some(listen) = cfg.dns_listen {
        let dns = pier_catalog::DnsServer::bind(
            catalog.clone(),
            listen,
            pier_catalog::DnsConfig::default(),
        )
        .await
        .with_context(|| {
            format!("cannot listen for DNS on {listen} (UDP and TCP); pick another port")
        })?;
        tracing::info!(%listen, "catalog DNS listening");
        let stop = shutdown.wait();
        tasks.spawn(async move { dns.run(stop).await.context("DNS server failed") });
    }
    if let Some(gateway) = gateway {
        crate::gateway_feed::spawn(format!("http://{http_addr}"), routes_tx)?;
        tracing::info!(listen = %gateway.local_addr(), "gateway listening");
        let gateway_metrics = gateway.metrics();
        metrics.add_source(Box::new(move || gateway_metrics.text()));
        let stop = shutdown.wait();
        tasks.spawn(async move { gateway.serve(stop).await.context("gateway failed") });
    }
    let stop = shutdown.wait();
    tasks.spawn(async move {
        axum::serve(
            http_listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .context("HTTP API server failed")
    });

    // The first listener to fail ends the process. On a signal every listener
    // stops accepting and gets SHUTDOWN_GRACE to finish; blocking queries (which
    // may wait minutes) and idle keep-alive connections are then dropped.
    let mut result = Ok(());
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(joined) => {
                    if let Err(err) = task_outcome(joined) {
                        result = Err(err);
                        break;
                    }
                }
            },
            _ = &mut stop => {
                let drain = async {
                    while let Some(joined) = tasks.join_next().await {
                        if let Err(err) = task_outcome(joined) {
                            tracing::warn!(error = %err, "a listener failed while shutting down");
                        }
                    }
                };
                if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                    tracing::info!("dropping connections still open after the shutdown grace");
                }
                break;
            }
        }
    }
    tasks.abort_all();
    if let Some(agent) = node_agent {
        agent.shutdown().await;
    }
    pipelines.shutdown().await;
    orchestrator.shutdown().await;
    catalog_agent.shutdown();
    node_monitor.shutdown();
    tracing::info!("shutting down the state store");
    match tokio::time::timeout(Duration::from_secs(10), store.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "state store shutdown failed"),
        Err(_) => tracing::warn!("state store did not shut down within 10s"),
    }
    result
}

/// How long listeners may finish in-flight requests after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

fn task_outcome(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(join_err) => Err(anyhow::anyhow!("a server task panicked: {join_err}")),
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
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
