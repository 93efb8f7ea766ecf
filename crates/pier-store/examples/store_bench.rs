//! In-process write benchmark: txn writes/s and latency percentiles at several concurrencies on
//! a 1-server and a 3-server cluster over loopback, fsync on (the store always fsyncs appends).
//!
//! cargo run --release -p pier-store --example store_bench -- [seconds_per_run] [value_bytes]
//!     [concurrencies, default 16,64] [server counts, default 1,3]
//!
//! Data goes to a temporary directory under $TMPDIR (set it to the disk you want to measure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_store::{Op, Store, StoreConfig, Table, Txn};

fn config(name: &str, dir: &std::path::Path, expect: usize, join: Vec<String>) -> StoreConfig {
    StoreConfig {
        node_name: name.to_string(),
        data_dir: dir.to_path_buf(),
        raft_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        raft_advertise: None,
        http_advertise: String::new(),
        bootstrap_expect: expect,
        join,
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        snapshot_every_logs: 10_000,
        tls: None,
        extra_routes: None,
    }
}

async fn cluster(n: usize, base: &std::path::Path) -> Vec<Store> {
    let mut stores: Vec<Store> = Vec::new();
    for i in 0..n {
        let join = stores
            .first()
            .map(|s| vec![s.raft_addr().to_string()])
            .unwrap_or_default();
        let s = Store::open(config(
            &format!("b{i}"),
            &base.join(format!("b{i}")),
            n,
            join,
        ))
        .await
        .expect("open");
        stores.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = stores.iter().all(|s| {
            let st = s.status();
            st.leader.is_some() && st.members.iter().filter(|m| m.voter).count() == n
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stores
}

struct Outcome {
    writes: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

async fn run(target: Store, concurrency: usize, secs: u64, value_bytes: usize) -> Outcome {
    let stop = Instant::now() + Duration::from_secs(secs);
    let value = Arc::new(vec![b'x'; value_bytes]);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let s = target.clone();
            let value = value.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    let key = format!("bench/{c}/{}", i % 1000);
                    let t = Instant::now();
                    s.write(Txn::single(Op::put(Table::KV, key, value.as_ref().clone())))
                        .await
                        .expect("write");
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = t0.elapsed();
    lat.sort();
    Outcome {
        writes: lat.len(),
        elapsed,
        lat,
    }
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let value_bytes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let concurrencies: Vec<usize> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 64]);
    let servers: Vec<usize> = args
        .get(4)
        .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3]);
    println!("pier-store write benchmark: {secs} s per run, {value_bytes}-byte values, one put per txn, fsync on");
    println!(
        "{:<8} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "servers", "conc", "writes", "writes/s", "p50 ms", "p99 ms", "max ms"
    );
    for &n in &servers {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stores = cluster(n, tmp.path()).await;
        let leader = stores
            .iter()
            .find(|s| s.status().is_leader)
            .cloned()
            .expect("leader");
        // Warm-up: connections, first allocations.
        let _ = run(leader.clone(), 4, 1, value_bytes).await;
        for &conc in &concurrencies {
            let o = run(leader.clone(), conc, secs, value_bytes).await;
            println!(
                "{:<8} {:>6} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                n,
                conc,
                o.writes,
                o.writes as f64 / o.elapsed.as_secs_f64(),
                pct(&o.lat, 0.50),
                pct(&o.lat, 0.99),
                pct(&o.lat, 1.0)
            );
        }
        for s in &stores {
            s.shutdown().await.expect("shutdown");
        }
    }
}
