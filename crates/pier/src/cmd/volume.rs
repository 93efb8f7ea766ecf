//! `pier volume ls [--json] | rm NAME [--node N]`: the named volumes agents hold.

use std::process::ExitCode;

use pier_api::service::VolumeView;

use crate::client::{print_json, Client};

#[derive(clap::Args, Debug)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// Named volumes: name, node, services that mount it.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a named volume (its data is gone); refused while a service mounts it.
    Rm {
        name: String,
        /// Only on this node (default: every node holding it).
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(client: &Client, args: VolumeArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        VolumeCommand::Ls { json } => {
            let list: Vec<VolumeView> = client.get("/api/v1/volumes").await?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<32} {:<24} USED BY", "NAME", "NODE");
                for v in list {
                    println!(
                        "{:<32} {:<24} {}",
                        v.name,
                        v.node,
                        if v.used_by.is_empty() {
                            "-".to_string()
                        } else {
                            v.used_by.join(", ")
                        }
                    );
                }
            }
        }
        VolumeCommand::Rm { name, node } => {
            let path = match &node {
                Some(n) => format!("/api/v1/volumes/{name}?node={n}"),
                None => format!("/api/v1/volumes/{name}"),
            };
            let removed: Vec<VolumeView> = client.delete(&path).await?;
            for v in removed {
                println!("volume {} removed on {}", v.name, v.node);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
