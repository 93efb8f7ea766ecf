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
    /// Gateway over HTTPS: https://<name>.localhost:<port>, certificates from a local CA.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    #[command(flatten)]
    pub acme: crate::cmd::server::AcmeArgs,
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
    /// A host directory under which services may mount host paths (`[[volumes]] source`);
    /// repeatable. Without one, host paths are refused.
    #[arg(long = "volume-root", value_parser = crate::cmd::agent::parse_volume_root)]
    pub volume_roots: Vec<String>,
    /// Where the built-in agent writes tasks' secret files (mounted read-only at
    /// /run/secrets); default: /run/pier/secrets (or $XDG_RUNTIME_DIR/pier/secrets).
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// A node silent for longer is down and its tasks move elsewhere.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub node_down_after: std::time::Duration,
    /// Revisions kept per service (rollback targets); older ones no task or deployment names
    /// are deleted, and so are finished deployments beyond as many.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub keep_revisions: usize,
    #[command(flatten)]
    pub access_log: crate::cmd::gateway::AccessLogArgs,
    #[command(flatten)]
    pub backups: crate::cmd::server::BackupArgs,
    #[command(flatten)]
    pub node_net: crate::node::NodeNetArgs,
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
    eprintln!(
        "  gateway (HTTPS)   https://<service>.localhost:{}",
        args.https_port
    );
    eprintln!("  DNS               127.0.0.1:{} (udp+tcp)", args.dns_port);
    let ca = crate::certs::local_ca_cert_path(&data_dir);
    eprintln!(
        "  local CA          {} (made on first start; to trust it: curl --cacert {0}, or\n                    sudo cp {0} /usr/local/share/ca-certificates/pier-dev.crt && sudo update-ca-certificates)",
        ca.display()
    );
    server::run(ServerConfig {
        node_name: "dev".to_string(),
        data_dir: data_dir.clone(),
        http_listen: SocketAddr::new(localhost, args.http_port),
        raft_listen: SocketAddr::new(localhost, args.raft_port),
        advertise: None,
        bootstrap_expect: 1,
        join: Vec::new(),
        snapshot_every_logs: 10_000,
        backup_every: args.backups.snapshot_every,
        backup_keep: args.backups.snapshot_keep,
        registry_listen: Some(SocketAddr::new(localhost, args.registry_port)),
        registry_cluster: None,
        registry_cert: None,
        gateway: Some(server::GatewayWiring {
            listen: SocketAddr::new(localhost, args.gateway_port),
            zone: args.zone.clone(),
            access_log: args.access_log.clone(),
            https_listen: Some(SocketAddr::new(localhost, args.https_port)),
            local_ca: Some(data_dir.clone()),
        }),
        dns_listen: Some(SocketAddr::new(localhost, args.dns_port)),
        check_allow: pier_catalog::CheckAllow::loopback_and_private(),
        acme: args.acme.config(),
        security: server::SecurityMode::Dev,
        orchestrator: pier_orchestrator::OrchestratorConfig {
            keep_revisions: args.keep_revisions,
            ..Default::default()
        },
        node_down_after_ms: u64::try_from(args.node_down_after.as_millis()).unwrap_or(u64::MAX),
        dns_upstreams: args.node_net.upstreams(),
        agent: (!args.no_agent).then(|| pier_agent::AgentConfig {
            container_labels: args.container_labels.into_iter().collect(),
            volume_roots: args.volume_roots.clone(),
            secrets_dir: args
                .secrets_dir
                .clone()
                .unwrap_or_else(pier_agent::secrets::default_dir),
            network: args.node_net.network(),
            ..pier_agent::AgentConfig::new(String::new(), "dev", args.zone.clone())
        }),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
