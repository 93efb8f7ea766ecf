//! `pier node ls|drain NODE|rm NODE`.

use std::process::ExitCode;

use pier_api::service::{DrainRequest, NodeRecord, NodeView};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Nodes with zone, state, capacity and allocation.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Take no new tasks and move the node's tasks elsewhere (`--undo` to reverse).
    Drain {
        node: String,
        #[arg(long)]
        undo: bool,
    },
    /// Forget a node for good (its machine is gone): its tasks are replaced elsewhere. Refused
    /// while its agent heartbeats, unless --force.
    Rm {
        node: String,
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(client: &Client, args: NodeArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        NodeCommand::Ls { json } => {
            let nodes: Vec<NodeView> = client.get("/api/v1/nodes").await?;
            if json {
                print_json(&nodes)?;
            } else {
                println!(
                    "{:<16} {:<8} {:<9} {:>5} {:>17} {:>19} {:<22} HEARTBEAT",
                    "NODE", "ZONE", "STATE", "TASKS", "CPU (millicpu)", "MEMORY (MiB)", "AGENT"
                );
                for n in nodes {
                    println!(
                        "{:<16} {:<8} {:<9} {:>5} {:>17} {:>19} {:<22} {}",
                        n.node.name,
                        n.node.zone,
                        n.state.as_str(),
                        n.tasks,
                        format!("{}/{}", n.allocated_cpu_millis, n.node.cpu_millis),
                        format!("{}/{}", n.allocated_memory_mb, n.node.memory_mb),
                        n.node.agent_addr,
                        n.last_heartbeat_age_ms
                            .map(|a| format!("{a} ms ago"))
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        NodeCommand::Drain { node, undo } => {
            let req = client
                .http()
                .put(client.url(&format!("/api/v1/nodes/{node}/drain")))
                .json(&DrainRequest { draining: !undo });
            let rec: NodeRecord = decode(client.send(req).await?).await?;
            if rec.draining {
                println!("node {node}: draining; its tasks move to other nodes");
            } else {
                println!("node {node}: accepting tasks again");
            }
        }
        NodeCommand::Rm { node, force } => {
            let path = if force {
                format!("/api/v1/nodes/{node}?force=true")
            } else {
                format!("/api/v1/nodes/{node}")
            };
            let req = client.http().delete(client.url(&path));
            let rec: NodeRecord = decode(client.send(req).await?).await?;
            println!(
                "node {} removed; its tasks are started on other nodes",
                rec.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
