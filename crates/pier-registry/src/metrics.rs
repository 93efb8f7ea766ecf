//! Prometheus metrics of the registry, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub method: &'static str,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upload_seconds: Histogram,
    pub gc_runs: Counter,
    pub gc_blobs_deleted: Counter,
    pub gc_bytes_deleted: Counter,
    pub gc_uploads_deleted: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pier_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint, method and status",
            requests.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Blob and manifest bytes received",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "sent_bytes",
            "Blob and manifest bytes sent",
            bytes_out.clone(),
        );
        // 1 ms .. ~9 min: a tiny config blob to a multi-GiB layer.
        let upload_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "upload_duration_seconds",
            "Blob upload sessions, from start to commit",
            upload_seconds.clone(),
        );
        let gc_runs = Counter::default();
        registry.register(
            "gc_runs",
            "Garbage collection runs (not dry runs)",
            gc_runs.clone(),
        );
        let gc_blobs_deleted = Counter::default();
        registry.register(
            "gc_deleted_blobs",
            "Blobs deleted by garbage collection",
            gc_blobs_deleted.clone(),
        );
        let gc_bytes_deleted = Counter::default();
        registry.register(
            "gc_deleted_bytes",
            "Bytes freed by garbage collection",
            gc_bytes_deleted.clone(),
        );
        let gc_uploads_deleted = Counter::default();
        registry.register(
            "gc_deleted_uploads",
            "Abandoned uploads deleted",
            gc_uploads_deleted.clone(),
        );
        Metrics {
            registry,
            requests,
            bytes_in,
            bytes_out,
            upload_seconds,
            gc_runs,
            gc_blobs_deleted,
            gc_bytes_deleted,
            gc_uploads_deleted,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
