//! Routing, balancing, health, outliers, swaps and zones through a real
//! gateway on loopback with real hyper backends and a real HTTP client.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pier_gateway::{Balancing, CatalogInstance};

async fn spread(gw: &TestGateway, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(&c, gw, "web.localhost", "/").await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_backend_answers_within_a_second_and_load_spreads() {
    let gw = TestGateway::start(|_| {}, table(&[]));
    let c = client();
    let (status, body) = get(&c, &gw, "web.localhost", "/").await;
    assert_eq!(status, 404, "{body}");

    let b1 = TestBackend::start("b1").await;
    let added = Instant::now();
    gw.set(table(&[instance("web", &b1, "a", true)]));
    loop {
        let (status, body) = get(&c, &gw, "web.localhost", "/").await;
        if status == 200 {
            assert_eq!(body, "b1");
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "not routed within 1 s"
        );
    }
    assert!(added.elapsed() < Duration::from_secs(1));

    let b2 = TestBackend::start("b2").await;
    let b3 = TestBackend::start("b3").await;
    let all = table(&[
        instance("web", &b1, "a", true),
        instance("web", &b2, "a", true),
        instance("web", &b3, "a", true),
    ]);
    gw.set(all.clone());
    let counts = spread(&gw, 150).await;
    assert_eq!(counts.len(), 3, "p2c spread: {counts:?}");
    assert!(counts.values().all(|&n| n >= 15), "p2c spread: {counts:?}");

    let rr = TestGateway::start(|c| c.balancing = Balancing::RoundRobin, all);
    let counts = spread(&rr, 150).await;
    assert_eq!(counts.len(), 3, "round robin spread: {counts:?}");
    assert!(
        counts.values().all(|&n| n == 50),
        "round robin spread: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_marked_not_passing_stops_receiving_at_once() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let gw = TestGateway::start(
        |c| c.balancing = Balancing::RoundRobin,
        table(&[
            instance("web", &b1, "a", true),
            instance("web", &b2, "a", true),
        ]),
    );
    let counts = spread(&gw, 20).await;
    assert_eq!(counts.len(), 2);
    gw.set(table(&[
        instance("web", &b1, "a", true),
        instance("web", &b2, "a", false),
    ]));
    let before = b2.hits();
    let counts = spread(&gw, 50).await;
    assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
    assert_eq!(b2.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_backend_causes_no_failed_get() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let b3 = TestBackend::start("b3").await;
    let gw = TestGateway::start(
        |_| {},
        table(&[
            instance("web", &b1, "a", true),
            instance("web", &b2, "a", true),
            instance("web", &b3, "a", true),
        ]),
    );
    // Warm the pools so the dead backend also leaves stale pooled connections.
    let counts = spread(&gw, 60).await;
    assert_eq!(counts.len(), 3);
    b2.stop().await;
    let c = client();
    let mut served = HashMap::new();
    for _ in 0..100 {
        let (status, body) = get(&c, &gw, "web.localhost", "/").await;
        assert_eq!(status, 200, "GET failed after a backend died: {body}");
        *served.entry(body).or_insert(0) += 1;
    }
    assert!(!served.contains_key("b2"));
    let metrics = gw.metrics.text();
    assert!(
        metrics.contains("pier_gateway_backend_failures_total{service=\"web\",kind=\"connect\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejected_after_consecutive_5xx_and_reinstated_later() {
    let good = TestBackend::start("good").await;
    let bad = TestBackend::start("bad").await;
    bad.set_status(500);
    let gw = TestGateway::start(
        |c| {
            c.balancing = Balancing::RoundRobin;
            c.outlier.consecutive_failures = 3;
            c.outlier.base_ejection_ms = 400;
        },
        table(&[
            instance("web", &good, "a", true),
            instance("web", &bad, "a", true),
        ]),
    );
    let c = client();
    let mut fives = 0;
    for _ in 0..40 {
        let (status, _) = get(&c, &gw, "web.localhost", "/").await;
        if status == 500 {
            fives += 1;
        }
    }
    assert_eq!(
        fives, 3,
        "exactly the threshold of 5xx reach the client before ejection"
    );
    assert_eq!(bad.hits(), 3);
    let metrics = gw.metrics.text();
    assert!(
        metrics.contains("pier_gateway_ejections_total{service=\"web\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pier_gateway_requests_total{service=\"web\",code=\"5xx\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pier_gateway_requests_total{service=\"web\",code=\"2xx\"} 37"),
        "{metrics}"
    );

    bad.set_status(200);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let counts = spread(&gw, 20).await;
    assert_eq!(
        counts.get("bad"),
        Some(&10),
        "reinstated after the ejection: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_swaps_under_load_lose_no_request() {
    let mut live: Vec<TestBackend> = Vec::new();
    for i in 0..2 {
        let b = TestBackend::start(&format!("gen{i}")).await;
        b.set_delay_ms(5);
        live.push(b);
    }
    let to_table = |bs: &[TestBackend]| {
        let insts: Vec<CatalogInstance> =
            bs.iter().map(|b| instance("web", b, "a", true)).collect();
        table(&insts)
    };
    let gw = Arc::new(TestGateway::start(|_| {}, to_table(&live)));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let gw = Arc::clone(&gw);
        let stop = Arc::clone(&stop);
        let ok = Arc::clone(&ok);
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                n += 1;
                let resp = if (w + n) % 4 == 0 {
                    c.post(gw.url("/submit"))
                        .header("host", "web.localhost")
                        .body("payload")
                        .send()
                        .await
                } else {
                    c.get(gw.url("/"))
                        .header("host", "web.localhost")
                        .send()
                        .await
                };
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.text().await.unwrap();
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!(
                        "status {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }

    // Every 100 ms: start a backend, swap it in, take the oldest out of the
    // table, and stop it only after its in-flight requests had time to end.
    let mut retired: Vec<(Instant, TestBackend)> = Vec::new();
    for i in 2..22 {
        let b = TestBackend::start(&format!("gen{i}")).await;
        b.set_delay_ms(5);
        live.push(b);
        let old = live.remove(0);
        gw.set(to_table(&live));
        retired.push((Instant::now(), old));
        tokio::time::sleep(Duration::from_millis(100)).await;
        while retired
            .first()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(150))
        {
            let (_, b) = retired.remove(0);
            b.stop().await;
        }
    }
    // Responses now come from the current generation only.
    let c = client();
    let current: Vec<String> = live.iter().map(|b| b.id.clone()).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        let (status, body) = get(&c, &gw, "web.localhost", "/").await;
        assert_eq!(status, 200);
        assert!(current.contains(&body), "{body} not in {current:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefers_own_zone_and_spills_over() {
    let a1 = TestBackend::start("a1").await;
    let a2 = TestBackend::start("a2").await;
    let b1 = TestBackend::start("b1").await;
    let gw = TestGateway::start(
        |c| c.zone = "a".into(),
        table(&[
            instance("web", &a1, "a", true),
            instance("web", &a2, "a", true),
            instance("web", &b1, "b", true),
        ]),
    );
    let counts = spread(&gw, 60).await;
    assert_eq!(counts.get("b1"), None, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Zone a's servers die but stay registered and passing: the first
    // requests retry onto b, none fails, and the dead ones get ejected.
    a1.stop().await;
    a2.stop().await;
    let counts = spread(&gw, 60).await;
    assert_eq!(counts.get("b1"), Some(&60), "{counts:?}");

    // Zone a's instances leave the catalog: b serves alone.
    gw.set(table(&[instance("web", &b1, "b", true)]));
    let counts = spread(&gw, 20).await;
    assert_eq!(counts.get("b1"), Some(&20), "{counts:?}");

    // A zone a instance comes back: it gets the traffic again.
    let a3 = TestBackend::start("a3").await;
    gw.set(table(&[
        instance("web", &a3, "a", true),
        instance("web", &b1, "b", true),
    ]));
    let counts = spread(&gw, 20).await;
    assert_eq!(counts.get("a3"), Some(&20), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_id_and_prefix_strip() {
    let b = TestBackend::start("api1").await;
    let mut inst = instance("api", &b, "a", true);
    inst.tags = vec!["urlprefix-shop.example.com/api strip=/api".into()];
    let gw = TestGateway::start(|_| {}, table(&[inst]));
    let c = client();

    let r = c
        .get(gw.url("/api/v1/items?q=1"))
        .header("host", "Shop.Example.com:8080")
        .header("x-request-id", "client-id-42")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-42");
    assert_eq!(r.headers()["x-backend-id"], "api1");
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.path, "/v1/items?q=1");
    assert_eq!(seen.headers["host"], "Shop.Example.com:8080");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "Shop.Example.com:8080");
    assert_eq!(seen.headers["x-request-id"], "client-id-42");
    assert!(!seen.headers.contains_key("x-drop-me"));

    let r = c
        .get(gw.url("/"))
        .header("host", "api.localhost")
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(b.seen().pop().unwrap().headers["x-request-id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_404_and_no_healthy_503_name_what_is_missing() {
    let b = TestBackend::start("w1").await;
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", false)]));
    let c = client();
    let (status, body) = get(&c, &gw, "shop.localhost", "/").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("shop.localhost") && body.contains("`shop`"),
        "{body}"
    );

    let (status, body) = get(&c, &gw, "web.localhost", "/").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("`web`") && body.contains("no passing instance"),
        "{body}"
    );
    assert_eq!(b.hits(), 0);

    let r = c
        .get(gw.url("/"))
        .header("host", "web.localhost")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "no_healthy_instance");
    assert_eq!(v["service"], "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let b = TestBackend::start("slow").await;
    b.set_delay_ms(400);
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", true)]));
    let url = gw.url("/");
    let addr = gw.addr;
    let sent = Instant::now();
    let inflight = tokio::spawn(async move {
        client()
            .get(url)
            .header("host", "web.localhost")
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown().await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slow");
    // Measured from the send, not from the shutdown: a loaded machine may
    // oversleep the 100 ms above.
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "the answer came before the backend's delay was over"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
