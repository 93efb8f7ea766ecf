//! HEAD load generator for the registry benchmark (bench/registry/run.sh):
//! wrk cannot do HEAD (it waits for a body that never comes), and a full HTTP
//! client library would spend more CPU than the server on a 2-core machine.
//!
//! `head_load HOST:PORT PATH CONCURRENCY SECONDS` keeps CONCURRENCY
//! keep-alive connections busy with `HEAD PATH` (one request in flight per
//! connection) for SECONDS after a short warm-up, and prints
//! `requests=N errors=E rps=R p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..`.
//! A response counts as an error unless it is `200`. One client thread.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Reads one HEAD response (headers only). Returns whether it was a 200.
async fn read_head_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf.starts_with(b"HTTP/1.1 200"));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: head_load HOST:PORT PATH CONCURRENCY SECONDS");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let request = format!(
        "HEAD {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: head_load\r\n\r\n",
        args[2]
    )
    .into_bytes();
    let concurrency: usize = args[3].parse().expect("CONCURRENCY is a number");
    let seconds: u64 = args[4].parse().expect("SECONDS is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let warm_until = Instant::now() + Duration::from_millis(500);
        let deadline = warm_until + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (addr, request) = (addr.clone(), request.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut buf = Vec::with_capacity(1024);
                let mut stream = None;
                loop {
                    let start = Instant::now();
                    if start >= deadline {
                        break;
                    }
                    if stream.is_none() {
                        match TcpStream::connect(&addr).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                stream = Some(s);
                            }
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(s) = stream.as_mut() else { continue };
                    let ok = match s.write_all(&request).await {
                        Ok(()) => read_head_response(s, &mut buf).await,
                        Err(e) => Err(e),
                    };
                    let ok = match ok {
                        Ok(ok) => ok,
                        Err(_) => {
                            stream = None;
                            false
                        }
                    };
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
