//! Test fixtures: real hyper backends on loopback that answer with their own
//! id, a gateway on a free port, and table helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pier_gateway::{CatalogInstance, Gateway, GatewayConfig, RouteDefaults, RouteTable};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct BackendState {
    pub hits: AtomicUsize,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub seen: Mutex<Vec<Seen>>,
}

/// A hyper HTTP/1.1 server answering every request with its id.
pub struct TestBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    kill: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(id: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        state.status.store(200, Ordering::Relaxed);
        let (kill, kill_rx) = watch::channel(false);
        let id_owned = id.to_string();
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                let id = id_owned.clone();
                let mut kill_rx = kill_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = Arc::clone(&st);
                        let id = id.clone();
                        async move { Ok::<_, Infallible>(answer(&id, &st, req).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill_rx.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        TestBackend {
            id: id.to_string(),
            addr,
            state,
            kill,
            accept,
        }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Closes the listener and every open connection: afterwards connects
    /// are refused and pooled connections see EOF.
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let _ = self.kill.send(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answer(id: &str, st: &BackendState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(id.to_string())));
    *resp.status_mut() = StatusCode::from_u16(st.status.load(Ordering::SeqCst)).unwrap();
    resp.headers_mut()
        .insert("x-backend-id", id.parse().unwrap());
    resp
}

pub fn instance(service: &str, b: &TestBackend, zone: &str, passing: bool) -> CatalogInstance {
    instance_at(service, &b.id, b.addr, zone, passing)
}

pub fn instance_at(
    service: &str,
    id: &str,
    addr: SocketAddr,
    zone: &str,
    passing: bool,
) -> CatalogInstance {
    CatalogInstance {
        service: service.to_string(),
        instance_id: id.to_string(),
        address: addr.ip().to_string(),
        port: addr.port(),
        zone: zone.to_string(),
        tags: vec![],
        meta: BTreeMap::new(),
        passing,
    }
}

pub fn table(instances: &[CatalogInstance]) -> Arc<RouteTable> {
    Arc::new(RouteTable::build(instances, &RouteDefaults::default()))
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub routes: watch::Sender<Arc<RouteTable>>,
    pub metrics: pier_gateway::GatewayMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), pier_gateway::GatewayError>>>,
}

impl TestGateway {
    pub fn start(cfg: impl FnOnce(&mut GatewayConfig), initial: Arc<RouteTable>) -> TestGateway {
        let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), "a");
        cfg(&mut config);
        let (routes, rx) = watch::channel(initial);
        let gw = Gateway::new(config, rx).unwrap();
        let addr = gw.local_addr();
        let metrics = gw.metrics();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.serve(async {
            let _ = stop_rx.await;
        }));
        TestGateway {
            addr,
            routes,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn set(&self, t: Arc<RouteTable>) {
        self.routes.send_replace(t);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET through the gateway with the given Host; returns (status, body).
pub async fn get(c: &reqwest::Client, gw: &TestGateway, host: &str, path: &str) -> (u16, String) {
    let r = c
        .get(gw.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}
