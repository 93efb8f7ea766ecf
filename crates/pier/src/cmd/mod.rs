//! One module per subcommand.

pub mod agent;
pub mod cert;
pub mod deploy;
pub mod dev;
pub mod gateway;
pub mod kv;
pub mod logs;
pub mod node;
pub mod pipeline;
pub mod registry;
pub mod secret;
pub mod security;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod status;
pub mod volume;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let api_token = cli
        .token
        .clone()
        .or_else(|| std::env::var("PIER_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let client =
        crate::client::Client::with_auth(&cli.addr, api_token.clone(), cli.ca_cert.as_deref())?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Server(args) => server::run(&client, args, cli.token.clone()).await,
        Command::Registry(args) => registry::run(&client, args).await,
        Command::Status(args) => status::run(&client, args).await,
        Command::Kv(args) => kv::run(&client, args).await,
        Command::Gateway(args) => gateway::run(args, cli.token.clone()).await,
        Command::Agent(args) => agent::run(args, cli.token.clone()).await,
        Command::Deploy(args) => deploy::run(&client, args).await,
        Command::Service(args) => service::run(&client, args).await,
        Command::Node(args) => node::run(&client, args).await,
        Command::Cert(args) => cert::run(&client, args).await,
        Command::Secret(args) => secret::run(&client, args).await,
        Command::Volume(args) => volume::run(&client, args).await,
        Command::Logs(args) => logs::run(&client, args).await,
        Command::Pipeline(args) => pipeline::run(&client, args).await,
        Command::Snapshot(args) => snapshot::run(&client, args).await,
        Command::Acl(args) => security::acl(&client, args).await,
        Command::Token(args) => security::token(&client, args).await,
        Command::Ca(args) => security::ca(&client, args).await,
        Command::Audit(args) => security::audit(&client, args).await,
    }
}
