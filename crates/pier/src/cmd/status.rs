//! `pier status`: leader, members and raft indexes of the cluster.

use std::process::ExitCode;

use pier_api::status::StatusResponse;

use crate::client::{print_json, Client};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status: StatusResponse = client.get("/api/v1/status").await?;
    if args.json {
        print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let leader = status
        .leader
        .as_ref()
        .map(|m| format!("{} ({})", m.name, m.http_addr))
        .unwrap_or_else(|| "none (election in progress or no quorum)".to_string());
    println!(
        "node:          {} (id {})",
        status.node_name, status.node_id
    );
    println!("leader:        {leader}");
    println!("term:          {}", status.term);
    println!(
        "raft index:    applied {} / committed {} / last log {}",
        status.last_applied_index, status.commit_index, status.last_log_index
    );
    println!("members:");
    for m in &status.members {
        let mark = if status.leader.as_ref().map(|l| l.id) == Some(m.id) {
            "*"
        } else {
            " "
        };
        println!(
            "  {mark} {:<16} raft {:<22} http {}",
            m.name, m.raft_addr, m.http_addr
        );
    }
    Ok(ExitCode::SUCCESS)
}
