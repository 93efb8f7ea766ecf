//! Runs [`pier_gateway::Gateway`] with a static table for benchmarks: one
//! service whose route matches every host (`urlprefix-/`), so load
//! generators can use plain `http://127.0.0.1:PORT/` URLs.
//!
//! `cargo run --release -p pier-gateway --example bench_gateway -- \
//!     --listen 127.0.0.1:18082 --backend 127.0.0.1:18080 [--backend ...] \
//!     [--threads N] [--round-robin] [--zone Z] [--access-log FILE]`
//!
//! `--access-log FILE` writes the combined access log through the gateway's
//! writer thread, as `pier gateway` does by default; without it, requests
//! are logged only as `tracing` events when `RUST_LOG` enables
//! `pier_gateway::access`.
//!
//! `--threads 1` (the default when the process may use one CPU, e.g. under
//! `taskset -c 0`) uses tokio's current-thread runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use pier_gateway::{Balancing, CatalogInstance, Gateway, GatewayConfig, RouteDefaults, RouteTable};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:18082".parse()?;
    let mut backends: Vec<SocketAddr> = Vec::new();
    let mut threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut balancing = Balancing::PowerOfTwoChoices;
    let mut zone = String::new();
    let mut access_log: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?.parse()?,
            "--backend" => backends.push(args.next().ok_or("--backend needs ADDR")?.parse()?),
            "--threads" => threads = args.next().ok_or("--threads needs N")?.parse()?,
            "--round-robin" => balancing = Balancing::RoundRobin,
            "--zone" => zone = args.next().ok_or("--zone needs Z")?,
            "--access-log" => {
                access_log = Some(args.next().ok_or("--access-log needs FILE")?.into())
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if backends.is_empty() {
        return Err("at least one --backend ADDR is needed".into());
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }

    let instances: Vec<CatalogInstance> = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| CatalogInstance {
            service: "bench".into(),
            instance_id: format!("bench-{i}"),
            address: addr.ip().to_string(),
            port: addr.port(),
            zone: zone.clone(),
            tags: vec!["urlprefix-/".into()],
            passing: true,
            ..Default::default()
        })
        .collect();
    let table = Arc::new(RouteTable::build(&instances, &RouteDefaults::default()));
    let (_tx, rx) = tokio::sync::watch::channel(table);
    let mut cfg = GatewayConfig::new(listen, zone);
    cfg.balancing = balancing;

    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let mut gateway = Gateway::new(cfg, rx)?;
        if let Some(path) = access_log {
            let log = pier_gateway::AccessLog::start(
                pier_gateway::AccessDestination::File(path),
                pier_gateway::AccessFormat::Combined,
                &gateway.metrics(),
            )?;
            gateway.set_access_log(log);
        }
        eprintln!(
            "bench_gateway listening on {} ({threads} thread(s))",
            gateway.local_addr()
        );
        gateway
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
