//! `pier registry`: the OCI registry on its own, and registry maintenance.
//!
//! - `pier registry [--data-dir D] [--listen ADDR]` serves the registry until
//!   SIGINT/SIGTERM. No subcommand means "serve"; `pier registry serve ...`
//!   is the same thing spelled out.
//! - `pier registry gc [--dry-run] [--registry URL] [--json]` asks a running
//!   registry (default http://127.0.0.1:5000) to collect garbage now and
//!   prints its report. GC runs online: pushes and pulls continue meanwhile.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use pier_registry::{GcReport, RegistryConfig};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: Option<RegistryCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum RegistryCommand {
    /// Serve the registry (what `pier registry` does without a subcommand).
    Serve(ServeArgs),
    /// Run garbage collection on a running registry and print the report.
    Gc(GcArgs),
    /// Repositories anyone may pull without logging in (a secure cluster's registry).
    Public {
        #[command(subcommand)]
        action: PublicAction,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PublicAction {
    /// Let anyone pull repositories matching PATTERN (a name, or a prefix ending in `*`,
    /// e.g. `pub/*`). Pushes still need a token.
    Add {
        pattern: String,
        #[arg(long)]
        json: bool,
    },
    /// Make PATTERN need credentials again (exactly as it was added).
    Rm { pattern: String },
    /// The public patterns.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where blobs, uploads and the index live
    /// (default: $XDG_DATA_HOME/pier/registry or ~/.local/share/pier/registry).
    #[arg(long, env = "PIER_REGISTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on. Docker treats 127.0.0.0/8 as a plain-HTTP registry.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// Unreferenced blobs younger than this are never collected.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: Duration,
    /// How often GC runs in the background; "off" disables it.
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    pub gc_interval: Interval,
    /// Upload sessions idle for this long are deleted by GC.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub upload_expiry: Duration,
    /// Manifests above this many bytes are refused with 413.
    #[arg(long, default_value_t = pier_registry::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Interval(Option<Duration>);

fn parse_interval(s: &str) -> Result<Interval, String> {
    match s {
        "off" | "never" | "0" => Ok(Interval(None)),
        _ => humantime::parse_duration(s)
            .map(|d| Interval(Some(d)))
            .map_err(|e| e.to_string()),
    }
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Report what would be deleted without deleting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Base URL of the running registry.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub registry: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RegistryArgs {
    pub fn is_server(&self) -> bool {
        !matches!(
            self.command,
            Some(RegistryCommand::Gc(_) | RegistryCommand::Public { .. })
        )
    }
}

pub async fn run(client: &crate::client::Client, args: RegistryArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => serve(args.serve).await,
        Some(RegistryCommand::Serve(serve_args)) => serve(serve_args).await,
        Some(RegistryCommand::Gc(gc_args)) => gc(gc_args).await,
        Some(RegistryCommand::Public { action }) => public(client, action).await,
    }
}

async fn public(client: &crate::client::Client, action: PublicAction) -> anyhow::Result<ExitCode> {
    use crate::client::{decode, print_json};
    use crate::security::registry_auth::PublicPrefix;
    match action {
        PublicAction::Add { pattern, json } => {
            let path = format!("/api/v1/registry/public/{pattern}");
            let resp = client.send(client.http().put(client.url(&path))).await?;
            let added: PublicPrefix = decode(resp).await?;
            if json {
                print_json(&added)?;
            } else {
                println!("{} is public: anyone may pull it", added.pattern);
            }
        }
        PublicAction::Rm { pattern } => {
            let path = format!("/api/v1/registry/public/{pattern}");
            let resp = client.send(client.http().delete(client.url(&path))).await?;
            if !resp.status().is_success() {
                decode::<serde_json::Value>(resp).await?;
            }
            println!("{pattern} needs credentials again");
        }
        PublicAction::Ls { json } => {
            let list: Vec<PublicPrefix> = client.get("/api/v1/registry/public").await?;
            if json {
                print_json(&list)?;
            } else {
                println!("PATTERN");
                for p in &list {
                    println!("{}", p.pattern);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("pier/registry");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/pier/registry"),
        None => PathBuf::from(".pier-registry"),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let cfg = RegistryConfig {
        data_dir: data_dir.clone(),
        max_manifest_bytes: args.max_manifest_bytes,
        gc_grace: args.gc_grace,
        gc_interval: args.gc_interval.0,
        upload_expiry: args.upload_expiry,
    };
    pier_registry::serve(cfg, args.listen, shutdown_signal())
        .await
        .with_context(|| {
            format!(
                "registry on {} with data in {}",
                args.listen,
                data_dir.display()
            )
        })?;
    tracing::info!("registry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stopping only on Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let base = args.registry.trim_end_matches('/');
    let url = format!("{base}/_pier/gc?dry_run={}", args.dry_run);
    let resp = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the registry at {base}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {body}");
    }
    let report: GcReport = serde_json::from_str(&body)
        .with_context(|| format!("{url} answered something that is no GC report: {body}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn human(r: &GcReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    format!(
        "garbage collection{} in {} ms\n  manifests (roots): {}\n  blobs: {} total, {} referenced, {} unreferenced but inside the grace window\n  {verb}: {} blobs ({}), {} orphan files, {} abandoned uploads\n",
        if r.dry_run { " (dry run)" } else { "" },
        r.duration_ms,
        r.manifests,
        r.blobs_total,
        r.blobs_marked,
        r.blobs_in_grace,
        r.blobs_deleted,
        bytes(r.bytes_deleted),
        r.orphan_files_deleted,
        r.uploads_deleted,
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
