//! The public entry point: [`Gateway`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use crate::access::AccessLog;
use crate::backend::Clock;
use crate::config::GatewayConfig;
use crate::live::Router;
use crate::metrics::{GatewayMetrics, UNROUTED};
use crate::pool::PoolConfig;
use crate::proxy::Shared;
use crate::server::{
    http1_builder, http2_builder, serve_connection, serve_tls_connection, shutdown_sequence,
    Builders, Lifecycle,
};
use crate::table::RouteTable;
use crate::tls::CertResolver;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the listening socket: {0}")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Idle keep-alive connections kept per backend; more are closed when they
/// come back.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// Pool idle ages are counted in ticks of `backend_pool_idle_ms / (N - 1)`.
const POOL_PRUNE_TICKS: u64 = 5;

/// The second listener, terminating TLS.
struct HttpsListener {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<CertResolver>,
}

fn bind(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), GatewayError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| GatewayError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(GatewayError::Listener)?;
    let local_addr = listener.local_addr().map_err(GatewayError::Listener)?;
    Ok((listener, local_addr))
}

/// A bound, not yet serving gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    https: Option<HttpsListener>,
    pool_tick: Arc<std::sync::atomic::AtomicU64>,
}

impl Gateway {
    /// Binds `cfg.listen` and prepares the backend connection pool. Routing
    /// follows whatever table `routes` holds at each request.
    pub fn new(
        cfg: GatewayConfig,
        routes: watch::Receiver<Arc<RouteTable>>,
    ) -> Result<Gateway, GatewayError> {
        let (listener, local_addr) = bind(cfg.listen)?;

        let clock = Clock::new();
        let metrics = GatewayMetrics::new();
        let pool = PoolConfig {
            connect_timeout: Duration::from_millis(cfg.timeouts.connect_ms),
            idle_ticks: POOL_PRUNE_TICKS,
            max_idle: MAX_IDLE_PER_BACKEND,
            tick: Arc::default(),
        };
        let pool_tick = Arc::clone(&pool.tick);
        let router = Router::new(routes, cfg.zone.clone(), clock, metrics.clone(), pool);
        let unrouted = metrics.service(UNROUTED);
        Ok(Gateway {
            shared: Arc::new(Shared {
                cfg,
                router,
                clock,
                metrics,
                unrouted,
                access: None,
                access_off: false,
                https_port: None,
                challenges: None,
            }),
            listener,
            local_addr,
            https: None,
            pool_tick,
        })
    }

    /// No access log: neither a writer nor `tracing` events.
    pub fn disable_access_log(&mut self) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.access = None;
            shared.access_off = true;
        }
    }

    /// Also serves HTTPS on `listen`, with certificates picked by SNI from
    /// `certs`, through the same routing and proxy path. Returns the bound
    /// address.
    pub fn enable_https(
        &mut self,
        listen: SocketAddr,
        certs: Arc<CertResolver>,
    ) -> Result<SocketAddr, GatewayError> {
        let (listener, local_addr) = bind(listen)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            Arc::clone(&certs),
            self.shared.challenges.clone(),
        )?);
        // A fresh gateway's `Shared` has no other owner yet.
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.https_port = Some(local_addr.port());
        }
        self.https = Some(HttpsListener {
            listener,
            local_addr,
            acceptor,
            certs,
        });
        Ok(local_addr)
    }

    /// Answers ACME challenges from `challenges`: HTTP-01 over plain HTTP, and TLS-ALPN-01
    /// on the HTTPS listener (whether it is enabled before or after this call).
    pub fn set_acme_challenges(
        &mut self,
        challenges: Arc<crate::challenge::AcmeChallenges>,
    ) -> Result<(), GatewayError> {
        if let Some(https) = &mut self.https {
            https.acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                Arc::clone(&https.certs),
                Some(Arc::clone(&challenges)),
            )?);
        }
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.challenges = Some(challenges);
        }
        Ok(())
    }

    /// Writes the access log through `log` instead of `tracing` events
    /// (target `pier_gateway::access`); flushed when serving ends.
    pub fn set_access_log(&mut self, log: AccessLog) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.access = Some(log);
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle on the gateway's metrics; stays valid while serving.
    pub fn metrics(&self) -> GatewayMetrics {
        self.shared.metrics.clone()
    }

    /// Registers the gateway's metrics into an existing registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// The metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.text()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests (and WebSocket tunnels) finish for up to
    /// `timeouts.shutdown_grace_ms`, and drops what is left.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(GatewayError::Listener)?;
        let shared = self.shared;
        let builders = Arc::new(Builders {
            h1: http1_builder(&shared),
            h2: http2_builder(&shared),
        });
        let https = match self.https {
            Some(h) => Some((
                tokio::net::TcpListener::from_std(h.listener).map_err(GatewayError::Listener)?,
                h.acceptor,
                h.local_addr,
            )),
            None => None,
        };
        let (drain_tx, drain_rx) = watch::channel(false);
        let (hard_tx, hard_rx) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel::<()>(1);
        let life = Lifecycle {
            drain: drain_rx,
            hard_stop: hard_rx,
            alive: alive_tx.clone(),
        };
        tracing::info!(
            listen = %self.local_addr,
            https = ?https.as_ref().map(|h| h.2),
            zone = %shared.cfg.zone,
            "gateway serving"
        );
        let pruner = {
            let shared = Arc::clone(&shared);
            let pool_tick = Arc::clone(&self.pool_tick);
            // An idle backend connection closes between POOL_PRUNE_TICKS - 1
            // and POOL_PRUNE_TICKS ticks after it came back.
            let every = Duration::from_millis(
                (shared.cfg.timeouts.backend_pool_idle_ms / (POOL_PRUNE_TICKS - 1)).max(100),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    pool_tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    shared.router.prune_pools();
                }
            })
        };
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(serve_connection(
                            Arc::clone(&shared),
                            Arc::clone(&builders),
                            stream,
                            peer,
                            life.clone(),
                        ));
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_tls(&https) => match accepted {
                    Ok((stream, peer, acceptor)) => {
                        tokio::spawn(serve_tls_connection(
                            Arc::clone(&shared),
                            Arc::clone(&builders),
                            acceptor,
                            stream,
                            peer,
                            life.clone(),
                        ));
                    }
                    Err(e) => accept_failed(e).await,
                },
            }
        }
        drop(listener);
        drop(https);
        drop(life);
        tracing::info!("gateway draining");
        shutdown_sequence(
            drain_tx,
            hard_tx,
            alive_tx,
            alive_rx,
            Duration::from_millis(shared.cfg.timeouts.shutdown_grace_ms),
        )
        .await;
        pruner.abort();
        if let Some(access) = &shared.access {
            access.flush().await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

type TlsListener = (
    tokio::net::TcpListener,
    tokio_rustls::TlsAcceptor,
    SocketAddr,
);

/// The next client of the HTTPS listener; never resolves without one.
async fn accept_tls(
    https: &Option<TlsListener>,
) -> std::io::Result<(TcpStream, SocketAddr, tokio_rustls::TlsAcceptor)> {
    match https {
        Some((listener, acceptor, _)) => {
            let (stream, peer) = listener.accept().await?;
            Ok((stream, peer, acceptor.clone()))
        }
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error) {
    // Usually EMFILE/ENFILE or an aborted handshake: back off briefly
    // instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
