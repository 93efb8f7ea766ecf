//! `pier dev`: every part of pier in one process, on 127.0.0.1 only. State
//! persists in the data dir, so a restart keeps services, catalog and images.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::server::{self, ServerConfig};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where state is kept (default: $XDG_DATA_HOME/pier/dev or ~/.local/share/pier/dev).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API and Consul-compatible API.
    #[arg(long, default_value_t = 8500)]
    pub http_port: u16,
    /// Internal raft RPC port (a one-member cluster still uses it).
    #[arg(long, default_value_t = 8300)]
    pub raft_port: u16,
    /// OCI registry (docker push 127.0.0.1:5000/NAME:TAG).
    #[arg(long, default_value_t = 5000)]
    pub registry_port: u16,
    /// Gateway: every service answers on http://<name>.localhost:<port>.
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
    /// Consul-style DNS (UDP and TCP): dig @127.0.0.1 -p 8600 web.service.consul
    #[arg(long, default_value_t = 8600)]
    pub dns_port: u16,
    /// Zone of the built-in node agent.
    #[arg(long, default_value = "local")]
    pub zone: String,
    /// Run no node agent in this process (agents join with `pier agent`).
    #[arg(long)]
    pub no_agent: bool,
    /// Extra label on every container the built-in agent runs (KEY=VALUE, repeatable).
    #[arg(long = "container-label", value_parser = crate::cmd::agent::parse_key_value)]
    pub container_labels: Vec<(String, String)>,
    /// A node silent for longer is down and its tasks move elsewhere.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub node_down_after: std::time::Duration,
}

pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("pier").join("dev");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/pier/dev"),
        None => PathBuf::from(".pier-dev"),
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let localhost = Ipv4Addr::LOCALHOST.into();
    eprintln!("pier dev: data in {}", data_dir.display());
    eprintln!("  API + Consul API  http://127.0.0.1:{}", args.http_port);
    eprintln!("  registry          127.0.0.1:{}", args.registry_port);
    eprintln!(
        "  gateway           http://<service>.localhost:{}",
        args.gateway_port
    );
    eprintln!("  DNS               127.0.0.1:{} (udp+tcp)", args.dns_port);
    server::run(ServerConfig {
        node_name: "dev".to_string(),
        data_dir,
        http_listen: SocketAddr::new(localhost, args.http_port),
        raft_listen: SocketAddr::new(localhost, args.raft_port),
        advertise: None,
        bootstrap_expect: 1,
        join: Vec::new(),
        snapshot_every_logs: 10_000,
        registry_listen: Some(SocketAddr::new(localhost, args.registry_port)),
        gateway: Some(server::GatewayWiring {
            listen: SocketAddr::new(localhost, args.gateway_port),
            zone: args.zone.clone(),
        }),
        dns_listen: Some(SocketAddr::new(localhost, args.dns_port)),
        orchestrator: pier_orchestrator::OrchestratorConfig {
            node_down_after_ms: args.node_down_after.as_millis() as u64,
            ..Default::default()
        },
        agent: (!args.no_agent).then(|| pier_agent::AgentConfig {
            container_labels: args.container_labels.into_iter().collect(),
            ..pier_agent::AgentConfig::new(String::new(), "dev", args.zone.clone())
        }),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
