//! `pier agent`: the node agent on its own, joining a server (`pier dev --no-agent` or
//! `pier server`). It registers the node, heartbeats and runs the node's tasks on Docker.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// A server's HTTP API (host:port or URL).
    #[arg(long, env = "PIER_SERVER")]
    pub server: String,
    /// Availability zone of this node.
    #[arg(long)]
    pub zone: String,
    /// Unique node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The agent's own HTTP listener (serves logs to the server).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address container ports are published on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host_ip: String,
    /// Node attribute for placement constraints (KEY=VALUE, repeatable).
    #[arg(long = "attr", value_parser = parse_key_value)]
    pub attributes: Vec<(String, String)>,
    /// Extra label on every container (KEY=VALUE, repeatable). The agent only manages
    /// containers carrying all of them and its node name.
    #[arg(long = "container-label", value_parser = parse_key_value)]
    pub container_labels: Vec<(String, String)>,
    /// Schedulable CPU in millicores (default: the engine's CPUs × 1000).
    #[arg(long)]
    pub cpu: Option<u64>,
    /// Schedulable memory in MiB (default: the engine's memory).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: std::time::Duration,
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let name = args
        .name
        .unwrap_or_else(crate::cmd::server::default_node_name);
    let config = pier_agent::AgentConfig {
        server: args.server,
        name,
        zone: args.zone,
        listen: args.listen,
        host_ip: args.host_ip,
        attributes: args.attributes.into_iter().collect(),
        container_labels: args.container_labels.into_iter().collect(),
        heartbeat_interval_ms: args.heartbeat_interval.as_millis() as u64,
        cpu_millis: args.cpu,
        memory_mb: args.memory_mb,
    };
    let agent = pier_agent::Agent::start(config)
        .await
        .context("cannot start the agent")?;
    crate::server::Shutdown::on_signals().wait().await;
    agent.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
