//! The gateway inside `pier dev`, end to end on the real Docker engine: a new
//! service answers on `<name>.localhost` within a second of its first instance
//! turning healthy, traffic spreads over every replica, and a service with no
//! instance left answers 503 while an unknown host answers 404. Every case runs over both of
//! the gateway's listeners, HTTP and HTTPS (certificates from `pier dev`'s local CA, trusted by
//! the client), against the same server.

mod orchestrator_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_service_is_reachable_at_once_and_spread_over_replicas() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("web:v1", HttpdVariant::Healthy);
    let gws = c.gateway_clients();

    // Unknown host before anything is deployed: 404 that names the host.
    for gw in &gws {
        let (status, body) = gw
            .try_get("nothing.localhost", "/")
            .await
            .expect("gateway answers");
        assert_eq!(status, 404, "{:?}: {body}", gw.listener);
        assert!(body.contains("nothing.localhost"), "{body}");
    }

    let file = c.write_file("web.toml", &service_file("web", &image, 3, ""));
    let out = c.pier(&["deploy", "--detach", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    // The moment the first instance passes, the gateway must route to it within 1 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.passing("web").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no instance turned healthy:\n{}",
            c.log("dev")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let healthy_at = Instant::now();
    for gw in &gws {
        loop {
            if let Some((200, body)) = gw.get("web.localhost", "/").await {
                assert!(body.contains("web:v1"), "{body}");
                break;
            }
            assert!(
                healthy_at.elapsed() < Duration::from_secs(1),
                "web.localhost not served over {:?} within 1 s of its first healthy instance",
                gw.listener
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "{:?}: first request routed {:?} after the first instance passed",
            gw.listener,
            healthy_at.elapsed()
        );
    }

    // Once all three pass, requests spread over all of them.
    eventually("3 passing instances", Duration::from_secs(60), || async {
        c.passing("web").await.len() == 3
    })
    .await;
    for gw in &gws {
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let (status, body) = gw
                .try_get("web.localhost", "/cgi-bin/whoami")
                .await
                .expect("answer");
            assert_eq!(status, 200, "{body}");
            seen.insert(body.trim().to_string());
        }
        assert_eq!(
            seen.len(),
            3,
            "60 requests over {:?} reached {seen:?}, not all 3 replicas",
            gw.listener
        );
    }

    // A service registered from outside through the Consul API, whose TTL check
    // starts critical: known but unhealthy → 503 naming it; once the check
    // passes it is routed (to one of web's host ports).
    let (_, web_port, _) = c.passing("web").await[0].clone();
    let http = reqwest::Client::new();
    let reg = serde_json::json!({
        "ID": "ext-1", "Name": "ext", "Address": "127.0.0.1", "Port": web_port,
        "Check": {"CheckID": "ext-ttl", "TTL": "60s"}
    });
    let r = http
        .put(format!("{}/v1/agent/service/register", c.addr()))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in &gws {
        loop {
            let (status, body) = gw.try_get("ext.localhost", "/").await.expect("answer");
            if status == 503 {
                assert!(
                    body.contains("ext"),
                    "503 body does not name the service: {body}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ext answered {status} over {:?}, not 503: {body}",
                gw.listener
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let r = http
        .put(format!("{}/v1/agent/check/pass/ext-ttl", c.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in &gws {
        loop {
            let (status, body) = gw.try_get("ext.localhost", "/").await.expect("answer");
            if status == 200 {
                assert!(body.contains("web:v1"), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ext still {status} over {:?} after its check passed: {body}",
                gw.listener
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
