//! Per-service metrics in prometheus-client types.
//!
//! Label values are service names, status classes and fixed failure kinds,
//! never hosts or paths, so a client cannot grow the series count. Requests
//! that matched no service count under service `-`. The per-service handles
//! are looked up once per table swap and cached in the live table, so the
//! request path touches only atomics and the histogram's lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Service label for requests that matched no service.
pub(crate) const UNROUTED: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    service: String,
    kind: &'static str,
}

/// Why an attempt against a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Connect,
    Timeout,
    Reset,
    Status5xx,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Status5xx => "5xx",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn duration_histogram() -> Histogram {
    // 0.25 ms .. ~16 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// All gateway metrics; cheap to clone (handles share their values).
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    failures: Family<KindLabels, Counter>,
    retries: Family<KindLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    access_log_dropped: Counter,
    cache: Arc<Mutex<HashMap<String, ServiceMetrics>>>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        GatewayMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            failures: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            access_log_dropped: Counter::default(),
            cache: Arc::default(),
        }
    }

    /// Registers every gateway metric (prefixed `pier_gateway_`) into
    /// `registry`; values stay shared with this handle.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pier_gateway_requests",
            "Requests answered, by service and status class",
            self.requests.clone(),
        );
        registry.register(
            "pier_gateway_request_duration_seconds",
            "Time from request head to the end of the response body, by service",
            self.durations.clone(),
        );
        registry.register(
            "pier_gateway_backend_failures",
            "Failed attempts against backends (connect, timeout, reset, 5xx), by service",
            self.failures.clone(),
        );
        registry.register(
            "pier_gateway_retries",
            "Attempts sent again to another backend, by service and reason",
            self.retries.clone(),
        );
        registry.register(
            "pier_gateway_ejections",
            "Backends ejected by passive outlier detection, by service",
            self.ejections.clone(),
        );
        registry.register(
            "pier_gateway_access_log_dropped",
            "Access log lines dropped because the writer's queue was full",
            self.access_log_dropped.clone(),
        );
    }

    /// The counter of dropped access log lines (shared with this handle).
    pub(crate) fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn service(&self, name: &str) -> ServiceMetrics {
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(m) = cache.get(name) {
            return m.clone();
        }
        let classes = CLASSES.map(|code| {
            self.requests
                .get_or_create(&RequestLabels {
                    service: name.to_string(),
                    code,
                })
                .clone()
        });
        let m = ServiceMetrics(Arc::new(ServiceHandles {
            name: Arc::from(name),
            classes,
            duration: self
                .durations
                .get_or_create(&ServiceLabels {
                    service: name.to_string(),
                })
                .clone(),
            owner: self.clone_families(),
        }));
        cache.insert(name.to_string(), m.clone());
        m
    }

    fn clone_families(&self) -> Families {
        Families {
            failures: self.failures.clone(),
            retries: self.retries.clone(),
            ejections: self.ejections.clone(),
        }
    }
}

#[derive(Clone)]
struct Families {
    failures: Family<KindLabels, Counter>,
    retries: Family<KindLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
}

/// Handles for one service. One `Arc` around all of them: every request
/// clones this once for its completion.
#[derive(Clone)]
pub(crate) struct ServiceMetrics(Arc<ServiceHandles>);

struct ServiceHandles {
    name: Arc<str>,
    classes: [Counter; 5],
    duration: Histogram,
    owner: Families,
}

impl ServiceMetrics {
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    pub(crate) fn observe(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0.classes[class].inc();
        self.0.duration.observe(seconds);
    }

    pub(crate) fn failure(&self, kind: FailureKind) {
        self.0
            .owner
            .failures
            .get_or_create(&KindLabels {
                service: self.0.name.to_string(),
                kind: kind.label(),
            })
            .inc();
    }

    pub(crate) fn retry(&self, kind: FailureKind) {
        self.0
            .owner
            .retries
            .get_or_create(&KindLabels {
                service: self.0.name.to_string(),
                kind: kind.label(),
            })
            .inc();
    }

    pub(crate) fn ejection(&self) {
        self.0
            .owner
            .ejections
            .get_or_create(&ServiceLabels {
                service: self.0.name.to_string(),
            })
            .inc();
    }
}
