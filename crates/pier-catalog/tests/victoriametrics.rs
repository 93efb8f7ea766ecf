//! A real Prometheus-compatible scraper with `consul_sd_configs` pointed at the catalog:
//! VictoriaMetrics (Debian package `victoria-metrics`), whose `-promscrape.config` takes
//! Prometheus' scrape configuration and whose `/api/v1/targets` answers as Prometheus' does.
//! Debian's own `prometheus` is built without Consul service discovery (see `prometheus.rs`),
//! so this is the Consul-SD consumer that runs here: it discovers a service's instances, scrapes
//! them, and drops one shortly after it is deregistered — with its default blocking wait of
//! minutes, that can only come from the blocking query returning on the change.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Scraper, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoriametrics_consul_sd_discovers_scrapes_and_drops_targets() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(&dir.path().join("pier"), Options::default()).await;
    let c = reqwest::Client::new();
    let vm_port = pier_testkit::net::free_port();
    // Two instances of `web`: VictoriaMetrics itself (it serves /metrics, so its scrape
    // succeeds) and one nothing listens on.
    let dead_port = pier_testkit::net::free_port();
    common::register_web(&c, &s, &[("web-1", vm_port), ("web-2", dead_port)]).await;

    let mut cmd = Command::new("victoria-metrics");
    let config = dir.path().join("scrape.yml");
    cmd.arg(format!("-promscrape.config={}", config.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
        .arg(format!(
            "-storageDataPath={}",
            dir.path().join("vmdata").display()
        ))
        // How often discovered targets are applied to the scraper (default 30 s).
        .arg("-promscrape.consulSDCheckInterval=1s")
        .arg("-loggerLevel=ERROR");
    let scraper =
        Scraper::start(&s, &config, "", cmd, "victoria-metrics", vm_port, "/health").await;
    let vm = &scraper.base;

    let live = format!("127.0.0.1:{vm_port}");
    let dead = format!("127.0.0.1:{dead_port}");
    let found = common::eventually(
        Duration::from_secs(30),
        "both instances discovered, the live one scraped",
        || async {
            let t = common::consul_sd_targets(&c, vm).await?;
            let live_up = t.iter().any(|(a, h)| *a == live && h == "up");
            (t.len() == 2 && live_up).then_some(t)
        },
    )
    .await;
    let addresses: Vec<&str> = found.iter().map(|(a, _)| a.as_str()).collect();
    let mut expected = vec![live.as_str(), dead.as_str()];
    expected.sort();
    assert_eq!(addresses, expected);

    let deregistered = Instant::now();
    common::deregister(&c, &s, "web-2").await;
    let left = common::eventually(
        Duration::from_secs(30),
        "VictoriaMetrics drops web-2",
        || async {
            let t = common::consul_sd_targets(&c, vm).await?;
            (t.len() == 1).then_some(t)
        },
    )
    .await;
    let took = deregistered.elapsed();
    assert_eq!(left[0].0, live);
    // Its blocking queries wait minutes by default; the scraper applies discovered changes
    // every second. Anything well under the wait means the blocked query returned on the change.
    assert!(
        took < Duration::from_secs(5),
        "dropped {took:?} after deregistration: the blocking query did not return on the change"
    );
    println!(
        "VictoriaMetrics dropped the target {} ms after deregistration",
        took.as_millis()
    );
}
