//! The public entry point: [`Gateway`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use crate::backend::Clock;
use crate::config::GatewayConfig;
use crate::live::Router;
use crate::metrics::{GatewayMetrics, UNROUTED};
use crate::pool::PoolConfig;
use crate::proxy::Shared;
use crate::server::{http1_builder, http2_builder, serve_connection, shutdown_sequence, Lifecycle};
use crate::table::RouteTable;

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
}

/// Idle keep-alive connections kept per backend; more are closed when they
/// come back.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// Pool idle ages are counted in ticks of `backend_pool_idle_ms / (N - 1)`.
const POOL_PRUNE_TICKS: u64 = 5;

/// A bound, not yet serving gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    pool_tick: Arc<std::sync::atomic::AtomicU64>,
}

impl Gateway {
    /// Binds `cfg.listen` and prepares the backend connection pool. Routing
    /// follows whatever table `routes` holds at each request.
    pub fn new(
        cfg: GatewayConfig,
        routes: watch::Receiver<Arc<RouteTable>>,
    ) -> Result<Gateway, GatewayError> {
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| GatewayError::Bind {
                addr: cfg.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(GatewayError::Listener)?;
        let local_addr = listener.local_addr().map_err(GatewayError::Listener)?;

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
            }),
            listener,
            local_addr,
            pool_tick,
        })
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
        let h1 = Arc::new(http1_builder(&shared));
        let h2 = Arc::new(http2_builder(&shared));
        let (drain_tx, drain_rx) = watch::channel(false);
        let (hard_tx, hard_rx) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel::<()>(1);
        let life = Lifecycle {
            drain: drain_rx,
            hard_stop: hard_rx,
            alive: alive_tx.clone(),
        };
        tracing::info!(listen = %self.local_addr, zone = %shared.cfg.zone, "gateway serving");
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
                            Arc::clone(&h1),
                            Arc::clone(&h2),
                            stream,
                            peer,
                            life.clone(),
                        ));
                    }
                    Err(e) => {
                        // Usually EMFILE/ENFILE or an aborted handshake:
                        // back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
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
        tracing::info!("gateway stopped");
        Ok(())
    }
}
