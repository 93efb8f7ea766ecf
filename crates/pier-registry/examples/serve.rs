//! The registry library on its own, for experiments while the `pier` binary
//! is being rebuilt: `serve DATA_DIR LISTEN_ADDR`. GC is off; Ctrl-C stops it.
//! Production use goes through `pier registry`.

use pier_registry::RegistryConfig;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: serve DATA_DIR LISTEN_ADDR");
        std::process::exit(2);
    }
    let mut cfg = RegistryConfig::new(&args[1]);
    cfg.gc_interval = None;
    let listen = args[2].parse().unwrap_or_else(|e| {
        eprintln!("bad listen address {}: {e}", args[2]);
        std::process::exit(2);
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = pier_registry::serve(cfg, listen, shutdown).await {
        eprintln!("registry failed: {e}");
        std::process::exit(1);
    }
}
