//! Measures how long a backend added to the routing table waits for its
//! first request, in-process, under steady load.
//!
//! A gateway routes `web` to one base backend while client tasks keep
//! requests flowing. Each try starts a new backend, sends a table with it
//! added, and takes the time until that backend sees its first request; then
//! the backend is removed again. Prints p50/p99/max over the tries.
//!
//! `cargo run --release -p pier-gateway --example route_add_latency -- [--tries 100] [--clients 4]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pier_gateway::{CatalogInstance, Gateway, GatewayConfig, RouteDefaults, RouteTable};
use tokio::sync::{oneshot, watch};

/// Starts a backend; the oneshot fires with the time of its first request.
async fn backend() -> (
    SocketAddr,
    oneshot::Receiver<Instant>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let first = Arc::new(std::sync::Mutex::new(Some(tx)));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first = Arc::clone(&first);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    if let Some(tx) = first.lock().unwrap().take() {
                        let _ = tx.send(Instant::now());
                    }
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx, task)
}

fn inst(id: &str, addr: SocketAddr) -> CatalogInstance {
    CatalogInstance {
        service: "web".into(),
        instance_id: id.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        passing: true,
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut tries = 100usize;
    let mut clients = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tries" => tries = args.next().ok_or("--tries needs N")?.parse()?,
            "--clients" => clients = args.next().ok_or("--clients needs N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let defaults = RouteDefaults::default();
    let (base, _, _base_task) = backend().await;
    let (tx, rx) = watch::channel(Arc::new(RouteTable::build(
        &[inst("base", base)],
        &defaults,
    )));
    let gateway = Gateway::new(GatewayConfig::new("127.0.0.1:0".parse()?, ""), rx)?;
    let gw_addr = gateway.local_addr();
    tokio::spawn(gateway.serve(std::future::pending()));

    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..clients {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let uri: http::Uri = format!("http://{gw_addr}/").parse().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(uri.clone())
                    .header("host", "web.localhost")
                    .body(Empty::new())
                    .unwrap();
                if let Ok(resp) = client.request(req).await {
                    let _ = resp.into_body().collect().await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut waits = Vec::with_capacity(tries);
    for i in 0..tries {
        let (addr, first, task) = backend().await;
        let added = Instant::now();
        tx.send_replace(Arc::new(RouteTable::build(
            &[inst("base", base), inst(&format!("new-{i}"), addr)],
            &defaults,
        )));
        let first = tokio::time::timeout(Duration::from_secs(5), first).await??;
        waits.push(first.saturating_duration_since(added));
        tx.send_replace(Arc::new(RouteTable::build(
            &[inst("base", base)],
            &defaults,
        )));
        tokio::time::sleep(Duration::from_millis(20)).await;
        task.abort();
    }
    stop.store(true, Ordering::Relaxed);
    waits.sort();
    println!(
        "route add -> first request: tries={} p50={:.3}ms p99={:.3}ms max={:.3}ms",
        waits.len(),
        percentile(&waits, 0.50).as_secs_f64() * 1e3,
        percentile(&waits, 0.99).as_secs_f64() * 1e3,
        waits[waits.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}
