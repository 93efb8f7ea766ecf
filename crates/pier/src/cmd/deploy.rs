//! `pier deploy FILE`: sends the service file, then follows the deployment live (each
//! instance: pulling, starting, healthy; counts; the reason when one fails). Exit 0 only
//! when the deployment succeeded; 1 when it failed, rolled back or was superseded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use pier_api::service::{
    DeployRequest, DeployResponse, DeploymentRecord, DeploymentStatus, TaskView,
};

use crate::client::{decode, Client};

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The service file (TOML).
    pub file: PathBuf,
    /// Return as soon as the deployment is accepted.
    #[arg(long)]
    pub detach: bool,
    /// Give up waiting after this long (the deployment goes on).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(client: &Client, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let started = Instant::now();
    let resp: DeployResponse = client
        .post_json(
            "/api/v1/services",
            &DeployRequest {
                env_file: read_env_file(&args.file, &text)?,
                file: text,
            },
        )
        .await
        .with_context(|| format!("{} was not deployed", args.file.display()))?;
    println!(
        "service {}: {} (revision {})",
        resp.service, resp.outcome, resp.revision
    );
    let Some(id) = resp.deployment.clone() else {
        return Ok(ExitCode::SUCCESS);
    };
    if args.detach {
        println!("deployment {id}");
        return Ok(ExitCode::SUCCESS);
    }
    follow(client, &resp.service, &id, started, args.timeout).await
}

/// The variables of the service file's `env_file` (relative to the service file), if it names
/// one; a bad line is refused here, naming the file and the line.
fn read_env_file(
    service_file: &std::path::Path,
    text: &str,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    let Some(name) = pier_api::service::env_file_of(text) else {
        return Ok(None);
    };
    let path = service_file
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .join(name.trim());
    let content = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the env_file {} of {}",
            path.display(),
            service_file.display()
        )
    })?;
    let vars = pier_api::service::parse_env_file(&content)
        .with_context(|| format!("env_file {}", path.display()))?;
    Ok(Some(vars))
}

/// Prints progress until the deployment ends; returns the exit code it deserves.
pub async fn follow(
    client: &Client,
    service: &str,
    id: &str,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let mut index: Option<u64> = None;
    let mut seen_events = 0usize;
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let mut last_counts = String::new();
    let mut id = id.to_string();
    loop {
        let path = match index {
            Some(i) => format!("/api/v1/deployments/{id}?index={i}&wait=1s"),
            None => format!("/api/v1/deployments/{id}"),
        };
        let resp = client.send(client.http().get(client.url(&path))).await?;
        let next_index = resp
            .headers()
            .get("x-pier-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let dep: DeploymentRecord = decode(resp).await?;
        index = next_index;
        for ev in dep.events.iter().skip(seen_events) {
            println!("  {}", ev.message);
        }
        seen_events = dep.events.len();
        if let Ok(tasks) = client
            .get::<Vec<TaskView>>(&format!("/api/v1/services/{service}/tasks"))
            .await
        {
            for t in tasks.iter().filter(|t| t.task.revision == dep.revision) {
                let line = match &t.status.message {
                    Some(m)
                        if matches!(
                            t.display_state.as_str(),
                            "failed" | "exited" | "unhealthy"
                        ) =>
                    {
                        format!("{} ({m})", t.display_state)
                    }
                    _ => t.display_state.clone(),
                };
                if states.get(&t.task.id) != Some(&line) {
                    println!("  {}  {:<10} {}", t.task.id, t.task.node, line);
                    states.insert(t.task.id.clone(), line);
                }
            }
        }
        let counts = format!(
            "  revision {}: {}/{} healthy, {} placed, {} failed (threshold {}), {} old still running",
            dep.revision, dep.healthy, dep.desired, dep.placed, dep.failed, dep.failure_threshold, dep.old_running
        );
        if counts != last_counts {
            println!("{counts}");
            last_counts = counts;
        }
        match dep.status {
            DeploymentStatus::InProgress => {}
            DeploymentStatus::Succeeded => {
                println!(
                    "deployment {} succeeded in {:.1}s",
                    dep.id,
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            DeploymentStatus::RolledBack => {
                eprintln!(
                    "deployment {} failed and was rolled back{}: {}",
                    dep.id,
                    dep.rolled_back_by
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    dep.reason.as_deref().unwrap_or("no reason recorded")
                );
                return Ok(ExitCode::from(1));
            }
            DeploymentStatus::Failed | DeploymentStatus::Superseded => {
                eprintln!(
                    "deployment {} {}: {}",
                    dep.id,
                    dep.status.as_str().replace('_', " "),
                    dep.reason.as_deref().unwrap_or("no reason recorded")
                );
                return Ok(ExitCode::from(1));
            }
        }
        if started.elapsed() > timeout {
            eprintln!("gave up waiting after {timeout:?}; deployment {id} goes on (pier service inspect {service})");
            return Ok(ExitCode::from(2));
        }
        id = dep.id;
    }
}
