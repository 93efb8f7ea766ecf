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

/// HKDF purpose of the key that seals secret values in the store (from the server secret).
const SECRETS_SEAL_PURPOSE: &str = "pier/service-secrets/v1";

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
    /// Scheduled backups into `<data_dir>/snapshots` (zero = off) and how many to keep.
    pub backup_every: Duration,
    pub backup_keep: usize,
    /// Where the OCI registry listens; None runs no registry in this process.
    pub registry_listen: Option<SocketAddr>,
    /// How the registry shares its content with the other servers (None: on its own, as in
    /// `pier dev`).
    pub registry_cluster: Option<RegistryCluster>,
    /// A certificate of the operator's for the registry listener (`--registry-cert`), served
    /// to clients naming a host it covers.
    pub registry_cert: Option<crate::registry_tls::OperatorCertFiles>,
    pub orchestrator: pier_orchestrator::OrchestratorConfig,
    /// The failure detector's timeout (`--node-down-after`): a node silent for longer is
    /// critical in the catalog and down for the orchestrator, which places its tasks elsewhere.
    pub node_down_after_ms: u64,
    /// A node agent in this process (`pier dev`); its `server` is filled in with the API address.
    /// With a network, the node's gateway and DNS run here too.
    pub agent: Option<pier_agent::AgentConfig>,
    /// The node DNS's upstream resolvers (None: /etc/resolv.conf).
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// The gateway in this process, following this server's catalog.
    pub gateway: Option<GatewayWiring>,
    /// The catalog's DNS interface (UDP and TCP).
    pub dns_listen: Option<SocketAddr>,
    pub security: SecurityMode,
    /// Networks the checks of this server's Consul agent may reach (`--check-allow`).
    pub check_allow: pier_catalog::CheckAllow,
    /// Certificates from an ACME directory for `tls = "acme"` routes (ordered on the leader).
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// How the server authenticates (see `crate::security`).
#[derive(Clone, Debug)]
pub enum SecurityMode {
    /// `pier dev`: loopback only, no tokens, `Host` must be a loopback name.
    Dev,
    /// `pier server --insecure`: plain HTTP, no authentication.
    Insecure,
    /// mTLS between pier processes, HTTPS and API tokens: `pier server`'s default.
    Secure {
        token: Option<String>,
        /// Lifetime of the node certificates this server issues.
        cert_lifetime: Duration,
    },
}

/// The cluster registry (`pier server`): metadata in the replicated store, blobs on
/// `replicas` servers.
#[derive(Clone, Debug)]
pub struct RegistryCluster {
    pub replicas: usize,
    pub scrub_every: Duration,
    /// Unreferenced blobs younger than this are never collected.
    pub gc_grace: Duration,
}

#[derive(Clone, Debug)]
pub struct GatewayWiring {
    pub listen: SocketAddr,
    pub zone: String,
    pub access_log: crate::cmd::gateway::AccessLogArgs,
    /// A second listener terminating TLS, with certificates from the store.
    pub https_listen: Option<SocketAddr>,
    /// `pier dev`: a local CA in this directory issues `*.localhost` certificates on demand.
    pub local_ca: Option<std::path::PathBuf>,
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

/// Binds the gateway's HTTPS listener when asked for; the resolver it returns is then kept
/// equal to the store's certificates by `certs::follow`.
fn enable_https(
    gateway: &mut pier_gateway::Gateway,
    g: &GatewayWiring,
) -> anyhow::Result<Option<Arc<pier_gateway::CertResolver>>> {
    let Some(listen) = g.https_listen else {
        return Ok(None);
    };
    let on_demand = match &g.local_ca {
        Some(dir) => Some(crate::certs::local_issuer(dir)?),
        None => None,
    };
    let resolver = pier_gateway::CertResolver::new(on_demand);
    let bound = gateway
        .enable_https(listen, Arc::clone(&resolver))
        .with_context(|| {
            format!("cannot start the gateway's HTTPS listener on {listen}; pick another port")
        })?;
    tracing::info!(listen = %bound, "gateway HTTPS listening");
    Ok(Some(resolver))
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
    let challenges = pier_gateway::AcmeChallenges::new();
    let gateway = match &cfg.gateway {
        Some(g) => {
            let mut gateway = pier_gateway::Gateway::new(
                crate::cmd::gateway::config(g.listen, &g.zone, false),
                routes_rx,
            )
            .with_context(|| {
                format!(
                    "cannot start the gateway on {}; pick another port",
                    g.listen
                )
            })?;
            crate::cmd::gateway::start_access_log(&mut gateway, &g.access_log)?;
            gateway
                .set_acme_challenges(Arc::clone(&challenges))
                .context("cannot set up the gateway's ACME challenge answers")?;
            let resolver = enable_https(&mut gateway, g)?;
            Some((gateway, resolver))
        }
        None => None,
    };

    let raft_advertise = SocketAddr::new(
        cfg.advertise.unwrap_or(cfg.raft_listen.ip()),
        cfg.raft_listen.port(),
    );
    let security = prepare_security(&cfg, raft_advertise, http_addr).await?;
    // In-process callers of this server's own API (gateway feed, pipeline deploys) use a
    // loopback address when the listener binds a wildcard.
    let local_api = if http_addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), http_addr.port())
    } else {
        http_addr
    };
    let internal_http = internal_client(security.as_deref())?;
    let local_api_url = format!("{}://{local_api}", internal_http.scheme());
    let store_dir = cfg.data_dir.join("raft");
    let store = Store::open(StoreConfig {
        tls: match &security {
            Some(sec) => Some(pier_store::StoreTls {
                server: sec.raft_tls.clone(),
                client: sec.client_config()?,
            }),
            None => None,
        },
        extra_routes: security.as_ref().map(|sec| sec.join.router()),
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
    tracing::info!(node = %cfg.node_name, http = %http_addr, raft = %store.raft_addr(), secure = security.is_some(), "pier server started");

    let metrics = Arc::new(Metrics::new());
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(sec) = security.clone() {
        let store = store.clone();
        let internal = internal_http.clone();
        tasks.spawn(async move {
            tokio::join!(
                crate::security::server::sync_loop(sec.clone(), store.clone(), internal.clone()),
                crate::security::server::renew_loop(sec, store, internal),
            );
            Ok(())
        });
    }
    let (audit, audit_tasks) = crate::security::audit::start(store.clone());

    let registry = match registry_listener {
        Some(listener) => Some(
            start_registry(
                &cfg,
                listener,
                &store,
                &internal_http,
                (security.as_deref(), &audit),
                &shutdown,
                &mut tasks,
            )
            .await?,
        ),
        None => None,
    };

    // Catalog and orchestrator: the controllers act only while this server is the raft leader.
    let catalog_config = pier_catalog::CatalogConfig {
        node_dead_after_ms: cfg.node_down_after_ms,
        ..Default::default()
    };
    let catalog = pier_catalog::Catalog::new(store.clone(), catalog_config)
        .with_internal_http(internal_http.clone());
    let node_monitor = pier_catalog::NodeMonitor::start(catalog.clone());
    let mut catalog_agent_config =
        pier_catalog::AgentConfig::new(cfg.node_name.clone(), http_addr.ip().to_string());
    catalog_agent_config.checks.check_allow = cfg.check_allow.clone();
    let catalog_agent = pier_catalog::Agent::start(catalog.clone(), catalog_agent_config);
    let mut orchestrator_config = cfg.orchestrator.clone();
    orchestrator_config.internal_http = Some(internal_http.clone());
    if orchestrator_config.registry_addr.is_none() {
        // This server's own registry, as this process reaches it (a wildcard bind on loopback).
        orchestrator_config.registry_addr = cfg.registry_listen.map(|a| {
            if a.ip().is_unspecified() {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port()).to_string()
            } else {
                a.to_string()
            }
        });
    }
    if cfg.registry_cluster.is_some() {
        // Agents' node-local registry endpoint: the name images carry on every node.
        for alias in [
            format!("127.0.0.1:{}", crate::cmd::agent::DEFAULT_REGISTRY_PORT),
            format!("localhost:{}", crate::cmd::agent::DEFAULT_REGISTRY_PORT),
        ] {
            if orchestrator_config.registry_addr.as_deref() != Some(alias.as_str()) {
                orchestrator_config.registry_aliases.push(alias);
            }
        }
    }
    let pipelines = pier_pipeline::spawn(
        store.clone(),
        pier_pipeline::PipelineConfig {
            data_dir: cfg.data_dir.clone(),
            registry: orchestrator_config
                .registry_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:5000".into()),
            deployer: Arc::new(pier_pipeline::HttpDeployer::with_client(
                local_api_url.clone(),
                internal_http.get().as_ref().clone(),
            )),
            push_token: security.as_deref().map(|sec| {
                crate::security::registry_auth::push_token_fn(
                    crate::security::registry_auth::jwt_key(sec),
                    format!("node:server/{}", cfg.node_name),
                )
            }),
        },
    );
    // Secret values are sealed like certificate keys: with a key derived from the server
    // secret, where there is one.
    orchestrator_config.secret_seal = security
        .as_ref()
        .map(|s| pier_security::seal::SealKey::derive(&s.join.server_secret, SECRETS_SEAL_PURPOSE));
    let orchestrator =
        pier_orchestrator::spawn(store.clone(), catalog.clone(), orchestrator_config);
    // Certificate keys are sealed with the server secret where there is one.
    let cert_seal = security
        .as_ref()
        .map(|s| crate::certs::seal_key(&s.join.server_secret));
    let app = api::router(AppState {
        store: store.clone(),
        metrics: metrics.clone(),
    })
    .merge(orchestrator.router())
    .merge(pipelines.router())
    .merge(pier_catalog::router(catalog.clone(), catalog_agent.clone()))
    .merge(match &registry {
        Some(registry) => api::registry::router(api::registry::RegistryApi {
            registry: registry.clone(),
            store: store.clone(),
        }),
        None => axum::Router::new(),
    })
    .merge(crate::certs::router(crate::certs::CertsApi {
        store: store.clone(),
        seal: cert_seal.clone(),
    }))
    .merge(crate::security::api::router(
        crate::security::api::SecurityApi {
            store: store.clone(),
            join: security.as_ref().map(|s| s.join.clone()),
            internal_http: internal_http.clone(),
        },
    ));
    let app = match &security {
        Some(sec) => app.merge(sec.join.router()),
        None => app,
    };
    let auth = crate::security::authz::AuthState {
        mode: match cfg.security {
            SecurityMode::Dev => crate::security::authz::Mode::Dev,
            SecurityMode::Insecure => crate::security::authz::Mode::Insecure,
            SecurityMode::Secure { .. } => crate::security::authz::Mode::Secure,
        },
        store: store.clone(),
        server: cfg.node_name.clone(),
        agent_node: catalog_agent.node_name().to_string(),
        audit: audit.clone(),
        denied: Default::default(),
    };
    // The console reads and acts only through the API router with its auth layer, in process.
    let console = crate::ui::router(crate::ui::UiState {
        api: crate::ui::Api::new(app.clone().layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::security::authz::layer,
        ))),
        registry: registry.as_ref().map(|r| {
            let door = registry_door(
                r.router(),
                security.as_deref(),
                &store,
                &audit,
                &cfg.node_name,
            );
            crate::ui::Api::new(door.0)
        }),
        store: store.clone(),
        gateway_port: cfg.gateway.as_ref().map(|g| g.listen.port()),
        https: security.is_some(),
    });
    // Every route, whichever crate it comes from, passes the one auth layer.
    let app = app
        .merge(console)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::security::authz::layer,
        ));
    let node_agent = match cfg.agent.clone() {
        Some(mut agent_cfg) => {
            agent_cfg.server = local_api_url.clone();
            let (agent, node_gateway) = crate::node::start_agent(
                agent_cfg,
                local_api_url.clone(),
                internal_http.clone(),
                cfg.dns_upstreams.clone(),
                shutdown.wait(),
            )
            .await?;
            if let Some(h) = node_gateway {
                tasks.spawn(async move { h.await.context("node gateway task")? });
            }
            Some(agent)
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
    if let Some((gateway, resolver)) = gateway {
        if let Some(resolver) = resolver {
            let (store, seal) = (store.clone(), cert_seal.clone());
            // Ends with the shutdown signal: the shutdown drain waits for every task.
            let stop = shutdown.wait();
            tasks.spawn(async move {
                tokio::select! {
                    _ = crate::certs::follow(store, seal, resolver) => {}
                    _ = stop => {}
                }
                Ok(())
            });
        }
        let (store, stop) = (store.clone(), shutdown.wait());
        tasks.spawn(async move {
            tokio::select! {
                _ = crate::acme::follow_challenges(store, challenges) => {}
                _ = stop => {}
            }
            Ok(())
        });
        crate::gateway_feed::spawn(local_api_url.clone(), routes_tx, internal_http.clone())?;
        tracing::info!(listen = %gateway.local_addr(), "gateway listening");
        let gateway_metrics = gateway.metrics();
        metrics.add_source(Box::new(move || gateway_metrics.text()));
        let stop = shutdown.wait();
        tasks.spawn(async move { gateway.serve(stop).await.context("gateway failed") });
    }
    if let Some(acme) = cfg.acme.clone() {
        let (store, seal, stop) = (store.clone(), cert_seal.clone(), shutdown.wait());
        tasks.spawn(async move {
            tokio::select! {
                _ = crate::acme::run(store, seal, acme) => {}
                _ = stop => {}
            }
            Ok(())
        });
    }
    let (backup_store, backup_name, backup_dir) = (
        store.clone(),
        cfg.node_name.clone(),
        cfg.data_dir.join("snapshots"),
    );
    let (backup_every, backup_keep) = (cfg.backup_every, cfg.backup_keep);
    tasks.spawn(async move {
        crate::snapshot::schedule(
            backup_store,
            backup_name,
            backup_dir,
            backup_every,
            backup_keep,
        )
        .await;
        Ok(())
    });
    // Raft stopping by itself (storage error, panic in its core) leaves a server that can
    // neither lead nor follow: end the process so it is noticed and restarted.
    let watched = store.clone();
    tasks.spawn(async move {
        let why = watched.failed().await;
        Err(anyhow::anyhow!(
            "the state store failed ({why}); this server exits so that it is restarted and rejoins"
        ))
    });
    for t in audit_tasks {
        tasks.spawn(async move {
            let _ = t.await;
            Ok(())
        });
    }
    let stop = shutdown.wait();
    let listener_config = match &security {
        Some(sec) => pier_net::ListenerConfig::tls(sec.api_tls.clone(), API_MAX_CONNECTIONS),
        None => pier_net::ListenerConfig::plain(API_MAX_CONNECTIONS),
    };
    tasks.spawn(async move {
        pier_net::serve(http_listener, app, listener_config, stop)
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

/// The registry address other nodes use: the advertised IP (never a wildcard bind address).
fn registry_advertise(cfg: &ServerConfig, bound: SocketAddr) -> Option<String> {
    let ip = cfg
        .advertise
        .or_else(|| (!bound.ip().is_unspecified()).then_some(bound.ip()))?;
    Some(SocketAddr::new(ip, bound.port()).to_string())
}

/// Opens the registry (shared with the other servers in a cluster, with its replication
/// loop) and serves it on `listener`.
async fn start_registry(
    cfg: &ServerConfig,
    listener: TcpListener,
    store: &Store,
    internal_http: &pier_net::HttpClient,
    (security, audit): (
        Option<&crate::security::server::ServerSecurity>,
        &crate::security::audit::AuditSink,
    ),
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<pier_registry::Registry> {
    let registry_dir = cfg.data_dir.join("registry");
    let mut registry_cfg = pier_registry::RegistryConfig::new(&registry_dir);
    if let Some(cluster) = &cfg.registry_cluster {
        registry_cfg.gc_grace = cluster.gc_grace;
    }
    let addr = listener
        .local_addr()
        .context("reading the bound registry address")?;
    let registry = match &cfg.registry_cluster {
        None => pier_registry::Registry::open(registry_cfg).await,
        Some(cluster) => {
            let meta = Arc::new(pier_registry::cluster::ClusterMeta::new(
                store.clone(),
                cfg.node_name.clone(),
                internal_http.clone(),
            ));
            let advertise = registry_advertise(cfg, addr);
            if advertise.is_none() {
                tracing::warn!(bind = %addr, "the registry binds a wildcard address and --advertise is not set: agents cannot learn where to pull from this server");
            }
            let registry =
                pier_registry::Registry::open_shared(registry_cfg, meta.clone(), meta.clone())
                    .await;
            if let Ok(registry) = &registry {
                let replication = pier_registry::cluster::ReplicationConfig {
                    replicas: cluster.replicas,
                    scrub_every: cluster.scrub_every,
                    advertise,
                    ..Default::default()
                };
                let (registry, stop) = (registry.clone(), shutdown.wait());
                tasks.spawn(async move {
                    pier_registry::cluster::replicate(registry, meta, replication, stop).await;
                    Ok(())
                });
            }
            registry
        }
    }
    .with_context(|| format!("cannot open the registry in {}", registry_dir.display()))?;
    registry.spawn_background_gc();
    tracing::info!(%addr, shared = cfg.registry_cluster.is_some(), "registry listening");
    let (router, mut listener_config) =
        registry_door(registry.router(), security, store, audit, &cfg.node_name);
    // `pier server` refuses --registry-cert without a secure cluster.
    if let (Some(files), Some(sec)) = (&cfg.registry_cert, security) {
        let tls = crate::registry_tls::start(files.clone(), sec.api_tls.clone())?;
        listener_config = pier_net::ListenerConfig::tls(tls, pier_net::DEFAULT_MAX_CONNECTIONS);
    }
    let stop = shutdown.wait();
    tasks.spawn(async move {
        pier_net::serve(listener, router, listener_config, stop)
            .await
            .context("registry server failed")
    });
    Ok(registry)
}

/// Connections the API listener serves at once (CLI, agents, Consul clients, browsers).
const API_MAX_CONNECTIONS: usize = 8192;

/// The registry router and listener: in a secure cluster, TLS with the server's certificate
/// and Docker token authentication in front of every route; otherwise as it is.
fn registry_door(
    router: axum::Router,
    security: Option<&crate::security::server::ServerSecurity>,
    store: &Store,
    audit: &crate::security::audit::AuditSink,
    node_name: &str,
) -> (axum::Router, pier_net::ListenerConfig) {
    use crate::security::registry_auth::{self, RegistryAuth};
    let Some(sec) = security else {
        return (
            router,
            pier_net::ListenerConfig::plain(pier_net::DEFAULT_MAX_CONNECTIONS),
        );
    };
    let auth = RegistryAuth {
        store: store.clone(),
        jwt_key: registry_auth::jwt_key(sec),
        audit: audit.clone(),
        server: node_name.to_string(),
        scheme: "https",
    };
    let router = router.layer(axum::middleware::from_fn_with_state(
        auth,
        registry_auth::layer,
    ));
    let config =
        pier_net::ListenerConfig::tls(sec.api_tls.clone(), pier_net::DEFAULT_MAX_CONNECTIONS);
    (router, config)
}

/// Prepares TLS material and the join service in secure mode (None otherwise).
async fn prepare_security(
    cfg: &ServerConfig,
    raft_advertise: SocketAddr,
    http_addr: SocketAddr,
) -> anyhow::Result<Option<Arc<crate::security::server::ServerSecurity>>> {
    let SecurityMode::Secure {
        token,
        cert_lifetime,
    } = &cfg.security
    else {
        if matches!(cfg.security, SecurityMode::Insecure) && !cfg.http_listen.ip().is_loopback() {
            tracing::warn!(
                bind = %cfg.http_listen.ip(),
                "running with --insecure on a non-loopback address: anyone who reaches this server can read and change everything, and forge raft calls"
            );
        }
        return Ok(None);
    };
    let mut addresses: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
    for ip in [
        Some(raft_advertise.ip()),
        cfg.advertise,
        Some(http_addr.ip()),
    ]
    .into_iter()
    .flatten()
    .filter(|ip| !ip.is_unspecified())
    {
        if !addresses.contains(&ip.to_string()) {
            addresses.push(ip.to_string());
        }
    }
    let sec = crate::security::server::prepare(&crate::security::server::ServerSecurityOptions {
        data_dir: cfg.data_dir.clone(),
        node_name: cfg.node_name.clone(),
        token: token.clone(),
        join: cfg.join.clone(),
        raft_advertise: raft_advertise.to_string(),
        addresses,
        cert_lifetime: *cert_lifetime,
    })
    .await
    .context("setting up this server's certificates")?;
    Ok(Some(Arc::new(sec)))
}

/// The client in-process components call pier servers with: TLS with this server's own
/// certificate in secure mode, plain HTTP otherwise.
fn internal_client(
    security: Option<&crate::security::server::ServerSecurity>,
) -> anyhow::Result<pier_net::HttpClient> {
    let tls = security.map(|s| s.client_config()).transpose()?;
    Ok(pier_net::HttpClient::new(
        |b| b.connect_timeout(Duration::from_secs(3)),
        tls,
    )?)
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
