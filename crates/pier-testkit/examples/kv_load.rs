//! Closed-loop KV write load over HTTP or HTTPS (with a client certificate and a bearer token
//! when asked), for `bench/store/tls.sh`: wrk cannot present a client certificate, which etcd
//! with `--client-cert-auth` requires, so both systems are driven by this one client.
//!
//! ```text
//! kv_load --target pier|etcd --urls URL[,URL...] --connections 32 --seconds 10
//!         [--ca FILE] [--cert FILE --key FILE] [--token SECRET]
//! ```
//! Each connection writes a fresh 64-byte value to a fresh key and waits for the answer
//! (pier: `PUT /api/v1/kv/bench/<n>`; etcd: `POST /v3/kv/put`), spread round-robin over the
//! URLs. Prints one line: `writes_per_s p50_ms p99_ms errors`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

struct Args {
    etcd: bool,
    urls: Vec<String>,
    connections: usize,
    seconds: u64,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    token: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        etcd: false,
        urls: Vec::new(),
        connections: 32,
        seconds: 10,
        ca: None,
        cert: None,
        key: None,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.etcd = value() == "etcd",
            "--urls" => a.urls = value().split(',').map(str::to_string).collect(),
            "--connections" => a.connections = value().parse().expect("--connections"),
            "--seconds" => a.seconds = value().parse().expect("--seconds"),
            "--ca" => a.ca = Some(value()),
            "--cert" => a.cert = Some(value()),
            "--key" => a.key = Some(value()),
            "--token" => a.token = Some(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.urls.is_empty(), "--urls is required");
    a
}

fn read(path: &Option<String>) -> Option<Vec<u8>> {
    path.as_ref()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

fn client(a: &Args) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(a.connections);
    if let Some(ca) = read(&a.ca) {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"));
    }
    if let (Some(cert), Some(key)) = (read(&a.cert), read(&a.key)) {
        let mut pem = cert;
        pem.extend_from_slice(b"\n");
        pem.extend_from_slice(&key);
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("client certificate PEM"));
    }
    b.build().expect("HTTP client")
}

async fn write_once(c: &reqwest::Client, a: &Args, url: &str, n: u64) -> bool {
    let value = format!("{n:064}");
    let req = if a.etcd {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        c.post(format!("{url}/v3/kv/put"))
            .json(&serde_json::json!({"key": b64(&format!("bench/{n}")), "value": b64(&value)}))
    } else {
        let mut r = c.put(format!("{url}/api/v1/kv/bench/{n}")).body(value);
        if let Some(t) = &a.token {
            r = r.bearer_auth(t);
        }
        r
    };
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

#[tokio::main]
async fn main() {
    let a = Arc::new(parse_args());
    let c = client(&a);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Warm-up: one write per connection, not measured (handshakes, pools).
    for i in 0..a.connections {
        let url = &a.urls[i % a.urls.len()];
        write_once(&c, &a, url, u64::MAX - i as u64).await;
    }
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..a.connections {
        let (a, c, next, errors) = (a.clone(), c.clone(), next.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let url = a.urls[i % a.urls.len()].clone();
            let mut latencies_us = Vec::new();
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if write_once(&c, &a, &url, n).await {
                    latencies_us.push(t.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies_us
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|us| *us as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{:.0} {:.2} {:.2} {}",
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
}
