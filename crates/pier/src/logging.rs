//! Process-wide tracing setup. Servers log structured lines to stderr; CLI
//! commands stay quiet unless `RUST_LOG` asks otherwise.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat, is_server: bool) {
    let default = if is_server {
        "info,openraft=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only when a person reads a terminal, never in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless, so its error is ignored on purpose.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// In a server process every panic ends the process (after logging it with a backtrace).
///
/// A panic unwinds only the task it happened in; in a Raft server that can be a replication
/// or apply task, leaving a leader that no longer replicates to a follower while still
/// holding leadership, the worst outcome there is. A server that exits is noticed, restarted
/// by its supervisor, and replaced as leader within an election timeout.
pub fn abort_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(panic = %info, %backtrace, "panic in a server process: exiting");
        previous(info);
        std::process::abort();
    }));
}
