//! Running the registry as an HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::{Registry, RegistryConfig, RegistryError};

/// How long in-flight requests (a big upload, say) get to finish after the
/// shutdown signal before the server stops anyway. Interrupted uploads stay
/// on disk and can be resumed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the registry in `cfg.data_dir`, starts background GC (if
/// configured), serves on `listen` until `shutdown` completes.
pub async fn serve(
    cfg: RegistryConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let registry = Registry::open(cfg).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RegistryError::Io {
            context: format!("binding {listen}"),
            source,
        })?;
    registry.serve_on(listener, shutdown).await
}

impl Registry {
    /// Serves on an already bound listener (tests bind 127.0.0.1:0) until
    /// `shutdown` completes; background GC runs meanwhile if configured.
    pub async fn serve_on(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RegistryError> {
        let addr = listener.local_addr().map_err(|source| RegistryError::Io {
            context: "listener address".into(),
            source,
        })?;
        let gc_task = self.spawn_background_gc();
        tracing::info!(%addr, data_dir = %self.inner.cfg.data_dir.display(), "registry listening");
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = async move {
            shutdown.await;
            tracing::info!("registry shutting down");
            let _ = signalled_tx.send(());
        };
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(graceful);
        let drain_deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = server => r.map_err(|source| RegistryError::Io { context: "serving HTTP".into(), source }),
            _ = drain_deadline => {
                tracing::warn!("requests still running {DRAIN_TIMEOUT:?} after shutdown; stopping anyway");
                Ok(())
            }
        };
        if let Some(task) = gc_task {
            task.abort();
        }
        result
    }
}
