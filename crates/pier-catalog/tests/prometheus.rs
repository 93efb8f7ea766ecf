//! Prometheus (Debian `prometheus`) with `consul_sd_configs` pointed at the API discovers a
//! service's instances as scrape targets and drops one after it is deregistered, asserted
//! through Prometheus' own `/api/v1/targets`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, TestServer};
use serde_json::{json, Value};

/// Kills Prometheus when the test ends, also on failure.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn targets(c: &reqwest::Client, prom: &str) -> Option<Vec<String>> {
    let v: Value = c
        .get(format!("{prom}/api/v1/targets?state=active"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut out: Vec<String> = v["data"]["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == "pier-consul-sd")
        .map(|t| t["discoveredLabels"]["__address__"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_consul_sd_discovers_and_drops_targets() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(&dir.path().join("pier"), Options::default()).await;
    let c = reqwest::Client::new();
    for (id, port) in [("web-1", 19001), ("web-2", 19002)] {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(&json!({"ID": id, "Name": "web", "Address": "127.0.0.1", "Port": port, "Tags": ["metrics"],
                          "Check": {"TTL": "1h", "Status": "passing"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let prom_port = pier_testkit::net::free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pier-consul-sd\n    \
             consul_sd_configs:\n      - server: '127.0.0.1:{}'\n        refresh_interval: 1s\n        services: ['web']\n",
            s.http_addr.port()
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("prometheus is required (apt-get install prometheus)");
    let _guard = KillOnDrop(child);
    let prom = format!("http://127.0.0.1:{prom_port}");
    pier_testkit::process::wait_http_ok(&format!("{prom}/-/ready"), Duration::from_secs(30)).await;

    let found = common::eventually(Duration::from_secs(30), "Prometheus discovers both instances", || async {
        let t = targets(&c, &prom).await?;
        (t.len() == 2).then_some(t)
    })
    .await;
    assert_eq!(found, vec!["127.0.0.1:19001", "127.0.0.1:19002"]);

    let deregistered = Instant::now();
    let r = c.put(s.url("/v1/agent/service/deregister/web-2")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let left = common::eventually(Duration::from_secs(30), "Prometheus drops web-2", || async {
        let t = targets(&c, &prom).await?;
        (t.len() == 1).then_some(t)
    })
    .await;
    assert_eq!(left, vec!["127.0.0.1:19001"]);
    // Prometheus batches discovery updates (5 s) before the scrape manager applies them; the
    // catalog side answers the blocked health query as soon as the write is applied.
    println!("Prometheus dropped the target {} ms after deregistration", deregistered.elapsed().as_millis());
}
