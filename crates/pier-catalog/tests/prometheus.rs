//! What Prometheus' Consul service discovery asks of the catalog, replayed request by request.
//!
//! Debian builds Prometheus without Consul service discovery (bookworm 2.42 and trixie 2.53:
//! "Disable Consul SD until its Debian package is back in shape"), so a real Prometheus cannot
//! run `consul_sd_configs` on these machines. Two tests cover it instead: the protocol replay
//! below (the exact request sequence of Prometheus' Consul SD, which uses the official Go client
//! `hashicorp/consul/api`), and `victoriametrics.rs`, where a real Prometheus-compatible scraper
//! from Debian runs the same `consul_sd_configs` against the catalog.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestServer};
use serde_json::{json, Value};

/// One blocking GET as the Go client `hashicorp/consul/api` makes it for Prometheus
/// (`AllowStale` → `stale`, `WaitIndex` → `index`, `WaitTime` → `wait=<ms>ms`), parsing the
/// headers as that client does (it fails when `X-Consul-LastContact` is not an integer).
async fn go_client_get(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    index: u64,
    extra: &str,
) -> (u64, Value) {
    let mut url = format!("{base}{path}?stale=");
    if index != 0 {
        url.push_str(&format!("&index={index}&wait=120000ms"));
    }
    url.push_str(extra);
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let index: u64 = h["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .expect("X-Consul-Index is a u64");
    let _: u64 = h["x-consul-lastcontact"]
        .to_str()
        .unwrap()
        .parse()
        .expect("X-Consul-LastContact is a u64");
    assert!(matches!(
        h["x-consul-knownleader"].to_str().unwrap(),
        "true" | "false"
    ));
    (index, r.json().await.unwrap())
}

/// Prometheus' Consul SD (discovery/consul/consul.go) as a request sequence: `agent/self` for the
/// datacenter, a blocking `catalog/services` watch, and per service a blocking
/// `health/service/:name` watch whose answers become target groups (address = Service.Address
/// or else Node.Address, plus Service.Port; labels from Node, Datacenter, TaggedAddresses,
/// Meta, ServiceMeta, Tags). Asserts the targets and that a deregistration reaches the blocked
/// watch within one blocking round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_consul_sd_protocol_replay() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", s.http_addr);
    for (id, addr, port) in [("web-1", "127.0.0.1", 19001), ("web-2", "", 19002)] {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(
                &json!({"ID": id, "Name": "web", "Address": addr, "Port": port, "Tags": ["metrics"],
                          "Meta": {"team": "a"}, "Check": {"TTL": "1h", "Status": "passing"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let me: Value = c
        .get(s.url("/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dc = me["Config"]["Datacenter"]
        .as_str()
        .expect("Config.Datacenter is a string")
        .to_string();

    let (services_index, services) = go_client_get(&c, &base, "/v1/catalog/services", 0, "").await;
    assert!(services.as_object().unwrap().contains_key("web"));
    let targets_of = |entries: &Value| -> Vec<String> {
        let mut out: Vec<String> = entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                // Fields Prometheus reads to build labels; all must be present.
                assert!(e["Node"]["Node"].is_string() && e["Node"]["Datacenter"] == dc.as_str());
                assert!(e["Node"]["TaggedAddresses"].is_object() && e["Node"]["Meta"].is_object());
                assert!(e["Service"]["Meta"]["team"] == "a" && e["Service"]["Tags"].is_array());
                assert!(e["Service"]["ID"].is_string());
                for check in e["Checks"].as_array().unwrap() {
                    assert!(check["Status"].is_string());
                }
                let addr = match e["Service"]["Address"].as_str().unwrap() {
                    "" => e["Node"]["Address"].as_str().unwrap(),
                    a => a,
                };
                format!("{addr}:{}", e["Service"]["Port"])
            })
            .collect();
        out.sort();
        out
    };
    let (health_index, entries) =
        go_client_get(&c, &base, "/v1/health/service/web", 0, "&tag=metrics").await;
    assert_eq!(
        targets_of(&entries),
        vec!["127.0.0.1:19001", "127.0.0.1:19002"]
    );

    // Both watches block; a deregistration wakes the health watch at once.
    let health_watch = {
        let c = c.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let r = go_client_get(
                &c,
                &base,
                "/v1/health/service/web",
                health_index,
                "&tag=metrics",
            )
            .await;
            (Instant::now(), r)
        })
    };
    let services_watch = {
        let c = c.clone();
        let base = base.clone();
        tokio::spawn(async move {
            go_client_get(&c, &base, "/v1/catalog/services", services_index, "").await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !health_watch.is_finished() && !services_watch.is_finished(),
        "watches must block"
    );
    let deregistered = Instant::now();
    common::deregister(&c, &s, "web-2").await;
    let (woke, (new_index, entries)) = health_watch.await.unwrap();
    assert!(new_index > health_index);
    assert_eq!(targets_of(&entries), vec!["127.0.0.1:19001"]);
    let took = woke.saturating_duration_since(deregistered);
    assert!(took < Duration::from_secs(1), "drop took {took:?}");
    let (svc_index, services) = services_watch.await.unwrap();
    assert!(svc_index > services_index);
    assert!(services.as_object().unwrap().contains_key("web"));
    println!(
        "target dropped {} ms after deregistration",
        took.as_millis()
    );
}
