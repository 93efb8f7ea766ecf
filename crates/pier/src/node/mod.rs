//! The node's own gateway and DNS on the pier network (`pier dev` and `pier agent`): what
//! makes `http://api.internal/` and `api.service.consul` work inside every container with no
//! configuration. Both listen on the bridge's gateway address only (the host's address on
//! the pier network, which containers reach and the outside does not), the gateway on port
//! 80 and the DNS on port 53. The gateway is pier-gateway fed from the catalog like the
//! public one (same balancing, zone preference, retries, draining), routing
//! `<service>.internal`.

pub mod answer;
pub mod dns;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use pier_gateway::RouteTable;
use tokio::sync::watch;

use crate::gateway_feed::Instances;

pub const GATEWAY_PORT: u16 = 80;
pub const DNS_PORT: u16 = 53;
/// The network `pier dev` and `pier agent` create unless told otherwise.
pub const DEFAULT_NETWORK: &str = "pier0";

/// The node feed's channels: created before the agent starts (its `needs` check reads the
/// routes), fed once the bridge address is known.
pub struct Feed {
    routes_tx: watch::Sender<Arc<RouteTable>>,
    routes_rx: watch::Receiver<Arc<RouteTable>>,
    all_tx: watch::Sender<Instances>,
    all_rx: watch::Receiver<Instances>,
}

impl Feed {
    pub fn new() -> Feed {
        let (routes_tx, routes_rx) = crate::gateway_feed::channel();
        let (all_tx, all_rx) = watch::channel(Arc::new(Vec::new()));
        Feed {
            routes_tx,
            routes_rx,
            all_tx,
            all_rx,
        }
    }

    /// For the agent's `needs`: a service is ready when it has a passing instance.
    pub fn readiness(&self) -> pier_agent::Readiness {
        let rx = self.routes_rx.clone();
        pier_agent::Readiness(Arc::new(move |service: &str| {
            rx.borrow()
                .service(service)
                .is_some_and(|s| s.passing_backends().next().is_some())
        }))
    }
}

pub struct NodeNet {
    pub bridge_ip: Ipv4Addr,
    pub node: String,
    pub zone: String,
    /// A server's API URL and the client to follow its catalog with.
    pub server: String,
    pub http: pier_net::HttpClient,
    /// None: the host's resolvers from /etc/resolv.conf.
    pub upstreams: Option<Vec<SocketAddr>>,
}

/// Binds the node gateway and DNS on the bridge address and starts them with the feed.
/// Another pier already serving this network on this machine (two agents on one engine) is
/// not an error: its gateway and DNS serve the containers of both.
pub async fn start(
    cfg: NodeNet,
    feed: Feed,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<GatewayTask>> {
    let ip = std::net::IpAddr::V4(cfg.bridge_ip);
    let upstreams = match cfg.upstreams {
        Some(u) => u,
        None => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            dns::upstreams_from_resolv_conf(&text, ip)
        }
    };
    let gateway_addr = SocketAddr::new(ip, GATEWAY_PORT);
    let gateway = match pier_gateway::Gateway::new(
        crate::cmd::gateway::config(gateway_addr, &cfg.zone, false),
        feed.routes_rx.clone(),
    ) {
        Ok(g) => g,
        Err(pier_gateway::GatewayError::Bind { source, .. })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::warn!(%gateway_addr, "another process serves the pier network's gateway address on this machine; its node gateway and DNS serve this node's containers too");
            // The feed still runs: this agent's `needs` check reads its routes, and without
            // it a task here would wait for its needs forever.
            crate::gateway_feed::spawn_internal(cfg.server, feed.routes_tx, feed.all_tx, cfg.http);
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot start the node gateway on {gateway_addr}: it needs root or CAP_NET_BIND_SERVICE (port 80 on the pier network's bridge); or start with --no-network, and tasks run without names for each other")
            })
        }
    };
    let dns_addr = SocketAddr::new(ip, DNS_PORT);
    let udp = tokio::net::UdpSocket::bind(dns_addr)
        .await
        .with_context(|| format!("cannot listen for DNS on {dns_addr} (UDP)"))?;
    let tcp = tokio::net::TcpListener::bind(dns_addr)
        .await
        .with_context(|| format!("cannot listen for DNS on {dns_addr} (TCP)"))?;
    crate::gateway_feed::spawn_internal(cfg.server, feed.routes_tx, feed.all_tx, cfg.http);
    let resolver = dns::Resolver {
        gateway_ip: cfg.bridge_ip,
        node: cfg.node,
        instances: feed.all_rx,
        upstreams: Arc::new(upstreams),
    };
    tracing::info!(gateway = %gateway_addr, dns = %dns_addr, upstreams = ?resolver.upstreams, "node gateway and DNS listening on the pier network");
    tokio::spawn(dns::serve_udp(udp, resolver.clone()));
    tokio::spawn(dns::serve_tcp(tcp, resolver));
    Ok(Some(tokio::spawn(async move {
        gateway.serve(shutdown).await.context("node gateway failed")
    })))
}

/// A running node gateway (it ends with the shutdown future).
pub type GatewayTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Starts the node agent and, when it runs tasks on a pier network, the node's gateway and
/// DNS following the catalog of `server` (a URL) with `http`; `needs` are checked against
/// that gateway's routes.
pub async fn start_agent(
    mut config: pier_agent::AgentConfig,
    server: String,
    http: pier_net::HttpClient,
    upstreams: Option<Vec<SocketAddr>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(pier_agent::Agent, Option<GatewayTask>)> {
    let feed = Feed::new();
    if config.network.is_some() {
        config.readiness = Some(feed.readiness());
    }
    let (node, zone) = (config.name.clone(), config.zone.clone());
    let agent = pier_agent::Agent::start(config)
        .await
        .context("cannot start the node agent")?;
    let Some(bridge_ip) = agent.bridge_ip() else {
        return Ok((agent, None));
    };
    let net = NodeNet {
        bridge_ip,
        node,
        zone,
        server,
        http,
        upstreams,
    };
    let gateway = start(net, feed, shutdown).await?;
    Ok((agent, gateway))
}

/// The flags of `pier dev` and `pier agent` about the node's network.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeNetArgs {
    /// Docker network the agent creates (if missing) and runs every task on; the node's
    /// gateway (port 80) and DNS (port 53) listen on its bridge address.
    #[arg(long, default_value = DEFAULT_NETWORK)]
    pub network: String,
    /// Run tasks on Docker's default bridge, without the node gateway and DNS.
    #[arg(long)]
    pub no_network: bool,
    /// Upstream resolver for names pier does not serve (IP or IP:PORT, repeatable);
    /// default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_parser = dns::parse_upstream)]
    pub dns_upstreams: Vec<SocketAddr>,
}

impl NodeNetArgs {
    pub fn network(&self) -> Option<String> {
        (!self.no_network && !self.network.is_empty()).then(|| self.network.clone())
    }

    pub fn upstreams(&self) -> Option<Vec<SocketAddr>> {
        (!self.dns_upstreams.is_empty()).then(|| self.dns_upstreams.clone())
    }
}
