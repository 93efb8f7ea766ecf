//! The node-local registry endpoint (`127.0.0.1:5000` by default): a pull-through to the
//! cluster registry, so an image has the same name on every node and Docker pulls it over
//! plain HTTP from a loopback address, which it allows without any configuration.
//!
//! Only reads are served (`GET`/`HEAD` under `/v2/`); pushes go to a server's registry. Each
//! request is sent to the registry addresses the servers advertise, the one that answered last
//! first, and on to the next when one cannot be reached or fails (5xx), so pulls keep working
//! while any one server is down. Every server serves every image (blobs it lacks it fetches
//! from another server), so the first answer that is not a server fault is the answer. The
//! address list is refreshed from the servers every [`REFRESH`], level-triggered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio::sync::watch;

use crate::client::ServerClient;

/// How often the registry addresses are asked of the servers.
const REFRESH: Duration = Duration::from_secs(10);

/// Request headers passed on to the registry.
const FORWARDED_REQUEST: [&str; 4] = ["accept", "range", "if-none-match", "user-agent"];
/// Response headers passed back to Docker.
const FORWARDED_RESPONSE: [&str; 7] = [
    "content-type",
    "content-length",
    "docker-content-digest",
    "etag",
    "accept-ranges",
    "content-range",
    "docker-distribution-api-version",
];

#[derive(Clone)]
struct Proxy {
    /// Registry addresses, the one that answered last first.
    upstreams: Arc<Mutex<Vec<String>>>,
    http: pier_net::HttpClient,
}

impl Proxy {
    fn upstreams(&self) -> Vec<String> {
        self.upstreams.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn prefer(&self, addr: &str) {
        if let Ok(mut list) = self.upstreams.lock() {
            if let Some(i) = list.iter().position(|a| a == addr) {
                let a = list.remove(i);
                list.insert(0, a);
            }
        }
    }

    /// Replaces the list with `fresh`, keeping the preferred order of addresses still in it.
    fn update(&self, fresh: Vec<String>) {
        if let Ok(mut list) = self.upstreams.lock() {
            let mut next: Vec<String> =
                list.iter().filter(|a| fresh.contains(a)).cloned().collect();
            for a in fresh {
                if !next.contains(&a) {
                    next.push(a);
                }
            }
            if *list != next {
                tracing::info!(registries = ?next, "registry addresses updated");
                *list = next;
            }
        }
    }
}

fn registry_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (status, axum::Json(body)).into_response()
}

/// Serves the endpoint on `listener` until `shutdown` flips, refreshing the registry
/// addresses from the servers meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: ServerClient,
    mut shutdown: watch::Receiver<bool>,
) {
    // The agent's own client: in a secure cluster the servers' registries speak TLS and let
    // an agent pull by its certificate.
    let proxy = Proxy {
        upstreams: Arc::default(),
        http: client.http(),
    };
    let refresher = {
        let (proxy, mut stop) = (proxy.clone(), shutdown.clone());
        async move {
            loop {
                match client.registry_endpoints().await {
                    Ok(list) => proxy.update(list),
                    Err(e) => tracing::debug!(error = %e, "cannot refresh the registry addresses"),
                }
                // Sooner while none is known (the servers advertise theirs as they start).
                let wait = if proxy.upstreams().is_empty() {
                    REFRESH / 10
                } else {
                    REFRESH
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let app = axum::Router::new().fallback(handle).with_state(proxy);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    tokio::select! {
        r = server => if let Err(e) = r { tracing::error!(error = %e, "node-local registry endpoint failed") },
        _ = refresher => {}
    }
}

async fn handle(State(proxy): State<Proxy>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method != Method::GET && method != Method::HEAD {
        return registry_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the node-local registry endpoint only serves pulls; push to a server's registry",
        );
    }
    if !(path == "/v2" || path.starts_with("/v2/")) {
        return registry_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no such endpoint");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(path);
    let upstreams = proxy.upstreams();
    if upstreams.is_empty() {
        return registry_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "no registry address known yet (the servers advertise them; is --advertise set?)",
        );
    }
    let mut last_error = String::new();
    for addr in &upstreams {
        match forward(&proxy.http, &method, addr, &path_and_query, req.headers()).await {
            Ok(resp) => {
                proxy.prefer(addr);
                return resp;
            }
            Err(e) => {
                tracing::warn!(registry = %addr, error = %e, "registry not answering; trying the next");
                last_error = e;
            }
        }
    }
    registry_error(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        &format!("no registry answered: {last_error}"),
    )
}

/// One attempt at one registry: Err when it cannot be reached or answers a server fault.
async fn forward(
    http: &pier_net::HttpClient,
    method: &Method,
    addr: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Response, String> {
    let url = format!("{}://{addr}{path_and_query}", http.scheme());
    let mut req = http.get().request(method.clone(), url);
    for name in FORWARDED_REQUEST {
        for value in headers.get_all(name) {
            req = req.header(name, value);
        }
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_server_error() {
        return Err(format!("{} answered {}", addr, resp.status()));
    }
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in FORWARDED_RESPONSE {
        for value in resp.headers().get_all(name) {
            out = out.header(HeaderName::from_static(name), value);
        }
    }
    let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    out.body(body).map_err(|e| e.to_string())
}

/// Binds the endpoint (before anything else starts, so a port clash fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
