//! `pier agent`: the node agent on its own, joining a server (`pier dev --no-agent` or
//! `pier server`). It registers the node, heartbeats and runs the node's tasks on Docker.

use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The servers' HTTP API (host:port or URL), comma separated; one is enough, the agent learns
    /// the others from it and fails over between them.
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
    /// Port of the node-local registry endpoint on 127.0.0.1 (a pull-through to the cluster
    /// registry: images are named `127.0.0.1:5000/NAME:TAG` on every node); 0 turns it off.
    #[arg(long, default_value_t = DEFAULT_REGISTRY_PORT)]
    pub registry_port: u16,
    /// Where the agent keeps its certificate (a secure cluster).
    #[arg(long, default_value = "/var/lib/pier/agent")]
    pub data_dir: std::path::PathBuf,
    /// Where tasks' secret files are written before being mounted read-only at
    /// /run/secrets (one directory per task, removed with its container); keep it on a tmpfs.
    /// Default: /run/pier/secrets.
    #[arg(long)]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// A host directory under which services may mount host paths (`[[volumes]] source`);
    /// repeatable. Without one, host paths are refused.
    #[arg(long = "volume-root", value_parser = parse_volume_root)]
    pub volume_roots: Vec<String>,
    #[command(flatten)]
    pub node_net: crate::node::NodeNetArgs,
}

/// The first of a comma-separated server list as a URL (what the node gateway follows).
pub(crate) fn first_server_url(servers: &str, scheme: &str) -> String {
    let first = servers.split(',').next().unwrap_or_default().trim();
    if first.contains("://") {
        first.to_string()
    } else {
        format!("{scheme}://{first}")
    }
}

/// Port of the node-local registry endpoint (`127.0.0.1:5000`), the name pier images carry.
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;

/// An absolute directory without `..`, as given (a trailing `/` removed).
pub fn parse_volume_root(s: &str) -> Result<String, String> {
    let root = s.trim().trim_end_matches('/');
    if pier_api::service::is_clean_absolute_path(root) {
        Ok(root.to_string())
    } else {
        Err(format!(
            "--volume-root {s:?} must be an absolute directory without '..' (and not /)"
        ))
    }
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `join_token`: the global `--token` (or PIER_JOIN_TOKEN): the agent join token.
pub async fn run(args: AgentArgs, join_token: Option<String>) -> anyhow::Result<ExitCode> {
    let name = args
        .name
        .unwrap_or_else(crate::cmd::server::default_node_name);
    let join_token = join_token.or_else(|| std::env::var("PIER_JOIN_TOKEN").ok());
    let material = crate::security::node::prepare(
        &args.data_dir,
        pier_security::ca::Role::Agent,
        &name,
        &args.server,
        join_token.as_deref(),
        std::slice::from_ref(&args.host_ip),
    )
    .await?;
    let tls = match &material {
        Some(m) => Some(pier_agent::AgentTls {
            client: pier_net::HttpClient::new(
                |b| b.connect_timeout(std::time::Duration::from_secs(1)),
                Some(m.client_config()?),
            )?,
            listener: m.listener()?,
        }),
        None => None,
    };
    if let (Some(m), Some(t)) = (material, tls.clone()) {
        tokio::spawn(crate::security::node::renew_loop(
            m,
            args.data_dir.clone(),
            args.server.clone(),
            vec![args.host_ip.clone()],
            t.client,
            Some(t.listener),
        ));
    }
    let node_http = match &tls {
        Some(t) => t.client.clone(),
        None => pier_net::HttpClient::new(
            |b| b.connect_timeout(std::time::Duration::from_secs(3)),
            None,
        )?,
    };
    let first_server = first_server_url(&args.server, node_http.scheme());
    let config = pier_agent::AgentConfig {
        network: args.node_net.network(),
        readiness: None,
        volume_roots: args.volume_roots,
        secrets_dir: args
            .secrets_dir
            .unwrap_or_else(pier_agent::secrets::default_dir),
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
        registry_listen: (args.registry_port != 0)
            .then(|| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), args.registry_port)),
        tls,
    };
    let shutdown = crate::server::Shutdown::on_signals();
    let (agent, _node_gateway) = crate::node::start_agent(
        config,
        first_server,
        node_http,
        args.node_net.upstreams(),
        shutdown.wait(),
    )
    .await?;
    shutdown.wait().await;
    agent.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
