//! `pier logs SERVICE [-f]`: every task's output, each line prefixed with its task id. The
//! server fetches it from the agents.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    pub service: String,
    /// Keep streaming new output.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N lines of each task.
    #[arg(long)]
    pub tail: Option<u32>,
}

pub async fn run(client: &Client, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/api/v1/services/{}/logs?follow={}",
        args.service, args.follow
    );
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    let resp = client.send(client.http().get(client.url(&path))).await?;
    if !resp.status().is_success() {
        return crate::client::decode::<serde_json::Value>(resp)
            .await
            .map(|_| ExitCode::from(1));
    }
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the log stream broke")?;
        out.write_all(&chunk).context("writing to stdout")?;
        out.flush().ok();
    }
    Ok(ExitCode::SUCCESS)
}
