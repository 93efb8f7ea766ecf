//! The whole pipeline against `pier dev`, the real Docker engine and real git: the first
//! version is deployed at creation and served through the gateway, a new commit is served
//! within seconds, a commit whose
//! health check fails is rolled back while the previous version keeps serving, and a broken
//! Dockerfile fails the build with nothing pushed or deployed.

mod pipeline_common;

use std::time::{Duration, Instant};

use pier_testkit::git::{busybox_service_file, busybox_site_repo};
use pipeline_common::{json_of, Dev};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_built_deployed_and_rolled_back() {
    let dev = Dev::start(&[]).await;
    let repo = busybox_site_repo("site", "v1\n");

    // Create: the branch head is built and deployed at once.
    let created = json_of(&dev.pier_ok(&[
        "pipeline",
        "create",
        "site",
        "--repo",
        repo.path().to_str().unwrap(),
        "--poll",
        "1s",
        "--json",
    ]));
    assert_eq!(created["name"], "site");
    assert_eq!(created["last_run"]["number"], 1);
    let run1 = dev.wait_run("site", 1, Duration::from_secs(180)).await;
    assert_eq!(
        run1["status"]["state"],
        "succeeded",
        "{run1}\n{}",
        dev.log("site", 1).await
    );
    dev.wait_served("site", "v1\n", Duration::from_secs(30))
        .await;

    // A new commit: served within seconds, run succeeded, image tag = short sha in the registry.
    repo.write("www/index.html", "v2\n");
    let c2 = repo.commit("page v2");
    let t0 = Instant::now();
    dev.wait_run_exists("site", 2, Duration::from_secs(20))
        .await;
    let served_after = dev
        .wait_served("site", "v2\n", Duration::from_secs(60))
        .await;
    let served_secs = t0.elapsed().as_secs_f64();
    eprintln!("v2 served {served_secs:.1} s after the commit (waited {served_after:?})");
    assert!(
        served_secs < 30.0,
        "v2 took {served_secs:.1} s to be served"
    );
    let run2 = dev.wait_run("site", 2, Duration::from_secs(120)).await;
    assert_eq!(run2["status"]["state"], "succeeded", "{run2}");
    assert_eq!(run2["commit"], c2.as_str());
    assert_eq!(run2["trigger"], "poll");
    let short2 = &c2[..12];
    assert_eq!(run2["image"], format!("{}/site:{short2}", dev.registry()));
    assert!(dev
        .registry_tags("site")
        .await
        .contains(&short2.to_string()));

    // A commit whose health check fails: rolled back, v2 keeps serving throughout.
    repo.write("www/index.html", "v3\n");
    repo.write(
        "pier.toml",
        busybox_service_file("site", "/no-such-page.html"),
    );
    repo.commit("v3 with a failing health check");
    dev.wait_run_exists("site", 3, Duration::from_secs(20))
        .await;
    let mut checks = 0;
    let run3 = loop {
        let served = dev.served("site", "/index.html").await;
        assert!(
            !served.is_empty(),
            "nothing serves site during the failed rollout"
        );
        for (addr, body) in &served {
            assert_eq!(
                body, "v2\n",
                "{addr} served {body:?} during the failed rollout"
            );
        }
        checks += 1;
        let run: serde_json::Value = dev
            .http
            .get(format!("{}/api/v1/pipelines/site/runs/3", dev.addr()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let state = run["status"]["state"].as_str().unwrap().to_string();
        if !["queued", "building", "pushing", "deploying"].contains(&state.as_str()) {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        checks > 5,
        "the rollout was too short to observe ({checks} checks)"
    );
    assert_eq!(
        run3["status"]["state"],
        "rolled_back",
        "{run3}\n{}",
        dev.log("site", 3).await
    );
    dev.wait_served("site", "v2\n", Duration::from_secs(10))
        .await;
    let text = dev.pier_ok(&["pipeline", "runs", "site"]);
    assert!(text.contains("rolled back"), "{text}");

    // A broken Dockerfile: failed at build with the builder's error; nothing pushed or deployed.
    let tags_before = dev.registry_tags("site").await;
    let service_before = json_of(&dev.pier_ok(&["service", "inspect", "site", "--json"]));
    repo.write("pier.toml", busybox_service_file("site", "/index.html"));
    repo.write("Dockerfile", "FROM scratch\nCOPY missing-file /x\n");
    repo.commit("broken Dockerfile");
    dev.wait_run_exists("site", 4, Duration::from_secs(20))
        .await;
    let run4 = dev.wait_run("site", 4, Duration::from_secs(60)).await;
    assert_eq!(run4["status"]["state"], "failed", "{run4}");
    assert_eq!(run4["status"]["stage"], "build", "{run4}");
    assert!(
        run4["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("missing-file"),
        "{run4}"
    );
    let log4 = dev.pier_ok(&["pipeline", "logs", "site/4"]);
    assert!(log4.contains("COPY missing-file /x"), "{log4}");
    assert!(log4.contains("failed at build"), "{log4}");
    assert_eq!(dev.registry_tags("site").await, tags_before);
    let service_after = json_of(&dev.pier_ok(&["service", "inspect", "site", "--json"]));
    assert_eq!(
        service_after["service"]["latest_revision"], service_before["service"]["latest_revision"],
        "a deployment was made for a failed build"
    );
    dev.wait_served("site", "v2\n", Duration::from_secs(5))
        .await;

    // `logs -f` of a finished run prints it and exits by its outcome; `ls` shows the latest.
    let out = dev.pier(&["pipeline", "logs", "site/2", "-f"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("==> succeeded"));
    let out = dev.pier(&["pipeline", "logs", "site", "-f"]);
    assert!(
        !out.status.success(),
        "following a failed run must exit non-zero"
    );
    let ls = json_of(&dev.pier_ok(&["pipeline", "ls", "--json"]));
    assert_eq!(ls[0]["last_run"]["number"], 4);
}
