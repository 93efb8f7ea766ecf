//! The `pier` binary: one executable for every process mode (dev, server, agent,
//! registry, gateway) and for the CLI client.

mod acme;
mod api;
mod certs;
mod cli;
mod client;
mod cmd;
mod gateway_feed;
mod logging;
mod metrics;
mod node;
mod security;
mod server;
mod snapshot;
mod ui;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format, cli.command.is_server());
    if cli.command.is_server() {
        logging::abort_on_panic();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
