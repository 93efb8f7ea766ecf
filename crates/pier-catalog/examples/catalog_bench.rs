//! Catalog benchmarks (run by `bench/catalog/run.sh`, release build):
//!
//! 1. `passing`: time from an instance's first passing HTTP check answer to its appearance in a
//!    blocking `/v1/health/service/:name?passing` answer, over N tries.
//! 2. `fanout`: W blocking HTTP watchers on one service (in a child process, so the server's
//!    CPU is measured alone): time for one change to reach all of them, and server CPU used.
//! 3. `dead`: time from stopping an agent's heartbeats (an in-process agent task aborted) to its
//!    instance leaving a blocking `?passing` answer.
//!
//! Usage: catalog_bench [passing N] [fanout W] [dead N]   (all three by default)
//!        catalog_bench watchers URL COUNT INDEX         (internal: the fan-out clients)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pier_catalog::{Agent, AgentConfig, Catalog, CatalogConfig, InstanceRegistration, NodeMonitor};
use pier_store::{Store, StoreConfig};
use serde_json::{json, Value};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn index_header(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of this process, from /proc.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Linux reports in clock ticks of 100 Hz on every platform we run on.
    Duration::from_millis(ticks * 10)
}

struct Server {
    url: String,
    catalog: Catalog,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_addr: SocketAddr = listener.local_addr().expect("addr");
    let mut cfg = StoreConfig::single_node("bench", dir.path());
    cfg.http_advertise = http_addr.to_string();
    let store = Store::open(cfg).await.expect("store");
    store
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let catalog = Catalog::new(store, CatalogConfig::default());
    let agent = Agent::start(catalog.clone(), AgentConfig::new("bench", "127.0.0.1"));
    std::mem::forget(NodeMonitor::start(catalog.clone()));
    let app = pier_catalog::router(catalog.clone(), agent.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{http_addr}");
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = c.get(format!("{url}/v1/catalog/node/bench")).send().await {
            if r.text().await.unwrap_or_default() != "null" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        url,
        catalog,
        _dir: dir,
    }
}

/// Health endpoints that answer 503 until enabled, recording when they first answered 200.
#[derive(Clone, Default)]
struct Targets {
    enabled: Arc<Mutex<HashMap<u32, Option<Instant>>>>,
}

async fn start_targets() -> (SocketAddr, Targets) {
    let targets = Targets::default();
    let t = targets.clone();
    let app = axum::Router::new().route(
        "/t/{i}",
        axum::routing::get(move |axum::extract::Path(i): axum::extract::Path<u32>| {
            let t = t.clone();
            async move {
                let mut map = t.enabled.lock().unwrap_or_else(|p| p.into_inner());
                match map.get_mut(&i) {
                    Some(first) => {
                        first.get_or_insert_with(Instant::now);
                        axum::http::StatusCode::OK
                    }
                    None => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, targets)
}

async fn bench_passing(server: &Server, tries: u32) {
    let c = reqwest::Client::new();
    let (taddr, targets) = start_targets().await;
    let mut lat = Vec::new();
    for i in 0..tries {
        let id = format!("lat-{i}");
        let r = c
            .put(format!("{}/v1/agent/service/register", server.url))
            .json(&json!({"ID": id, "Name": "lat", "Port": 1000 + i,
                "Check": {"HTTP": format!("http://{taddr}/t/{i}"), "Interval": "20ms", "Timeout": "1s"}}))
            .send()
            .await
            .expect("register");
        assert!(r.status().is_success());
        let url = format!("{}/v1/health/service/lat?passing", server.url);
        let r = c.get(&url).send().await.expect("read");
        let mut index = index_header(&r);
        let watcher = {
            let c = c.clone();
            let id = id.clone();
            tokio::spawn(async move {
                loop {
                    let r = c
                        .get(format!("{url}&index={index}&wait=30s"))
                        .send()
                        .await
                        .expect("blocking read");
                    index = index_header(&r);
                    let body: Vec<Value> = r.json().await.expect("json");
                    if body.iter().any(|h| h["Service"]["ID"] == id.as_str()) {
                        return Instant::now();
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        targets
            .enabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(i, None);
        let seen = watcher.await.expect("watcher");
        let first_ok =
            targets.enabled.lock().unwrap_or_else(|p| p.into_inner())[&i].expect("answered 200");
        lat.push(seen.saturating_duration_since(first_ok));
        c.put(format!("{}/v1/agent/service/deregister/{id}", server.url))
            .send()
            .await
            .expect("deregister");
    }
    lat.sort();
    println!(
        "passing->visible over {tries} tries: p50 {}  p99 {}  max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );
}

async fn bench_fanout(server: &Server, watchers: u32) {
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{}/v1/agent/service/register", server.url))
        .json(&json!({"ID": "fan-1", "Name": "fan", "Port": 1, "Check": {"TTL": "1h", "Status": "passing"}}))
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success());
    let r = c
        .get(format!("{}/v1/health/service/fan", server.url))
        .send()
        .await
        .expect("read");
    let index = index_header(&r);
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .arg("watchers")
        .arg(format!(
            "{}/v1/health/service/fan?index={index}&wait=120s",
            server.url
        ))
        .arg(watchers.to_string())
        .arg(index.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watcher process");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    stdout.read_line(&mut line).await.expect("READY line");
    assert_eq!(line.trim(), "READY", "watcher process said {line:?}");
    // Every request is sent; give the server time to have all of them blocked.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_before = process_cpu();
    let t0 = SystemTime::now();
    let r = c
        .put(format!("{}/v1/agent/service/register", server.url))
        .json(&json!({"ID": "fan-2", "Name": "fan", "Port": 2}))
        .send()
        .await
        .expect("change");
    assert!(r.status().is_success());
    // Up to the BAD line, which the child writes once every answer is in and before it closes
    // its connections (their teardown is not part of the fan-out).
    let mut rest = String::new();
    loop {
        let before = rest.len();
        let n = stdout.read_line(&mut rest).await.expect("watcher output");
        if n == 0 || rest[before..].starts_with("BAD ") {
            break;
        }
    }
    let cpu = process_cpu().saturating_sub(cpu_before);
    let _ = child.wait().await;
    let t0_ns = t0.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i128;
    let mut lat: Vec<Duration> = rest
        .lines()
        .filter_map(|l| l.trim().parse::<i128>().ok())
        .map(|ns| Duration::from_nanos((ns - t0_ns).max(0) as u64))
        .collect();
    lat.sort();
    let bad: usize = rest
        .lines()
        .find_map(|l| l.strip_prefix("BAD ")?.parse().ok())
        .unwrap_or(0);
    if bad > 0 {
        println!("WARNING: {bad} answers were not a 200 with a newer X-Consul-Index");
    }
    let client_cpu_ms: u64 = rest
        .lines()
        .find_map(|l| l.strip_prefix("CLIENT_CPU_MS ")?.parse().ok())
        .unwrap_or(0);
    if lat.len() != watchers as usize {
        println!(
            "WARNING: only {} of {watchers} watchers reported",
            lat.len()
        );
    }
    println!(
        "fan-out to {} watchers: p50 {}  p99 {}  max {}  server CPU {} (for the change and all answers), client CPU {client_cpu_ms} ms",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
        ms(cpu)
    );
}

/// Child process: COUNT blocking GETs of URL over raw HTTP/1.1 connections (no HTTP client
/// stack, so the measurement is the server's fan-out, not this process's parsing); prints READY
/// once all requests are written, then the wall clock (ns since the epoch) at which the first
/// bytes of each answer arrived, then `BAD n` for answers that were not a 200 with an
/// `X-Consul-Index` above `min_index`.
///
/// It runs on a single-threaded runtime so that it takes at most one of the machine's cores
/// from the server, and it keeps every connection open until all answers are in: a Consul
/// watcher keeps its connection for the next blocking query, so closing them here would make
/// the server tear down thousands of connections in the middle of the fan-out it is measured on.
async fn run_watchers(url: String, count: u32, min_index: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let addr: SocketAddr = host.parse().expect("host:port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut conns = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        conns.push(stream);
    }
    println!("READY");
    let cpu_ready = process_cpu();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                // Headers fit in one read; only the arrival time and the head are looked at.
                let mut buf = vec![0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let ok = n > 0 && answer_is_newer(&buf[..n], min_index);
                (n > 0).then_some((at, ok, stream))
            })
        })
        .collect();
    let mut out = String::new();
    let mut bad = 0;
    let mut open = Vec::with_capacity(count as usize);
    for t in tasks {
        if let Ok(Some((ns, ok, stream))) = t.await {
            out.push_str(&format!("{ns}\n"));
            bad += u32::from(!ok);
            open.push(stream);
        }
    }
    // Its CPU while waiting and reading the answers: it shares the machine with the server.
    let cpu_ms = process_cpu().saturating_sub(cpu_ready).as_millis();
    out.push_str(&format!("CLIENT_CPU_MS {cpu_ms}\nBAD {bad}\n"));
    print!("{out}");
    drop(open);
}

/// Whether an HTTP answer head is a 200 whose `X-Consul-Index` is above `min_index`.
fn answer_is_newer(head: &[u8], min_index: u64) -> bool {
    let text = String::from_utf8_lossy(head);
    let index = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-consul-index")
            .then(|| value.trim().parse::<u64>().ok())?
    });
    text.starts_with("HTTP/1.1 200 ") && index.is_some_and(|i| i > min_index)
}

async fn bench_dead(server: &Server, tries: u32) {
    let c = reqwest::Client::new();
    let mut lat = Vec::new();
    for i in 0..tries {
        let node = format!("victim-{i}");
        let agent = Agent::start(
            server.catalog.clone(),
            AgentConfig::new(node.clone(), "127.0.0.9"),
        );
        let reg = InstanceRegistration {
            id: format!("v-{i}"),
            service: format!("victim-svc-{i}"),
            port: 80,
            ..Default::default()
        };
        for _ in 0..100 {
            if agent.register_service(&reg).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = format!("{}/v1/health/service/victim-svc-{i}?passing", server.url);
        let r = c.get(&url).send().await.expect("read");
        let mut index = index_header(&r);
        let body: Vec<Value> = r.json().await.expect("json");
        assert_eq!(body.len(), 1, "instance passing before the kill");
        // Let heartbeats run for a random part of an interval so the kill lands anywhere.
        tokio::time::sleep(Duration::from_millis(1000 + (i as u64 * 97) % 500)).await;
        let killed = Instant::now();
        agent.shutdown();
        loop {
            let r = c
                .get(format!("{url}&index={index}&wait=30s"))
                .send()
                .await
                .expect("blocking read");
            index = index_header(&r);
            let body: Vec<Value> = r.json().await.expect("json");
            if body.is_empty() {
                lat.push(killed.elapsed());
                break;
            }
        }
    }
    lat.sort();
    println!(
        "agent stopped -> instance out of passing over {tries} tries: p50 {}  max {}  (heartbeat 500 ms, dead after 2000 ms)",
        ms(percentile(&lat, 0.5)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("watchers") {
        let url = args.get(1).cloned().expect("URL");
        let count = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1000);
        let min_index = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run_watchers(url, count, min_index));
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_benches(args));
}

async fn run_benches(args: Vec<String>) {
    let mut plan: Vec<(String, u32)> = Vec::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let n = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        plan.push((name.clone(), n));
    }
    if plan.is_empty() {
        plan = vec![
            ("passing".into(), 100),
            ("fanout".into(), 10_000),
            ("dead".into(), 5),
        ];
    }
    let server = start_server().await;
    for (name, n) in plan {
        match name.as_str() {
            "passing" => bench_passing(&server, n.max(1)).await,
            "fanout" => bench_fanout(&server, n.max(1)).await,
            "dead" => bench_dead(&server, n.max(1)).await,
            other => eprintln!("unknown benchmark {other:?}"),
        }
    }
}
