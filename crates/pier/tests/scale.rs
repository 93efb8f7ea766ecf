//! The control plane at a small fleet size, in CI: a real `pier dev --no-agent` and 50
//! simulated agents speaking the agent protocol (`pier_testkit::sim`; the same simulator as
//! `bench/scale` at thousands of nodes). 10 services x 30 tasks are deployed at once, all
//! rolled to a new image, and a tenth of the nodes go silent. Each phase has a generous time
//! bound that a control plane whose cost grows with the square of the fleet would miss; no
//! live node may ever be marked down.

use std::time::Duration;

use pier_testkit::net::free_port;
use pier_testkit::process::PierProcess;
use pier_testkit::sim::scenario::{run, Scenario};
use pier_testkit::sim::{Fleet, FleetConfig};

const PIER: &str = env!("CARGO_BIN_EXE_pier");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_and_300_tasks_deploy_roll_and_fail_over_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let port = |p: u16| p.to_string();
    let args = [
        "dev".to_string(),
        "--no-agent".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--http-port".into(),
        port(http_port),
        "--raft-port".into(),
        port(free_port()),
        "--registry-port".into(),
        port(free_port()),
        "--gateway-port".into(),
        port(free_port()),
        "--https-port".into(),
        port(free_port()),
        "--dns-port".into(),
        port(free_port()),
        "--access-log".into(),
        "off".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dev = PierProcess::spawn(PIER, "dev", &args, dir.path());
    let server = format!("http://127.0.0.1:{http_port}");
    dev.wait_http_ok(&format!("{server}/api/v1/status"), Duration::from_secs(30))
        .await;

    let fleet = Fleet::start(FleetConfig::new(&server, 50)).await;
    let mut scenario = Scenario::new(10, 30);
    scenario.min_healthy_time = "0s".into();
    scenario.phase_timeout = Duration::from_secs(180);
    scenario.server_pid = Some(dev.pid());
    scenario.idle_window = Duration::from_secs(3);
    let figures = run(&fleet, &scenario)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- end of dev.log:\n{}", dev.log_tail(30)));
    eprintln!("{figures}");
    let stats = fleet.stats();
    eprintln!("heartbeats {}; reports {}", stats.heartbeat, stats.report);

    assert_eq!(
        figures.live_node_down_sightings, 0,
        "a node that kept heartbeating was marked down"
    );
    assert!(figures.healthy_s < 60.0, "first deploy: {figures}");
    assert!(figures.rolling_update_s < 90.0, "rolling update: {figures}");
    assert!(figures.failover_s < 30.0, "failover: {figures}");
    assert!(figures.services_api.p99_ms < 500, "{figures}");
    assert_eq!(stats.report_errors, 0, "status reports failed");
}
