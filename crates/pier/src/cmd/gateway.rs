//! `pier gateway`: the load balancer on its own, following a server's catalog.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::server::Shutdown;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// API address of a pier server whose catalog to follow (host:port or URL). In a secure
    /// cluster the gateway joins it with `--token` and talks to it over mTLS.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub server: String,
    /// This gateway's name in the cluster (its certificate names `gateway/NAME`; default: the
    /// host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the gateway keeps its certificate (a secure cluster).
    #[arg(long, default_value = "/var/lib/pier/gateway")]
    pub data_dir: std::path::PathBuf,
    /// This gateway's zone: backends in it get traffic first.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Round robin instead of power-of-two-choices on least outstanding requests.
    #[arg(long)]
    pub round_robin: bool,
    /// Also serve HTTPS on this port (same address as --listen), with the certificates stored
    /// in the cluster (`pier cert add`), keys included (read with the gateway's certificate).
    #[arg(long)]
    pub https_port: Option<u16>,
    #[command(flatten)]
    pub access_log: AccessLogArgs,
}

/// The access log options of every command that runs a gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct AccessLogArgs {
    /// Access log, one line per request: `-` for stderr, a file path (reopened on SIGHUP, for
    /// logrotate), or `off`.
    #[arg(long = "access-log", default_value = "-", value_name = "FILE|-|off")]
    pub access_log: String,
    /// Access log line format.
    #[arg(long, value_enum, default_value_t = AccessLogFormat::Combined)]
    pub access_log_format: AccessLogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// The NCSA combined format of Apache and nginx.
    Combined,
    /// One JSON object per line, with service, backend, duration and request id.
    Json,
}

impl AccessLogArgs {
    fn destination(&self) -> Option<pier_gateway::AccessDestination> {
        match self.access_log.as_str() {
            "off" => None,
            "-" | "" => Some(pier_gateway::AccessDestination::Stderr),
            path => Some(pier_gateway::AccessDestination::File(path.into())),
        }
    }
}

/// Starts the access log writer of `gateway` as `args` say, and reopens its file on every
/// SIGHUP for as long as the process runs.
pub fn start_access_log(
    gateway: &mut pier_gateway::Gateway,
    args: &AccessLogArgs,
) -> anyhow::Result<()> {
    let Some(dest) = args.destination() else {
        gateway.disable_access_log();
        return Ok(());
    };
    let format = match args.access_log_format {
        AccessLogFormat::Combined => pier_gateway::AccessFormat::Combined,
        AccessLogFormat::Json => pier_gateway::AccessFormat::Json,
    };
    let log = pier_gateway::AccessLog::start(dest, format, &gateway.metrics())?;
    gateway.set_access_log(log.clone());
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the access log");
            log.reopen();
        }
    });
    Ok(())
}

pub fn config(listen: SocketAddr, zone: &str, round_robin: bool) -> pier_gateway::GatewayConfig {
    let mut cfg = pier_gateway::GatewayConfig::new(listen, zone);
    if round_robin {
        cfg.balancing = pier_gateway::Balancing::RoundRobin;
    }
    cfg
}

/// `join_token`: the global `--token` (or PIER_JOIN_TOKEN): an agent or gateway join token,
/// needed once to join a secure cluster (the certificate is kept in `--data-dir` then).
pub async fn run(args: GatewayArgs, join_token: Option<String>) -> anyhow::Result<ExitCode> {
    let join_token = join_token
        .or_else(|| std::env::var("PIER_JOIN_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if let Some(t) = &join_token {
        if pier_security::token::JoinToken::parse(t).is_err() {
            anyhow::bail!("pier gateway --token takes a join token (PIER1.…): the cluster's agent join token or one from `pier token create --role gateway`; gateways do not use API tokens");
        }
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(crate::cmd::server::default_node_name);
    let material = crate::security::node::prepare(
        &args.data_dir,
        pier_security::ca::Role::Gateway,
        &name,
        &args.server,
        join_token.as_deref(),
        &[],
    )
    .await?;
    let connect = |b: reqwest::ClientBuilder| b.connect_timeout(std::time::Duration::from_secs(3));
    let http = match &material {
        Some(m) => pier_net::HttpClient::new(connect, Some(m.client_config()?))?,
        None => pier_net::HttpClient::new(connect, None)?,
    };
    if material.is_some() && args.server.trim().starts_with("http://") {
        anyhow::bail!(
            "--server {} is plain HTTP, but this gateway belongs to a secure cluster (its certificate is in {}): use https://",
            args.server,
            args.data_dir.display()
        );
    }
    let server = crate::cmd::agent::first_server_url(&args.server, http.scheme());
    if let Some(m) = material {
        tokio::spawn(crate::security::node::renew_loop(
            m,
            args.data_dir.clone(),
            args.server.clone(),
            Vec::new(),
            http.clone(),
            None,
        ));
    }
    serve(args, server, http).await
}

/// Runs the gateway, following `server`'s catalog and certificates through `http`.
async fn serve(
    args: GatewayArgs,
    server: String,
    http: pier_net::HttpClient,
) -> anyhow::Result<ExitCode> {
    let (tx, routes) = crate::gateway_feed::channel();
    crate::gateway_feed::spawn(server.clone(), tx, http.clone())?;
    let mut gateway =
        pier_gateway::Gateway::new(config(args.listen, &args.zone, args.round_robin), routes)
            .with_context(|| format!("cannot start the gateway on {}", args.listen))?;
    start_access_log(&mut gateway, &args.access_log)?;
    if let Some(port) = args.https_port {
        let listen = SocketAddr::new(args.listen.ip(), port);
        let resolver = pier_gateway::CertResolver::new(None);
        let bound = gateway
            .enable_https(listen, std::sync::Arc::clone(&resolver))
            .with_context(|| format!("cannot serve HTTPS on {listen}"))?;
        tracing::info!(listen = %bound, "gateway HTTPS listening");
        tokio::spawn(crate::certs::follow_remote(
            http.clone(),
            server.clone(),
            resolver,
        ));
    }
    tracing::info!(listen = %gateway.local_addr(), server = %server, zone = %args.zone, "gateway started");
    let shutdown = Shutdown::on_signals();
    gateway
        .serve(shutdown.wait())
        .await
        .context("gateway failed")?;
    Ok(ExitCode::SUCCESS)
}
