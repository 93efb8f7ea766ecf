//! `pier server`: one member of a 3- or 5-server cluster.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::server::{self, ServerConfig};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Directory holding this server's raft log, state and registry data.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Unique name of this server in the cluster (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Address to bind every listener to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Address other servers and agents reach this one at (required with --bind 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<IpAddr>,
    /// Port of the internal raft RPC listener.
    #[arg(long, default_value_t = 8300)]
    pub raft_port: u16,
    /// Port of the HTTP API (pier's own and the Consul-compatible one).
    #[arg(long, default_value_t = 8500)]
    pub http_port: u16,
    /// Wait for this many servers before electing a first leader (1, 3 or 5).
    #[arg(long, default_value_t = 1)]
    pub bootstrap_expect: usize,
    /// Raft addresses (host:port) of other servers, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Serve the OCI registry on this port (off unless given).
    #[arg(long)]
    pub registry_port: Option<u16>,
    /// Run a gateway in this process on this port (off unless given).
    #[arg(long)]
    pub gateway_port: Option<u16>,
    /// Zone of the in-process gateway (its backends there are preferred).
    #[arg(long, default_value = "")]
    pub gateway_zone: String,
    /// Serve Consul-style DNS on this port, UDP and TCP (off unless given).
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// Build a raft snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub raft_snapshot_every: u64,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    if args.bootstrap_expect == 0 {
        anyhow::bail!("--bootstrap-expect must be at least 1 (use 3 or 5 for a cluster)");
    }
    if args.bootstrap_expect > 1 && args.join.is_empty() {
        anyhow::bail!(
            "--bootstrap-expect {} needs --join with the raft addresses of the other servers",
            args.bootstrap_expect
        );
    }
    let node_name = match args.node_name {
        Some(name) => name,
        None => default_node_name(),
    };
    server::run(ServerConfig {
        node_name,
        data_dir: args.data_dir,
        http_listen: SocketAddr::new(args.bind, args.http_port),
        raft_listen: SocketAddr::new(args.bind, args.raft_port),
        advertise: args.advertise,
        bootstrap_expect: args.bootstrap_expect,
        join: args.join,
        snapshot_every_logs: args.raft_snapshot_every,
        registry_listen: args.registry_port.map(|p| SocketAddr::new(args.bind, p)),
        gateway: args.gateway_port.map(|p| crate::server::GatewayWiring {
            listen: SocketAddr::new(args.bind, p),
            zone: args.gateway_zone.clone(),
        }),
        dns_listen: args.dns_port.map(|p| SocketAddr::new(args.bind, p)),
        orchestrator: pier_orchestrator::OrchestratorConfig::default(),
        agent: None,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pier-1".to_string())
}
