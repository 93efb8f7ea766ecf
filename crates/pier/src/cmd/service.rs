//! `pier service ls|ps|inspect|scale|rollback|rm`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pier_api::service::{
    format_duration_ms, DeployResponse, RollbackRequest, ScaleRequest, ServiceDetail,
    ServiceSummary, TaskView,
};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// List services with desired, running and healthy counts.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// A service's tasks: node, zone, state, health, ports, restarts.
    Ps {
        name: String,
        #[arg(long)]
        json: bool,
        /// Also show stopped tasks.
        #[arg(long, short)]
        all: bool,
    },
    /// The service, its current spec and its latest deployment.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change the desired count.
    Scale { name: String, count: i64 },
    /// Roll back to the previous (or a given) revision and follow it.
    Rollback {
        name: String,
        #[arg(long)]
        revision: Option<u64>,
        #[arg(long)]
        detach: bool,
    },
    /// Stop every task and delete the service.
    Rm { name: String },
}

pub async fn run(client: &Client, args: ServiceArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ServiceCommand::Ls { json } => {
            let list: Vec<ServiceSummary> = client.get("/api/v1/services").await?;
            if json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<20} {:<40} {:>4} {:>9} {:>8} {:<12} ROUTE",
                    "NAME", "IMAGE", "REV", "HEALTHY", "DESIRED", "DEPLOYMENT"
                );
                for s in list {
                    let status = s.deployment_status.map(|d| d.as_str()).unwrap_or("-");
                    println!(
                        "{:<20} {:<40} {:>4} {:>9} {:>8} {:<12} {}{}",
                        s.name,
                        s.image,
                        s.revision,
                        format!("{}/{}", s.healthy, s.running),
                        s.desired,
                        status,
                        s.route,
                        s.placement_error
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        ServiceCommand::Ps { name, json, all } => {
            let tasks: Vec<TaskView> = client
                .get(&format!("/api/v1/services/{name}/tasks"))
                .await?;
            let tasks: Vec<TaskView> = tasks
                .into_iter()
                .filter(|t| all || t.display_state != "stopped" || t.task.stop_reason.is_none())
                .collect();
            if json {
                print_json(&tasks)?;
            } else {
                let detail: Option<ServiceDetail> =
                    client.get(&format!("/api/v1/services/{name}")).await.ok();
                if let Some(status) = detail
                    .as_ref()
                    .and_then(|d| d.service.restart_status.clone())
                {
                    println!("{status}");
                }
                println!(
                    "{:<26} {:>4} {:<12} {:<8} {:<10} {:<22} {:<10} DETAIL",
                    "TASK", "REV", "NODE", "ZONE", "STATE", "PORTS", "AGE"
                );
                let now = pier_api::time::now_ms();
                for t in tasks {
                    let ports: Vec<String> = t
                        .status
                        .host_ports
                        .iter()
                        .map(|(c, h)| {
                            format!("{}:{h}->{c}", t.status.host_ip.as_deref().unwrap_or(""))
                        })
                        .collect();
                    let detail = t
                        .task
                        .stop_reason
                        .clone()
                        .or_else(|| t.status.message.clone())
                        .or_else(|| t.status.exit_code.map(|c| format!("exit code {c}")))
                        .unwrap_or_default();
                    println!(
                        "{:<26} {:>4} {:<12} {:<8} {:<10} {:<22} {:<10} {}",
                        t.task.id,
                        t.task.revision,
                        t.task.node,
                        t.task.zone,
                        t.display_state,
                        ports.join(","),
                        format_duration_ms(now.saturating_sub(t.task.created_at_ms) / 1000 * 1000),
                        detail
                    );
                }
            }
        }
        ServiceCommand::Inspect { name, json } => {
            let detail: ServiceDetail = client.get(&format!("/api/v1/services/{name}")).await?;
            if json {
                print_json(&detail)?;
            } else {
                let s = &detail.service;
                println!("service    {}", s.name);
                println!("image      {}", detail.spec.image);
                println!(
                    "pinned     {}",
                    detail
                        .spec
                        .pinned_image
                        .as_deref()
                        .unwrap_or("(not pinned: agents run the image as named)")
                );
                println!("count      {}", s.count);
                println!(
                    "revision   {} (latest {}, stable {})",
                    s.revision,
                    s.latest_revision,
                    s.stable_revision
                        .map(|r| r.to_string())
                        .unwrap_or("-".into())
                );
                println!("route      {}", detail.spec.route);
                // Names and versions only: values never leave the cluster.
                for (var, secret) in &detail.spec.secrets {
                    println!(
                        "secret     {var} = {secret} (env, version {})",
                        secret_version(&detail.spec, secret)
                    );
                }
                for secret in &detail.spec.secret_files {
                    println!(
                        "secret     /run/secrets/{secret} (file, version {})",
                        secret_version(&detail.spec, secret)
                    );
                }
                for v in &detail.spec.volumes {
                    println!("volume     {}", volume_line(v));
                }
                println!("revisions  {:?}", detail.revisions);
                if let Some(e) = &s.placement_error {
                    println!("placement  {e}");
                }
                if let Some(r) = &s.restart_status {
                    println!("restarts   {r}");
                }
                if let Some(d) = &detail.deployment {
                    println!(
                        "deployment {} {} (revision {}, {}/{} healthy, {} failed){}",
                        d.id,
                        d.status.as_str(),
                        d.revision,
                        d.healthy,
                        d.desired,
                        d.failed,
                        d.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        ServiceCommand::Scale { name, count } => {
            let req = client
                .http()
                .put(client.url(&format!("/api/v1/services/{name}/scale")))
                .json(&ScaleRequest { count });
            let resp: DeployResponse = decode(client.send(req).await?).await?;
            println!("service {}: desired count {count}", resp.service);
        }
        ServiceCommand::Rollback {
            name,
            revision,
            detach,
        } => {
            let started = Instant::now();
            let resp: DeployResponse = client
                .post_json(
                    &format!("/api/v1/services/{name}/rollback"),
                    &RollbackRequest { revision },
                )
                .await?;
            println!(
                "service {}: rolling back to revision {}",
                resp.service, resp.revision
            );
            if let (Some(id), false) = (resp.deployment, detach) {
                return crate::cmd::deploy::follow(
                    client,
                    &name,
                    &id,
                    started,
                    Duration::from_secs(900),
                )
                .await;
            }
        }
        ServiceCommand::Rm { name } => {
            let _: DeployResponse = client.delete(&format!("/api/v1/services/{name}")).await?;
            println!("service {name}: removing (tasks are drained and stopped first)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn secret_version(spec: &pier_api::service::ServiceSpec, secret: &str) -> String {
    spec.secret_versions
        .get(secret)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

fn volume_line(v: &pier_api::service::VolumeSpec) -> String {
    use pier_api::service::VolumeSpec;
    let ro = |r: bool| if r { " (read-only)" } else { "" };
    match v {
        VolumeSpec::Named {
            name,
            target,
            read_only,
        } => format!("{target} <- named volume {name}{}", ro(*read_only)),
        VolumeSpec::Host {
            source,
            target,
            read_only,
        } => format!("{target} <- host path {source}{}", ro(*read_only)),
        VolumeSpec::Tmpfs { target, size_mb } => match size_mb {
            Some(mb) => format!("{target} <- tmpfs ({mb} MiB)"),
            None => format!("{target} <- tmpfs"),
        },
    }
}
