//! `pier snapshot save FILE` / `pier snapshot restore FILE`: back up and restore the whole
//! cluster state (see `crate::snapshot`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::api::snapshot::RestoreResponse;
use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotAction {
    /// Write a snapshot of the whole cluster state to FILE (a tar archive).
    Save {
        file: PathBuf,
        /// Print what was saved as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot back into the cluster (a fresh one, unless --force).
    Restore {
        file: PathBuf,
        /// Replace what the snapshot covers in a cluster that is already in use.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(client: &Client, args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        SnapshotAction::Save { file, json } => save(client, file, json).await,
        SnapshotAction::Restore { file, force, json } => restore(client, file, force, json).await,
    }
}

async fn save(client: &Client, file: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    eprintln!("taking a snapshot from {} ...", client.url(""));
    let resp = client
        .send(client.http().get(client.url("/api/v1/snapshot")))
        .await?;
    if !resp.status().is_success() {
        decode::<serde_json::Value>(resp).await?;
        anyhow::bail!("the server refused the snapshot");
    }
    let bytes = resp.bytes().await.context("reading the snapshot")?;
    let parsed = crate::snapshot::parse(&bytes).context("the server sent a damaged snapshot")?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file
        .file_name()
        .context("FILE must name a file")?
        .to_string_lossy()
        .into_owned();
    crate::snapshot::write_atomically(&dir, &name, &bytes)?;
    if json {
        print_json(&parsed.meta)?;
    } else {
        println!(
            "saved {} keys at raft index {} ({} bytes) to {}",
            parsed.meta.keys,
            parsed.meta.index,
            bytes.len(),
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(
    client: &Client,
    file: PathBuf,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = crate::snapshot::parse(&bytes)
        .with_context(|| format!("{} is not a usable pier snapshot", file.display()))?;
    eprintln!(
        "restoring {} keys (raft index {} of {}) ...",
        parsed.meta.keys, parsed.meta.index, parsed.meta.server
    );
    let path = format!(
        "/api/v1/snapshot/restore{}",
        if force { "?force=true" } else { "" }
    );
    let resp = client
        .send(client.http().post(client.url(&path)).body(bytes))
        .await?;
    let done: RestoreResponse = decode(resp).await?;
    if json {
        print_json(&done)?;
    } else {
        println!("restored {} keys", done.keys);
    }
    Ok(ExitCode::SUCCESS)
}
