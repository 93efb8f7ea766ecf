//! pier-registry: an OCI Distribution Spec v2 registry.
//!
//! - Blobs are content-addressed files behind [`storage::BlobStore`]
//!   ([`storage::FsBlobStore`] today). Uploads stream to disk, are hashed as
//!   they arrive, verified, then published by fsync + atomic rename.
//! - Repositories, tags, manifests and referrers live in a redb index in the
//!   data directory; reads use MVCC snapshots and never wait for a push.
//! - Garbage collection runs online (see [`gc`]): mark from every manifest,
//!   sweep unreferenced blobs older than a grace window, re-checked inside a
//!   short write transaction so a concurrent manifest push never loses a blob.
//!   Untagged manifests are kept until deleted, as in distribution.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pier_registry::RegistryError> {
//! use pier_registry::{Registry, RegistryConfig};
//! let registry = Registry::open(RegistryConfig::new("/var/lib/pier/registry")).await?;
//! registry.spawn_background_gc();
//! let app: axum::Router = registry.router();
//! # let _ = app; Ok(()) }
//! ```

mod api;
pub mod cluster;
pub mod digest;
mod error;
mod fetch;
pub mod gc;
pub mod index;
mod locks;
pub mod manifest;
mod metrics;
pub mod names;
mod ops;
mod server;
pub mod storage;
mod uploads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use error::RegistryError;
pub use gc::GcReport;
pub use server::serve;

pub use fetch::BlobSource;
use index::meta::{LocalMeta, Meta};
use index::Index;
use locks::DigestLocks;
use metrics::Metrics;
use storage::{BlobStore, FsBlobStore};
use uploads::Uploads;

/// Default manifest size limit; the spec asks registries to accept at least 4 MiB.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Holds `index.redb`, `blobs/`, `uploads/` and `tmp/`.
    pub data_dir: PathBuf,
    /// Manifests above this size are refused with 413.
    pub max_manifest_bytes: u64,
    /// A blob published (or mounted) more recently than this is never
    /// collected: it may be a layer whose manifest is still on its way.
    pub gc_grace: Duration,
    /// How often the background GC runs; None disables it (GC then only runs
    /// when asked through `POST /_pier/gc` or [`Registry::gc`]).
    pub gc_interval: Option<Duration>,
    /// Upload sessions without a write for this long are deleted by GC.
    pub upload_expiry: Duration,
}

impl RegistryConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            data_dir: data_dir.into(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            gc_grace: Duration::from_secs(3600),
            gc_interval: Some(Duration::from_secs(3600)),
            upload_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: RegistryConfig,
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) index: Arc<dyn Meta>,
    /// Other servers holding blobs this one lacks (a cluster); None alone.
    pub(crate) source: Option<Arc<dyn BlobSource>>,
    pub(crate) uploads: Uploads,
    pub(crate) locks: DigestLocks,
    /// One fetch from a peer per digest (apart from `locks`: a fetch publishes under those).
    pub(crate) fetch_locks: DigestLocks,
    pub(crate) metrics: Metrics,
    /// One GC at a time; pushes and pulls never take it.
    pub(crate) gc_running: tokio::sync::Mutex<()>,
}

/// A handle on an open registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

impl Registry {
    /// Opens (creating if needed) the registry in `cfg.data_dir` with the
    /// filesystem blob store.
    pub async fn open(cfg: RegistryConfig) -> Result<Registry, RegistryError> {
        let data_dir = cfg.data_dir.clone();
        let (index, store) = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
            std::fs::create_dir_all(&data_dir).map_err(|source| RegistryError::Io {
                context: format!("creating data directory {}", data_dir.display()),
                source,
            })?;
            // The index first: its file lock keeps a second process off this
            // data directory before the store clears `tmp/`.
            let index = Index::open(&data_dir.join("index.redb"))?;
            let store = FsBlobStore::open(&data_dir)?;
            Ok((index, store))
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("opening the registry: {e}")))??;
        Ok(Registry::with_store(
            cfg,
            Arc::new(LocalMeta::new(index)),
            None,
            Arc::new(store),
        ))
    }

    /// Opens the blob store in `cfg.data_dir` with metadata kept elsewhere (the cluster's
    /// replicated store) and blobs this server lacks fetched from `source`.
    pub async fn open_shared(
        cfg: RegistryConfig,
        meta: Arc<dyn Meta>,
        source: Arc<dyn BlobSource>,
    ) -> Result<Registry, RegistryError> {
        let data_dir = cfg.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || -> Result<_, RegistryError> {
            std::fs::create_dir_all(&data_dir).map_err(|source| RegistryError::Io {
                context: format!("creating data directory {}", data_dir.display()),
                source,
            })?;
            Ok(FsBlobStore::open(&data_dir)?)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("opening the registry: {e}")))??;
        Ok(Registry::with_store(
            cfg,
            meta,
            Some(source),
            Arc::new(store),
        ))
    }

    fn with_store(
        cfg: RegistryConfig,
        index: Arc<dyn Meta>,
        source: Option<Arc<dyn BlobSource>>,
        store: Arc<dyn BlobStore>,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                cfg,
                store,
                index,
                source,
                uploads: Uploads::default(),
                locks: DigestLocks::new(),
                fetch_locks: DigestLocks::new(),
                metrics: Metrics::new(),
                gc_running: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    /// `/v2/...`, `/metrics` and `POST /_pier/gc?dry_run=true|false`.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Runs one garbage collection; see [`gc`].
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, RegistryError> {
        gc::run(&self.inner, dry_run).await
    }

    /// Runs GC every `gc_interval` (if set) until the registry is dropped.
    pub fn spawn_background_gc(&self) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.inner.cfg.gc_interval?;
        let weak = Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                match gc::run(&inner, false).await {
                    Ok(report) => tracing::info!(
                        blobs_deleted = report.blobs_deleted,
                        bytes_deleted = report.bytes_deleted,
                        uploads_deleted = report.uploads_deleted,
                        duration_ms = report.duration_ms,
                        "background gc"
                    ),
                    Err(e) => tracing::error!(error = %e, "background gc failed"),
                }
            }
        }))
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
