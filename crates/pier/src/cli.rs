//! Command-line surface. Each subcommand's arguments live next to its
//! implementation in `cmd/`; this file only assembles them.

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::logging::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "pier",
    version,
    about = "A self-hosted container platform in one binary"
)]
pub struct Cli {
    /// Address of a pier server's HTTP API, for client commands.
    #[arg(
        long,
        global = true,
        env = "PIER_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub addr: String,
    /// API token for client commands (also PIER_TOKEN); for `pier server` and `pier agent`,
    /// the join token (also PIER_JOIN_TOKEN).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// CA certificate to trust for an https PIER_ADDR (also PIER_CACERT): a secure cluster's
    /// DATA_DIR/tls/ca.crt.
    #[arg(long, global = true, env = "PIER_CACERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Log line format for server modes.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run everything in one process on this machine (127.0.0.1 only).
    Dev(cmd::dev::DevArgs),
    /// Run a server: a member of the replicated store plus the HTTP API.
    Server(cmd::server::ServerArgs),
    /// The OCI registry on its own, or registry maintenance.
    Registry(cmd::registry::RegistryArgs),
    /// Show the cluster's status: leader, peers, raft index.
    Status(cmd::status::StatusArgs),
    /// Read and write the key/value store.
    Kv(cmd::kv::KvArgs),
    /// Run a node agent: registers this machine and runs its tasks on Docker.
    Agent(cmd::agent::AgentArgs),
    /// Deploy a service file and follow the rollout.
    Deploy(cmd::deploy::DeployArgs),
    /// Inspect and manage services.
    Service(cmd::service::ServiceArgs),
    /// Inspect and drain nodes.
    Node(cmd::node::NodeArgs),
    /// TLS certificates the gateways serve.
    Cert(cmd::cert::CertArgs),
    /// Secrets services use as environment variables or files (values never shown).
    Secret(cmd::secret::SecretArgs),
    /// Named volumes the agents hold.
    Volume(cmd::volume::VolumeArgs),
    /// Show a service's container output.
    Logs(cmd::logs::LogsArgs),
    /// Build and deploy from a git repository on every new commit.
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Run the load balancer on its own, following a server's catalog.
    Gateway(cmd::gateway::GatewayArgs),
    /// Back up or restore the whole cluster state.
    Snapshot(cmd::snapshot::SnapshotArgs),
    /// API tokens and their policies.
    Acl(cmd::security::AclArgs),
    /// Join tokens for servers and agents.
    Token(cmd::security::TokenArgs),
    /// The cluster CA: rotate it, see where a rotation stands.
    Ca(cmd::security::CaArgs),
    /// Who changed what, when: the cluster's audit log.
    Audit(cmd::security::AuditArgs),
}

impl Command {
    pub fn is_server(&self) -> bool {
        match self {
            Command::Dev(_) | Command::Agent(_) | Command::Gateway(_) => true,
            Command::Server(args) => args.action.is_none(),
            Command::Deploy(_)
            | Command::Service(_)
            | Command::Node(_)
            | Command::Cert(_)
            | Command::Secret(_)
            | Command::Volume(_)
            | Command::Logs(_)
            | Command::Pipeline(_)
            | Command::Snapshot(_)
            | Command::Acl(_)
            | Command::Token(_)
            | Command::Ca(_)
            | Command::Audit(_) => false,
            Command::Registry(args) => args.is_server(),
            Command::Status(_) | Command::Kv(_) => false,
        }
    }
}
