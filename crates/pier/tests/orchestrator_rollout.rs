//! Rolling updates on the real engine: a new version never drops below the allowed healthy
//! count and leaves no old container; a version whose health check fails is rolled back
//! automatically while the old one keeps serving; a version that is healthy and then
//! crashes is counted by the circuit breaker too.

mod orchestrator_common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_keeps_capacity_and_failures_roll_back() {
    let mut c = Cluster::start(true, &[]).await;
    let v1 = c.push_image("web:v1", HttpdVariant::Healthy);
    let v2 = c.push_image("web:v2", HttpdVariant::Healthy);
    let bad = c.push_image("web:bad", HttpdVariant::NoHealthz);
    let crash = c.push_image("web:crash", HttpdVariant::CrashAfter { seconds: 5 });
    let f1 = c.write_file("v1.toml", &service_file("web", &v1, 3, ""));
    let out = c.pier(&["deploy", &f1]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    // Watch the passing count during the rollout of v2: max_unavailable is 0.
    let min_seen = Arc::new(AtomicUsize::new(usize::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (min_seen, stop, addr) = (min_seen.clone(), stop.clone(), c.addr());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = client
                    .get(format!("{addr}/v1/health/service/web?passing"))
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let n = v.as_array().map(|a| a.len()).unwrap_or(0);
                        min_seen.fetch_min(n, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let f2 = c.write_file("v2.toml", &service_file("web", &v2, 3, ""));
    let out = c.pier(&["deploy", &f2]);
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        min_seen.load(Ordering::SeqCst) >= 3,
        "passing instances fell to {}",
        min_seen.load(Ordering::SeqCst)
    );
    eventually(
        "only v2 containers left",
        Duration::from_secs(20),
        || async { c.guard.containers(true).len() == 3 },
    )
    .await;
    let passing = c.passing("web").await;
    assert_eq!(passing.len(), 3);
    assert!(
        passing.iter().all(|(_, _, rev)| rev == "rev-2"),
        "{passing:?}"
    );

    // A version whose health check never passes: fails, rolls back, old keeps serving.
    let fb = c.write_file("bad.toml", &service_file("web", &bad, 3, ""));
    let out = c.pier(&["deploy", &fb]);
    assert!(
        !out.status.success(),
        "a failing version was reported as success"
    );
    let err = stderr(&out);
    assert!(
        err.contains("rolled back") && err.contains("health"),
        "{err}"
    );
    assert!(c.passing("web").await.len() >= 3);
    eventually(
        "back on revision 2 only",
        Duration::from_secs(30),
        || async {
            let p = c.passing("web").await;
            p.len() == 3
                && p.iter().all(|(_, _, r)| r == "rev-2")
                && c.guard.containers(true).len() == 3
        },
    )
    .await;
    for (_, port, _) in c.passing("web").await {
        assert!(body_of(port).await.unwrap_or_default().contains("web:v2"));
    }

    // Healthy first, crashing after 5 s: the breaker counts failures after running too.
    // min_healthy_time longer than the crash delay: the tasks are running and passing their
    // checks when they die, i.e. they fail *after* reaching running.
    let fc = c.write_file(
        "crash.toml",
        &service_file("web", &crash, 3, "failure_threshold = 2\n")
            .replace("min_healthy_time = \"1s\"", "min_healthy_time = \"10s\""),
    );
    let out = c.pier(&["deploy", &fc]);
    assert!(
        !out.status.success(),
        "a crashing version was reported as success:\n{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("rolled back") && err.contains("exited"),
        "{err}"
    );
    eventually(
        "back on revision 2 after the crash rollback",
        Duration::from_secs(40),
        || async {
            let p = c.passing("web").await;
            p.len() == 3 && p.iter().all(|(_, _, r)| r == "rev-2")
        },
    )
    .await;
    // What the crashed containers wrote last is kept although they are gone.
    let logs = c.pier(&["logs", "web"]);
    assert!(
        stdout(&logs).contains("crashing after 5s"),
        "{}",
        stdout(&logs)
    );
    let detail = c.get("/api/v1/services/web").await;
    assert_eq!(detail["service"]["revision"], 2, "{detail}");
}
