//! A burst of pushes builds only the newest commit and records the others as skipped; a run
//! cut short by a server crash is marked interrupted after the restart, never left running.

mod pipeline_common;

use std::time::{Duration, Instant};

use pier_testkit::git::busybox_site_repo;
use pipeline_common::Dev;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_build_the_newest_and_crashes_leave_interrupted_runs() {
    let mut dev = Dev::start(&[]).await;
    let repo = busybox_site_repo("burst", "v1\n");
    dev.pier_ok(&[
        "pipeline",
        "create",
        "burst",
        "--repo",
        repo.path().to_str().unwrap(),
        "--poll",
        "off",
        "--keep",
        "5",
    ]);
    // Queue three more runs by hand while run 1 is still going: only the newest is built.
    wait_started(&dev, 1).await;
    let mut commits = Vec::new();
    for page in ["v2\n", "v3\n", "v4\n"] {
        repo.write("www/index.html", page);
        commits.push(repo.commit(page.trim()));
        dev.pier_ok(&["pipeline", "run", "burst"]);
    }
    let run1 = dev.wait_run("burst", 1, Duration::from_secs(180)).await;
    assert_eq!(run1["status"]["state"], "succeeded", "{run1}");
    let run4 = dev.wait_run("burst", 4, Duration::from_secs(180)).await;
    assert_eq!(run4["status"]["state"], "succeeded", "{run4}");
    assert_eq!(run4["commit"], commits[2].as_str());
    for n in [2, 3] {
        let run = dev.wait_run("burst", n, Duration::from_secs(5)).await;
        assert_eq!(run["status"]["state"], "skipped", "{run}");
        assert_eq!(run["status"]["superseded_by"], 4, "{run}");
    }
    dev.wait_served("burst", "v4\n", Duration::from_secs(30))
        .await;

    // A crash mid-run: after the restart the run is interrupted, not building forever.
    repo.write("www/index.html", "v5\n");
    repo.commit("v5");
    dev.pier_ok(&["pipeline", "run", "burst"]);
    wait_started(&dev, 5).await;
    dev.kill9_and_restart().await;
    let run5 = dev.wait_run("burst", 5, Duration::from_secs(30)).await;
    assert_eq!(run5["status"]["state"], "interrupted", "{run5}");
    assert!(run5["status"]["stage"].is_string(), "{run5}");

    // The pipeline goes on after the restart; retention keeps the newest five runs.
    dev.pier_ok(&["pipeline", "run", "burst"]);
    let run6 = dev.wait_run("burst", 6, Duration::from_secs(180)).await;
    assert_eq!(run6["status"]["state"], "succeeded", "{run6}");
    dev.wait_served("burst", "v5\n", Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let numbers: Vec<u64> = dev
            .runs("burst")
            .iter()
            .map(|r| r["number"].as_u64().unwrap())
            .collect();
        if numbers == vec![6, 5, 4, 3, 2] {
            break;
        }
        assert!(Instant::now() < deadline, "retention kept {numbers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = dev.pier(&["pipeline", "logs", "burst/1"]);
    assert!(
        !out.status.success(),
        "the log of a deleted run is still served"
    );
}

/// Waits until run `number` has left the queue (building, pushing or deploying).
async fn wait_started(dev: &Dev, number: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = dev.runs("burst");
        let run = runs.iter().find(|r| r["number"] == number);
        let state = run
            .and_then(|r| r["status"]["state"].as_str())
            .unwrap_or("");
        if ["building", "pushing", "deploying"].contains(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {number} never started: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
