//! Traffic through the gateway of `pier dev` while the platform changes underneath it, on the
//! real Docker engine: a rolling deploy under steady load answers every request with a 2xx
//! and switches to the new version; with replicas in zones `a` and `b` and the gateway in
//! zone `a`, traffic stays in `a` until node `a` dies with its containers, then moves to `b`
//! without a failed GET. The load and the checks go over both of the gateway's listeners, HTTP
//! and HTTPS (certificates from `pier dev`'s local CA, trusted by the client), at once.

mod orchestrator_common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

/// One request of the load: when it was sent, and its status and body or the client error.
#[derive(Debug)]
struct Sample {
    listener: Listener,
    sent: Instant,
    outcome: Result<(u16, String), String>,
}

/// Steady traffic: keep-alive clients sending GETs back to back through the gateway,
/// `per_listener` of them on each of its listeners.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(gws: &[GatewayClient], host: &str, path: &str, per_listener: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = gws
            .iter()
            .flat_map(|gw| std::iter::repeat_n(gw, per_listener))
            .map(|gw| {
                let stop = Arc::clone(&stop);
                // A client of its own: its own connection, as separate users have.
                let gw = GatewayClient::new(gw.listener, gw.port(), gw.ca());
                let (host, path) = (host.to_string(), path.to_string());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let outcome = gw.try_get(&host, &path).await;
                        samples.push(Sample {
                            listener: gw.listener,
                            sent,
                            outcome,
                        });
                        // A small pause keeps the load steady without starving the machine.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    samples
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load task"));
        }
        all.sort_by_key(|s| s.sent);
        all
    }
}

/// Every sample that is not a 2xx answer, described.
/// Asserts every sample got a 2xx; `during` names the phase in the failure message.
fn assert_none_failed(samples: &[Sample], origin: Instant, during: &str) {
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| match &s.outcome {
            Ok((status, _)) if (200..300).contains(status) => None,
            Ok((status, body)) => Some(format!(
                "{:?} at {:?}: {status} {body}",
                s.listener,
                s.sent.duration_since(origin)
            )),
            Err(e) => Some(format!(
                "{:?} at {:?}: {e}",
                s.listener,
                s.sent.duration_since(origin)
            )),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed {during}, first: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    for listener in [Listener::Http, Listener::Https] {
        let n = samples.iter().filter(|s| s.listener == listener).count();
        assert!(n >= 20, "only {n} requests over {listener:?} {during}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_answers_every_request_and_switches_version() {
    let mut c = Cluster::start(true, &[]).await;
    let v1 = c.push_image("roll:v1", HttpdVariant::Healthy);
    let v2 = c.push_image("roll:v2", HttpdVariant::Healthy);
    let gws = c.gateway_clients();

    let file1 = c.write_file("roll-v1.toml", &service_file("roll", &v1, 3, ""));
    let out = c.pier(&["deploy", &file1]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for gw in &gws {
        eventually(
            "v1 served by the gateway",
            Duration::from_secs(10),
            || async {
                gw.get("roll.localhost", "/")
                    .await
                    .is_some_and(|(s, b)| s == 200 && b.contains("roll:v1"))
            },
        )
        .await;
    }

    let origin = Instant::now();
    let load = Load::start(&gws, "roll.localhost", "/", 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file2 = c.write_file("roll-v2.toml", &service_file("roll", &v2, 3, ""));
    let deploy = {
        let bin = BIN.to_string();
        let addr = c.addr();
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(["--addr", &addr, "deploy", &file2])
                .output()
                .expect("run pier deploy")
        })
    };
    let out = deploy.await.expect("deploy thread");
    let deployed = Instant::now();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // The last old task drains (500 ms) before it is stopped; give the load a moment after.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = load.finish().await;

    assert_none_failed(&samples, origin, "during the rolling deploy");
    let version = |s: &Sample| match &s.outcome {
        Ok((_, body)) if body.contains("roll:v1") => 1,
        Ok((_, body)) if body.contains("roll:v2") => 2,
        other => panic!("unexpected answer {other:?}"),
    };
    let v1_count = samples.iter().filter(|s| version(s) == 1).count();
    let v2_count = samples.iter().filter(|s| version(s) == 2).count();
    eprintln!(
        "{} requests during the deploy: {v1_count} answered by v1, {v2_count} by v2, 0 failed",
        samples.len()
    );
    assert!(samples.len() >= 100, "too little load: {}", samples.len());
    assert!(v1_count > 0, "no request reached v1 before the deploy");
    assert!(v2_count > 0, "no request reached v2");
    // Once the deploy has returned and the old tasks' drain is over, only v2 answers.
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > deployed + Duration::from_millis(1000))
        .collect();
    assert!(!late.is_empty(), "no request after the deploy finished");
    assert!(
        late.iter().all(|s| version(s) == 2),
        "v1 still answered after the deploy finished"
    );
}

/// Zone of each passing replica, keyed by its container's host name (the first 12 characters
/// of its container id, which `/cgi-bin/whoami` prints).
async fn zone_by_hostname(c: &Cluster, service: &str) -> BTreeMap<String, String> {
    let passing: BTreeSet<String> = c
        .passing(service)
        .await
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    c.tasks(service)
        .await
        .iter()
        .filter(|t| passing.contains(t["task"]["id"].as_str().unwrap_or("")))
        .filter_map(|t| {
            let container = t["status"]["container_id"].as_str()?;
            let zone = t["task"]["zone"].as_str()?;
            Some((container.chars().take(12).collect(), zone.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_prefers_its_zone_and_fails_over_without_failed_gets() {
    // The gateway of `pier dev --zone a` is in zone a; the replicas run on two agents.
    let mut c = Cluster::start_two_zones(&["--zone", "a", "--node-down-after", "2s"]).await;
    let a = 0;
    let image = c.push_image("zoned:v1", HttpdVariant::Healthy);
    let file = c.write_file("zoned.toml", &service_file("zoned", &image, 4, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let zones = zone_by_hostname(&c, "zoned").await;
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for z in zones.values() {
        *per_zone.entry(z.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("a", 2), ("b", 2)]),
        "replicas: {zones:?}"
    );
    let gws = c.gateway_clients();
    for gw in &gws {
        eventually(
            "the gateway routes zoned",
            Duration::from_secs(10),
            || async {
                gw.get("zoned.localhost", "/cgi-bin/whoami")
                    .await
                    .is_some_and(|(s, _)| s == 200)
            },
        )
        .await;
    }

    // While zone a is healthy, every request stays in zone a (and uses both of its replicas).
    for gw in &gws {
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let (status, host) = gw
                .try_get("zoned.localhost", "/cgi-bin/whoami")
                .await
                .expect("gateway answers");
            assert_eq!(status, 200, "{host}");
            assert_eq!(
                zones.get(&host).map(String::as_str),
                Some("a"),
                "request over {:?} served by {host}, not a zone-a replica ({zones:?})",
                gw.listener
            );
            seen.insert(host);
        }
        assert_eq!(
            seen.len(),
            2,
            "zone a's two replicas did not share over {:?}: {seen:?}",
            gw.listener
        );
    }

    // Node a dies with its containers while traffic flows.
    let origin = Instant::now();
    let load = Load::start(&gws, "zoned.localhost", "/cgi-bin/whoami", 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.agents[a].kill9();
    let killed = Instant::now();
    for id in containers_of_node(&c, "node-a") {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    // `docker rm -f` of each container takes its time on a loaded machine: zone a is gone
    // only once the last one is.
    let gone = Instant::now();
    eventually(
        "four passing replicas in zone b",
        Duration::from_secs(30),
        || async {
            let z = zone_by_hostname(&c, "zoned").await;
            z.len() == 4 && z.values().all(|z| z == "b")
        },
    )
    .await;
    let moved = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    let zones_after = zone_by_hostname(&c, "zoned").await;

    assert_none_failed(&samples, origin, "while zone a went away");
    // Every answer after the containers were gone came from zone b.
    let mut b_hosts = BTreeSet::new();
    let after_kill: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > gone + Duration::from_millis(500))
        .collect();
    assert!(!after_kill.is_empty(), "no traffic after the kill");
    for s in after_kill {
        let Ok((_, host)) = &s.outcome else {
            unreachable!()
        };
        let zone = zones_after
            .get(host)
            .or_else(|| zones.get(host))
            .map(String::as_str);
        assert_eq!(zone, Some("b"), "{host} answered after zone a was gone");
        b_hosts.insert(host.clone());
    }
    eprintln!(
        "{} GETs, none failed; zone b answered from {} replicas; 4 replicas in b {moved:?} after the kill",
        samples.len(),
        b_hosts.len()
    );
}
