//! 1,000 concurrent blocking HTTP watchers on one service all see one change; watchers of
//! another service are not woken by it.

mod common;

use std::time::{Duration, Instant};

use common::{header_u64, Options, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_watchers_wake_on_their_service_only() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()
        .unwrap();
    for (id, name) in [("web-1", "web"), ("other-1", "other")] {
        let r = c
            .put(s.url("/v1/agent/service/register"))
            .json(&json!({"ID": id, "Name": name, "Port": 80, "Check": {"TTL": "1h", "Status": "passing"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let index_of = |name: &str| {
        let c = c.clone();
        let url = s.url(&format!("/v1/health/service/{name}"));
        async move { header_u64(&c.get(url).send().await.unwrap(), "x-consul-index") }
    };
    let web_index = index_of("web").await;
    let other_index = index_of("other").await;

    let watch = |name: &str, index: u64| {
        let c = c.clone();
        let url = s.url(&format!("/v1/health/service/{name}?index={index}&wait=60s"));
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            let idx = header_u64(&r, "x-consul-index");
            let body: Vec<serde_json::Value> = r.json().await.unwrap();
            (Instant::now(), idx, body.len())
        })
    };
    let web_watchers: Vec<_> = (0..1000).map(|_| watch("web", web_index)).collect();
    let other_watchers: Vec<_> = (0..100).map(|_| watch("other", other_index)).collect();
    // Let every request reach the server and block.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        web_watchers.iter().all(|w| !w.is_finished()),
        "web watchers returned early"
    );
    assert!(
        other_watchers.iter().all(|w| !w.is_finished()),
        "other watchers returned early"
    );

    let changed = Instant::now();
    let r = c
        .put(s.url("/v1/agent/service/register"))
        .json(&json!({"ID": "web-2", "Name": "web", "Port": 81}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut latencies = Vec::new();
    for w in web_watchers {
        let (at, idx, len) = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("watcher woke")
            .unwrap();
        assert!(idx > web_index);
        assert_eq!(len, 2);
        latencies.push(at.saturating_duration_since(changed));
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "1000 watchers: p50 {:?}, p99 {:?}, max {:?}",
        latencies[500], p99, latencies[999]
    );

    // The change to `web` woke none of the `other` watchers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = other_watchers.iter().filter(|w| !w.is_finished()).count();
    assert_eq!(pending, 100, "watchers of another service were woken");
    // A change to `other` wakes them.
    c.put(s.url("/v1/agent/check/fail/service:other-1"))
        .send()
        .await
        .unwrap();
    for w in other_watchers {
        let (_, idx, _) = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("other watcher woke")
            .unwrap();
        assert!(idx > other_index);
    }
}
