//! The fleet simulator of `bench/scale`: N simulated agents speaking pier's agent protocol
//! against a running server, then the scenario of issue 16 (deploy all, roll all, silence a
//! tenth of the nodes), printing every figure.
//!
//! ```text
//! scale_sim --server http://127.0.0.1:8500 --nodes 500 --services 50 --tasks 100
//!           [--min-healthy-time 3s] [--silence-percent 10] [--heartbeat-ms 500]
//!           [--server-pid PID] [--timeout-s 600]
//! ```

use std::time::Duration;

use pier_testkit::sim::scenario::{run, Scenario};
use pier_testkit::sim::{Fleet, FleetConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut fleet = FleetConfig::new("http://127.0.0.1:8500", 500);
    let mut scenario = Scenario::new(50, 100);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--server" => fleet.server = value().trim_end_matches('/').to_string(),
            "--nodes" => fleet.nodes = number(&value()),
            "--heartbeat-ms" => fleet.heartbeat_interval_ms = number(&value()),
            "--services" => scenario.services = number(&value()),
            "--tasks" => scenario.tasks_per_service = number(&value()),
            "--min-healthy-time" => scenario.min_healthy_time = value(),
            "--silence-percent" => scenario.silence_percent = number(&value()),
            "--server-pid" => scenario.server_pid = Some(number(&value())),
            "--timeout-s" => scenario.phase_timeout = Duration::from_secs(number(&value())),
            other => panic!("unknown argument {other}"),
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let fleet_handle = Fleet::start(fleet.clone()).await;
        println!(
            "{} simulated nodes registered in {:.2} s; {} services x {} tasks",
            fleet.nodes,
            started.elapsed().as_secs_f64(),
            scenario.services,
            scenario.tasks_per_service
        );
        match run(&fleet_handle, &scenario).await {
            Ok(figures) => {
                print!("{figures}");
                let s = fleet_handle.stats();
                println!(
                    "agent side: {} reports ({} failed), {} heartbeat errors",
                    s.reports_sent, s.report_errors, s.heartbeat_errors
                );
                println!("heartbeat latency          {}", s.heartbeat);
                println!("status report latency      {}", s.report);
            }
            Err(e) => {
                eprintln!("scenario failed: {e}");
                std::process::exit(1);
            }
        }
    });
}

fn number<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| panic!("{s} is not a number"))
}
