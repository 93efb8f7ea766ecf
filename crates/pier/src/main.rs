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
mod registry_tls;
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
    } else {
        restore_default_sigpipe();
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

/// A CLI command whose output goes to a pipe that closed (`pier service ps | head -1`,
/// `| grep -q`) should end quietly, as `ls` and `cat` do, not panic in `println!`. Rust
/// ignores SIGPIPE at start-up; the CLI puts the default (terminate) back. Servers keep it
/// ignored: their sockets report a closed peer as an error instead (std and tokio send with
/// MSG_NOSIGNAL anyway).
fn restore_default_sigpipe() {
    // SAFETY: called once at start-up before any thread is spawned; `signal` with SIG_DFL
    // installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
