//! One module per subcommand.

pub mod agent;
pub mod deploy;
pub mod dev;
pub mod gateway;
pub mod kv;
pub mod logs;
pub mod node;
pub mod pipeline;
pub mod registry;
pub mod server;
pub mod service;
pub mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = crate::client::Client::new(&cli.addr)?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Server(args) => server::run(args).await,
        Command::Registry(args) => registry::run(args).await,
        Command::Status(args) => status::run(&client, args).await,
        Command::Kv(args) => kv::run(&client, args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Deploy(args) => deploy::run(&client, args).await,
        Command::Service(args) => service::run(&client, args).await,
        Command::Node(args) => node::run(&client, args).await,
        Command::Logs(args) => logs::run(&client, args).await,
        Command::Pipeline(args) => pipeline::run(&client, args).await,
    }
}
