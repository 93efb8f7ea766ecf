//! Every HTTP listener of pier is served here: plain HTTP (`pier dev`, `--insecure`) or TLS,
//! where the client's certificate (when it presents one from the cluster CA) names a pier
//! node. Each request carries:
//! * [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo): the peer address;
//! * [`Caller`]: the node identity from the client certificate, or none.
//!
//! A listener serves at most `max_connections` connections at once; a connection beyond that
//! waits in the kernel's backlog (it is not accepted) until one closes, so a flood of
//! connections costs memory only in the kernel. On shutdown, accepting stops and open
//! connections finish their requests (HTTP/1 keep-alive and HTTP/2 close gracefully).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use pier_security::ca::NodeIdentity;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Who is calling, as the TLS handshake proved it (None: no client certificate, or plain HTTP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub Option<NodeIdentity>);

/// A listener's TLS configuration, replaceable while it runs (certificate renewal, CA
/// rotation): each new connection takes the current one.
pub type ServerTls = Arc<ArcSwap<rustls::ServerConfig>>;

pub fn server_tls(config: Arc<rustls::ServerConfig>) -> ServerTls {
    Arc::new(ArcSwap::new(config))
}

/// How a listener serves.
#[derive(Clone)]
pub struct ListenerConfig {
    /// TLS (with the client-certificate policy inside the rustls config); None = plain HTTP.
    pub tls: Option<ServerTls>,
    pub max_connections: usize,
    /// How long a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
}

impl ListenerConfig {
    pub fn plain(max_connections: usize) -> ListenerConfig {
        ListenerConfig {
            tls: None,
            max_connections,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    pub fn tls(config: ServerTls, max_connections: usize) -> ListenerConfig {
        ListenerConfig {
            tls: Some(config),
            ..ListenerConfig::plain(max_connections)
        }
    }
}

mod client;
pub mod linger;
pub use client::HttpClient;

/// Default connection limit of a listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tls = config.tls.clone();
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting: beyond the limit, connections queue in the
        // kernel instead of costing a task each.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let handshake_timeout = config.handshake_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => {
                    let svc = with_caller(router, peer, Caller(None));
                    let builder = Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let caller = Caller(pier_security::tls::peer_identity(
                        tls.get_ref().1.peer_certificates(),
                    ));
                    let svc = with_caller(router, peer, caller);
                    let builder = Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The router as a hyper service that stamps each request with the peer and the caller.
fn with_caller(
    router: Router,
    peer: SocketAddr,
    caller: Caller,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    let svc = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(caller.clone());
        let (parts, body) = req.into_parts();
        let (handler_body, linger) = linger::share(axum::body::Body::new(body));
        let req = hyper::Request::from_parts(parts, axum::body::Body::new(handler_body));
        let router = router.clone();
        async move {
            let response = router.oneshot(req).await;
            linger.drain().await;
            response
        }
    });
    hyper_util::service::TowerToHyperService::new(svc)
}
