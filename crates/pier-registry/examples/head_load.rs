//! HEAD load generator for the registry benchmark (bench/registry/run.sh):
//! wrk cannot do HEAD (it waits for a body that never comes).
//!
//! `head_load URL CONCURRENCY SECONDS` keeps CONCURRENCY keep-alive
//! connections busy with HEAD URL for SECONDS and prints
//! `requests=N errors=E rps=R p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..`.
//! One client thread, so that it leaves the other core to the server.

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: head_load URL CONCURRENCY SECONDS");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let concurrency: usize = args[2].parse().expect("CONCURRENCY is a number");
    let seconds: u64 = args[3].parse().expect("SECONDS is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
        // Warm the connections up before measuring.
        let warm_until = Instant::now() + Duration::from_millis(500);
        let deadline = warm_until + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                loop {
                    let start = Instant::now();
                    if start >= deadline {
                        break;
                    }
                    let ok = matches!(client.head(&url).send().await, Ok(r) if r.status().is_success());
                    if start >= warm_until {
                        if ok {
                            latencies.push(start.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("load task");
            all.extend(l);
            errors += e;
        }
        all.sort_unstable();
        println!(
            "requests={} errors={errors} rps={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3}",
            all.len(),
            all.len() as f64 / seconds as f64,
            percentile(&all, 0.50),
            percentile(&all, 0.90),
            percentile(&all, 0.99),
            percentile(&all, 1.0),
        );
    });
}
