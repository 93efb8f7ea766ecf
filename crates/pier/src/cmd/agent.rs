//! `pier agent`: the node agent on its own, joining a server (`pier dev --no-agent` or
//! `pier server`). It registers the node, heartbeats and runs the node's tasks on Docker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// The agent's own HTTP listener (serves logs to the servers; with a certificate, to
    /// servers only). Default: the host address (see --host-ip), a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address container ports are published on: where other nodes (their gateways and DNS
    /// answers) reach this node's tasks. Default: this machine's address on the way to the
    /// first server (127.0.0.1 when the server is on this machine).
    #[arg(long)]
    pub host_ip: Option<IpAddr>,
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

/// The `host:port` of a `--server` entry (`10.0.0.1:8500`, `https://s1:8500/`, `[::1]:8500`);
/// the API's default port when it names none.
fn server_host_port(server: &str) -> Option<String> {
    let rest = server.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    // A port is there when the text after the last ':' follows a host (and is not inside
    // an IPv6 literal's brackets).
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", crate::cmd::server::DEFAULT_HTTP_PORT)
    })
}

/// The address this machine sends from towards the first server that resolves: the one the
/// other machines of the cluster reach it at. A UDP `connect` only picks the route; nothing
/// is sent. Loopback when a server is on this machine's loopback.
async fn address_towards(servers: &str) -> Option<IpAddr> {
    for server in servers.split(',').filter_map(server_host_port) {
        let Ok(mut addrs) = tokio::net::lookup_host(server.as_str()).await else {
            continue;
        };
        let Some(addr) = addrs.next() else { continue };
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(addr).await.is_err() {
            continue;
        }
        match socket.local_addr() {
            Ok(a) if !a.ip().is_unspecified() => return Some(a.ip()),
            _ => continue,
        }
    }
    None
}

/// `--host-ip`, or the address towards the servers, or (no server resolves) loopback.
async fn host_ip(args: &AgentArgs) -> IpAddr {
    if let Some(ip) = args.host_ip {
        return ip;
    }
    match address_towards(&args.server).await {
        Some(ip) => {
            tracing::info!(%ip, "publishing task ports on this machine's address towards the servers (--host-ip chooses another)");
            ip
        }
        None => {
            tracing::warn!(server = %args.server, "no server address resolves: publishing task ports on 127.0.0.1, which other machines cannot reach (--host-ip sets the address)");
            Ipv4Addr::LOCALHOST.into()
        }
    }
}

/// `join_token`: the global `--token` (or PIER_JOIN_TOKEN): the agent join token.
pub async fn run(args: AgentArgs, join_token: Option<String>) -> anyhow::Result<ExitCode> {
    let host_ip = host_ip(&args).await;
    let listen = args.listen.unwrap_or(SocketAddr::new(host_ip, 0));
    let host_ip = host_ip.to_string();
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
        std::slice::from_ref(&host_ip),
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
            vec![host_ip.clone()],
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
        listen,
        host_ip,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_entries_name_a_host_and_port() {
        for (entry, want) in [
            ("10.0.0.1:8500", Some("10.0.0.1:8500")),
            ("https://10.0.0.1:9000/", Some("10.0.0.1:9000")),
            (" http://s1.example:8500/api ", Some("s1.example:8500")),
            ("10.0.0.1", Some("10.0.0.1:8500")),
            ("https://s1", Some("s1:8500")),
            ("[::1]:8501", Some("[::1]:8501")),
            ("[fd00::1]", Some("[fd00::1]:8500")),
            ("", None),
            ("https://", None),
        ] {
            assert_eq!(server_host_port(entry).as_deref(), want, "{entry:?}");
        }
    }

    #[tokio::test]
    async fn the_address_towards_the_servers_is_the_route_source() {
        // A server on loopback: this machine reaches it from loopback.
        assert_eq!(
            address_towards("https://127.0.0.1:8500").await,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        // The first usable entry decides; one that is not is skipped.
        assert_eq!(
            address_towards("https://,127.0.0.2:8500").await,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "127.0.0.2 is reached from 127.0.0.1"
        );
        assert_eq!(address_towards("https://").await, None);
    }
}
