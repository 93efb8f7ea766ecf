//! Prometheus metrics of the API server, rendered at `/metrics` together with
//! the store's raft gauges (read at scrape time, so they are never stale).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Extra text appended at scrape time by components with their own registry
    /// (the registry, the gateway).
    extra: std::sync::Mutex<Vec<Box<dyn Fn() -> String + Send + Sync>>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "pier_http_requests",
            "HTTP requests served by the API",
            requests.clone(),
        );
        registry.register(
            "pier_http_request_duration_seconds",
            "Latency of API requests",
            latency.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            extra: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn add_source(&self, source: Box<dyn Fn() -> String + Send + Sync>) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.push(source);
        }
    }
}

pub async fn track_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

pub async fn render(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    if encode(&mut text, &state.metrics.registry).is_err() {
        text.clear();
    }
    // The encoder ends with "# EOF"; drop it so more families can follow.
    if let Some(pos) = text.rfind("# EOF") {
        text.truncate(pos);
    }
    let s = state.store.status();
    let gauges = [
        (
            "pier_raft_is_leader",
            "1 when this server is the raft leader",
            u64::from(s.is_leader),
        ),
        ("pier_raft_term", "Current raft term", s.term),
        (
            "pier_raft_last_log_index",
            "Last raft log index on this server",
            s.last_log_index,
        ),
        (
            "pier_raft_applied_index",
            "Last raft index applied to the state machine",
            s.last_applied_index,
        ),
        (
            "pier_raft_commit_index",
            "Last committed raft index known here",
            s.commit_index,
        ),
        (
            "pier_raft_members",
            "Voting members in the raft configuration",
            s.members.len() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        text.push_str(&format!(
            "# HELP {name} {help}.\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    if let Ok(extra) = state.metrics.extra.lock() {
        for source in extra.iter() {
            let more = source();
            // Each source may end with its own "# EOF"; only one may end the page.
            text.push_str(more.trim_end().trim_end_matches("# EOF"));
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text.push_str("# EOF\n");
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
