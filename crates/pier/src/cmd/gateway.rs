//! `pier gateway`: the load balancer on its own, following a server's catalog.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::server::Shutdown;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// HTTP address of a pier server whose catalog to follow.
    #[arg(long, default_value = "http://127.0.0.1:8500")]
    pub server: String,
    /// This gateway's zone: backends in it get traffic first.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Round robin instead of power-of-two-choices on least outstanding requests.
    #[arg(long)]
    pub round_robin: bool,
}

pub fn config(listen: SocketAddr, zone: &str, round_robin: bool) -> pier_gateway::GatewayConfig {
    let mut cfg = pier_gateway::GatewayConfig::new(listen, zone);
    if round_robin {
        cfg.balancing = pier_gateway::Balancing::RoundRobin;
    }
    cfg
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let server = if args.server.starts_with("http") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let (tx, routes) = crate::gateway_feed::channel();
    crate::gateway_feed::spawn(server.clone(), tx)?;
    let gateway =
        pier_gateway::Gateway::new(config(args.listen, &args.zone, args.round_robin), routes)
            .with_context(|| format!("cannot start the gateway on {}", args.listen))?;
    tracing::info!(listen = %gateway.local_addr(), server = %server, zone = %args.zone, "gateway started");
    let shutdown = Shutdown::on_signals();
    gateway
        .serve(shutdown.wait())
        .await
        .context("gateway failed")?;
    Ok(ExitCode::SUCCESS)
}
