//! `pier pipeline create|ls|runs|logs|run|rm`: git commit → image → deployment.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use futures::StreamExt;
use pier_api::pipeline::{PipelineCreate, PipelineInfo, RunCreate, RunInfo, RunStatus};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    #[command(subcommand)]
    pub command: PipelineCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PipelineCommand {
    /// Create a pipeline for a git repository holding a Dockerfile and a service file; the
    /// branch head is built and deployed at once.
    Create {
        name: String,
        /// A local path, a file:// URL or an http(s):// URL.
        #[arg(long)]
        repo: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Service file in the repository (`pier deploy` format, `image` filled in).
        #[arg(long, default_value = "pier.toml")]
        file: String,
        #[arg(long, default_value = "Dockerfile")]
        dockerfile: String,
        /// Poll interval (`10s`, `1m`), or `off` for webhook only.
        #[arg(long, default_value = "10s")]
        poll: String,
        /// Secret for the push webhook's X-Hub-Signature-256; without it the webhook is off.
        #[arg(long, env = "PIER_WEBHOOK_SECRET")]
        webhook_secret: Option<String>,
        /// Build argument KEY=VALUE (repeatable).
        #[arg(long = "build-arg", value_parser = parse_build_arg)]
        build_args: Vec<(String, String)>,
        /// Runs to keep.
        #[arg(long)]
        keep: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List pipelines with their latest run.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// A pipeline's runs, newest first.
    Runs {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A run's log: RUN is NAME/NUMBER, or NAME for the latest run.
    Logs {
        run: String,
        /// Follow until the run ends; exits non-zero unless it succeeded.
        #[arg(long, short)]
        follow: bool,
    },
    /// Start a run by hand (the branch head, or --commit).
    Run {
        name: String,
        #[arg(long)]
        commit: Option<String>,
        /// Follow the run's log until it ends; exits non-zero unless it succeeded.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a pipeline with its runs and logs (deployed services stay).
    Rm { name: String },
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Local paths are sent absolute: the server resolves nothing relative to the CLI's directory.
fn absolute_repo(repo: &str) -> anyhow::Result<String> {
    if repo.contains("://") || std::path::Path::new(repo).is_absolute() {
        return Ok(repo.to_string());
    }
    let path = std::path::Path::new(repo);
    let abs = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => std::env::current_dir()
            .context("reading the current directory")?
            .join(path),
    };
    Ok(abs.display().to_string())
}

fn age(ms: u64) -> String {
    let now = pier_api::time::now_ms();
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn duration(run: &RunInfo) -> String {
    match (run.started_at_ms, run.finished_at_ms) {
        (Some(s), Some(f)) => format!("{:.1}s", f.saturating_sub(s) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

fn print_run_line(r: &RunInfo) {
    println!(
        "{:<6} {:<12} {:<13} {:<8} {:<10} {:<9} {}",
        r.number,
        r.status.name(),
        r.short_sha(),
        format!("{:?}", r.trigger).to_lowercase(),
        age(r.queued_at_ms),
        duration(r),
        r.commit_message.as_deref().unwrap_or("")
    );
    match &r.status {
        RunStatus::Failed { .. }
        | RunStatus::RolledBack { .. }
        | RunStatus::Interrupted { .. }
        | RunStatus::Skipped { .. } => {
            println!("       └ {}", r.status)
        }
        _ => {}
    }
}

/// `NAME/NUMBER` or `NAME` (latest run).
async fn resolve_run(client: &Client, spec: &str) -> anyhow::Result<(String, u64)> {
    if let Some((name, number)) = spec.split_once('/') {
        let n: u64 = number
            .parse()
            .with_context(|| format!("run {spec:?}: expected NAME/NUMBER, like hello/3"))?;
        return Ok((name.to_string(), n));
    }
    let runs: Vec<RunInfo> = client
        .get(&format!("/api/v1/pipelines/{spec}/runs"))
        .await?;
    match runs.last() {
        Some(r) => Ok((spec.to_string(), r.number)),
        None => bail!("pipeline {spec} has no runs yet"),
    }
}

/// Prints a run's log (following it when asked); returns the run as it ended.
async fn show_log(
    client: &Client,
    name: &str,
    number: u64,
    follow: bool,
) -> anyhow::Result<RunInfo> {
    let path = format!(
        "/api/v1/pipelines/{name}/runs/{number}/logs{}",
        if follow { "?follow=true" } else { "" }
    );
    let resp = client.send(client.http().get(client.url(&path))).await?;
    if !resp.status().is_success() {
        decode::<serde_json::Value>(resp).await?;
        bail!("cannot read the log of {name}/{number}");
    }
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the log stream")?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    client
        .get(&format!("/api/v1/pipelines/{name}/runs/{number}"))
        .await
}

fn exit_for(run: &RunInfo) -> ExitCode {
    match run.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

pub async fn run(client: &Client, args: PipelineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PipelineCommand::Create {
            name,
            repo,
            branch,
            file,
            dockerfile,
            poll,
            webhook_secret,
            build_args,
            keep,
            json,
        } => {
            let req = PipelineCreate {
                name: name.clone(),
                repo: absolute_repo(&repo)?,
                branch: Some(branch),
                file: Some(file),
                dockerfile: Some(dockerfile),
                poll: Some(poll),
                webhook_secret,
                build_args: build_args.into_iter().collect::<BTreeMap<_, _>>(),
                keep_runs: keep,
            };
            let info: PipelineInfo = client.post_json("/api/v1/pipelines", &req).await?;
            if json {
                print_json(&info)?;
            } else {
                println!(
                    "pipeline {} created for {} ({})",
                    info.name, info.repo, info.branch
                );
                if let Some(r) = &info.last_run {
                    println!(
                        "run {} queued for commit {}: follow it with `pier pipeline logs {}/{} -f`",
                        r.number,
                        r.short_sha(),
                        info.name,
                        r.number
                    );
                }
                if info.webhook {
                    println!(
                        "push webhook: POST {} (X-Hub-Signature-256)",
                        client.url(&format!("/api/v1/pipelines/{}/hooks/push", info.name))
                    );
                }
            }
        }
        PipelineCommand::Ls { json } => {
            let list: Vec<PipelineInfo> = client.get("/api/v1/pipelines").await?;
            if json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:<8} {:<8} {:<12} {:<13} REPO",
                    "NAME", "BRANCH", "POLL", "LAST RUN", "COMMIT"
                );
                for p in list {
                    let poll = p
                        .poll_interval_ms
                        .map(|ms| format!("{}s", ms / 1000))
                        .unwrap_or_else(|| "off".into());
                    let (status, commit) = match &p.last_run {
                        Some(r) => (
                            format!("{} {}", r.number, r.status.name()),
                            r.short_sha().to_string(),
                        ),
                        None => ("-".into(), "-".into()),
                    };
                    println!(
                        "{:<20} {:<8} {:<8} {:<12} {:<13} {}",
                        p.name, p.branch, poll, status, commit, p.repo
                    );
                    if let Some(e) = &p.poll_error {
                        println!("  └ polling fails: {e}");
                    }
                }
            }
        }
        PipelineCommand::Runs { name, json } => {
            let mut runs: Vec<RunInfo> = client
                .get(&format!("/api/v1/pipelines/{name}/runs"))
                .await?;
            runs.reverse();
            if json {
                print_json(&runs)?;
            } else {
                println!(
                    "{:<6} {:<12} {:<13} {:<8} {:<10} {:<9} MESSAGE",
                    "RUN", "STATUS", "COMMIT", "TRIGGER", "QUEUED", "TOOK"
                );
                for r in &runs {
                    print_run_line(r);
                }
            }
        }
        PipelineCommand::Logs { run, follow } => {
            let (name, number) = resolve_run(client, &run).await?;
            let ended = show_log(client, &name, number, follow).await?;
            if follow {
                eprintln!("run {name}/{number}: {}", ended.status);
                return Ok(exit_for(&ended));
            }
        }
        PipelineCommand::Run {
            name,
            commit,
            follow,
            json,
        } => {
            let run: RunInfo = client
                .post_json(
                    &format!("/api/v1/pipelines/{name}/runs"),
                    &RunCreate { commit },
                )
                .await?;
            if follow {
                let ended = show_log(client, &name, run.number, true).await?;
                if json {
                    print_json(&ended)?;
                } else {
                    eprintln!("run {name}/{}: {}", run.number, ended.status);
                }
                return Ok(exit_for(&ended));
            }
            if json {
                print_json(&run)?;
            } else {
                println!(
                    "run {}/{} queued for commit {}",
                    name,
                    run.number,
                    run.short_sha()
                );
            }
        }
        PipelineCommand::Rm { name } => {
            let resp = client
                .send(
                    client
                        .http()
                        .delete(client.url(&format!("/api/v1/pipelines/{name}"))),
                )
                .await?;
            if !resp.status().is_success() {
                decode::<serde_json::Value>(resp).await?;
            }
            println!("pipeline {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
