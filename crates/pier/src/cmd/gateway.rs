//! `pier gateway`: the load balancer on its own, following a server's catalog.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::server::Shutdown;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// HTTP address of a pier server whose catalog to follow.
    #[arg(long, default_value = "http://127.0.0.1:8500")]
    pub server: String,
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
    /// in the cluster (`pier cert add`); reading them takes a management token
    /// (`--token`/PIER_TOKEN) in a secure cluster.
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

pub async fn run(args: GatewayArgs, token: Option<String>) -> anyhow::Result<ExitCode> {
    let server = if args.server.starts_with("http") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let (tx, routes) = crate::gateway_feed::channel();
    let auth = match &token {
        Some(t) => {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the token holds characters a header cannot carry")?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let http = pier_net::HttpClient::new(
        move |b| {
            let b = b.connect_timeout(std::time::Duration::from_secs(3));
            match &auth {
                Some(v) => b.default_headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::AUTHORIZATION,
                    v.clone(),
                )])),
                None => b,
            }
        },
        None,
    )?;
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
