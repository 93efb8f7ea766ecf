//! `pier server`: one member of a 3- or 5-server cluster.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use pier_api::status::MembersResponse;

use crate::client::{print_json, Client};
use crate::server::{self, ServerConfig};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    /// Directory holding this server's raft log, state and registry data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
    #[arg(long, default_value_t = DEFAULT_HTTP_PORT)]
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
    /// A certificate (PEM chain) for the registry listener, instead of the cluster-issued one,
    /// for clients that trust a CA of yours: served to clients that name a host it covers
    /// (agents and servers keep using the cluster certificate). Re-read when the file changes
    /// or on SIGHUP. Needs --registry-key and a secure cluster (not --insecure).
    #[arg(long, requires_all = ["registry_key", "registry_port"])]
    pub registry_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --registry-cert.
    #[arg(long, requires = "registry_cert")]
    pub registry_key: Option<std::path::PathBuf>,
    /// Copies of every registry blob the servers keep (at most one per server).
    #[arg(long, default_value_t = 2)]
    pub registry_replicas: usize,
    /// How often each server re-hashes the registry blobs it holds (a corrupt copy is
    /// deleted and fetched again from another server).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, hide = true)]
    pub registry_scrub_every: std::time::Duration,
    /// Unreferenced registry blobs younger than this are never collected (a layer whose
    /// manifest is still on its way).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, hide = true)]
    pub registry_gc_grace: std::time::Duration,
    /// Run a gateway in this process on this port (off unless given).
    #[arg(long)]
    pub gateway_port: Option<u16>,
    /// Zone of the in-process gateway (its backends there are preferred).
    #[arg(long, default_value = "")]
    pub gateway_zone: String,
    /// HTTPS port of the in-process gateway (needs --gateway-port), with certificates from the
    /// store (`pier cert add`); off unless given.
    #[arg(long, requires = "gateway_port")]
    pub gateway_https_port: Option<u16>,
    #[command(flatten)]
    pub access_log: crate::cmd::gateway::AccessLogArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
    /// Serve Consul-style DNS on this port, UDP and TCP (off unless given).
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// A node (agent) silent for longer is down: its instances turn critical in the catalog and
    /// its tasks are placed elsewhere (one failure detector for both).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub node_down_after: std::time::Duration,
    /// Revisions kept per service (rollback targets); older ones no task or deployment names
    /// are deleted, and so are finished deployments beyond as many.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub keep_revisions: usize,
    #[command(flatten)]
    pub backups: BackupArgs,
    /// Lifetime of the node certificates this server issues (renewed after two thirds).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration, hide = true)]
    pub cert_lifetime: std::time::Duration,
    /// Turn security off: plain HTTP, no certificates, no API tokens. Only for a loopback
    /// test setup; warned about at every start on any other address.
    #[arg(long)]
    pub insecure: bool,
    /// A network (CIDR, repeatable) that HTTP and TCP checks registered through this server's
    /// Consul agent API may reach. Without it: the private ranges 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16 and fc00::/7 (never loopback, link-local or public addresses).
    #[arg(long = "check-allow", value_name = "CIDR")]
    pub check_allow: Vec<pier_catalog::Cidr>,
    /// Build a raft snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub raft_snapshot_every: u64,
}

/// Scheduled backups of the cluster state into the data directory.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Write a snapshot (`pier snapshot save` format) into DATA_DIR/snapshots this often
    /// (0 turns it off).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub snapshot_every: std::time::Duration,
    /// How many scheduled snapshots to keep.
    #[arg(long, default_value_t = 24)]
    pub snapshot_keep: usize,
}

/// Cluster membership, asked of the server at `--addr` / `PIER_ADDR`.
#[derive(clap::Subcommand, Debug)]
pub enum ServerAction {
    /// List the servers of the raft configuration (voters and learners).
    Members {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a server from the cluster (e.g. a machine that is gone for good, or before a
    /// rebuilt server with the same name rejoins).
    Remove {
        /// The server's node name, as `pier server members` shows it.
        name: String,
        /// Remove even if the servers left would have no reachable quorum (writes stop until
        /// enough of them are back).
        #[arg(long)]
        force: bool,
    },
}

/// `join_token`: the global `--token` (or PIER_JOIN_TOKEN): the server join token of the
/// cluster to join (printed by its first server, or made with `pier token create --role
/// server`), or a bootstrap secret made with `pier token generate` and given to every server
/// started with --bootstrap-expect.
pub async fn run(
    client: &Client,
    args: ServerArgs,
    join_token: Option<String>,
) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(ServerAction::Members { json }) => members(client, json).await,
        Some(ServerAction::Remove { ref name, force }) => {
            let path = format!(
                "/api/v1/members/{name}{}",
                if force { "?force=true" } else { "" }
            );
            let after: MembersResponse = client.delete(&path).await?;
            println!("removed {name}; the cluster now has:");
            print_members(&after);
            Ok(ExitCode::SUCCESS)
        }
        None => run_server(args, join_token).await,
    }
}

async fn members(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let resp: MembersResponse = client.get("/api/v1/members").await?;
    if json {
        print_json(&resp)?;
    } else {
        print_members(&resp);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_members(resp: &MembersResponse) {
    println!(
        "{:<16} {:<8} {:<8} {:<22} HTTP",
        "NAME", "ROLE", "LEADER", "RAFT"
    );
    for m in &resp.members {
        println!(
            "{:<16} {:<8} {:<8} {:<22} {}",
            m.name,
            if m.voter { "voter" } else { "learner" },
            if resp.leader == Some(m.id) { "*" } else { "" },
            m.raft_addr,
            m.http_addr
        );
    }
}

async fn run_server(args: ServerArgs, join_token: Option<String>) -> anyhow::Result<ExitCode> {
    let Some(data_dir) = args.data_dir else {
        anyhow::bail!(
            "pier server needs --data-dir DIR (where its raft log, state and registry data live)"
        );
    };
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
    let registry_cert = match (args.registry_cert, args.registry_key) {
        // Without a cluster, servers and agents reach the registry over plain HTTP: a TLS-only
        // listener would cut them off.
        (Some(_), Some(_)) if args.insecure => anyhow::bail!(
            "--registry-cert needs a secure cluster (agents reach an --insecure cluster's registry over plain HTTP)"
        ),
        (Some(cert), Some(key)) => {
            let files = crate::registry_tls::OperatorCertFiles { cert, key };
            // Checked before anything starts, so a bad pair stops `pier server` at once.
            crate::registry_tls::check(&files)?;
            Some(files)
        }
        _ => None,
    };
    server::run(ServerConfig {
        registry_cert,
        node_name,
        data_dir,
        http_listen: SocketAddr::new(args.bind, args.http_port),
        raft_listen: SocketAddr::new(args.bind, args.raft_port),
        advertise: args.advertise,
        bootstrap_expect: args.bootstrap_expect,
        join: args.join,
        snapshot_every_logs: args.raft_snapshot_every,
        backup_every: args.backups.snapshot_every,
        backup_keep: args.backups.snapshot_keep,
        registry_listen: args.registry_port.map(|p| SocketAddr::new(args.bind, p)),
        registry_cluster: Some(server::RegistryCluster {
            replicas: args.registry_replicas.max(1),
            scrub_every: args.registry_scrub_every,
            gc_grace: args.registry_gc_grace,
        }),
        gateway: args.gateway_port.map(|p| crate::server::GatewayWiring {
            listen: SocketAddr::new(args.bind, p),
            zone: args.gateway_zone.clone(),
            access_log: args.access_log.clone(),
            https_listen: args
                .gateway_https_port
                .map(|p| SocketAddr::new(args.bind, p)),
            local_ca: None,
        }),
        dns_listen: args.dns_port.map(|p| SocketAddr::new(args.bind, p)),
        acme: args.acme.config(),
        check_allow: if args.check_allow.is_empty() {
            pier_catalog::CheckAllow::private_networks()
        } else {
            pier_catalog::CheckAllow::new(args.check_allow.clone())
        },
        security: if args.insecure {
            server::SecurityMode::Insecure
        } else {
            server::SecurityMode::Secure {
                token: join_token.or_else(|| std::env::var("PIER_JOIN_TOKEN").ok()),
                cert_lifetime: args.cert_lifetime,
            }
        },
        orchestrator: pier_orchestrator::OrchestratorConfig {
            keep_revisions: args.keep_revisions,
            ..Default::default()
        },
        node_down_after_ms: u64::try_from(args.node_down_after.as_millis()).unwrap_or(u64::MAX),
        agent: None,
        dns_upstreams: None,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Port of a server's HTTP API unless `--http-port` says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8500;

pub fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pier-1".to_string())
}

/// Certificates for `tls = "acme"` routes, ordered by the raft leader for the whole cluster.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AcmeArgs {
    /// ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory); routes with
    /// `tls = "acme"` get no certificate without it.
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// Contact e-mail of the cluster's ACME account.
    #[arg(long, requires = "acme_directory")]
    pub acme_email: Option<String>,
    /// PEM root certificate to trust for the directory's HTTPS (a test CA such as pebble's).
    #[arg(long, requires = "acme_directory")]
    pub acme_ca_cert: Option<std::path::PathBuf>,
    /// The ACME challenge the gateways answer: http-01 on the gateway port (80), or
    /// tls-alpn-01 on the gateway HTTPS port (443). When the CA does not offer it for a host,
    /// the other one is used.
    #[arg(
        long,
        value_enum,
        default_value = "http-01",
        requires = "acme_directory"
    )]
    pub acme_challenge: crate::acme::ChallengeKind,
}

impl AcmeArgs {
    pub fn config(&self) -> Option<crate::acme::AcmeConfig> {
        self.acme_directory
            .as_ref()
            .map(|directory| crate::acme::AcmeConfig {
                email: self.acme_email.clone(),
                directory: directory.clone(),
                ca_cert: self.acme_ca_cert.clone(),
                challenge: self.acme_challenge,
            })
    }
}
