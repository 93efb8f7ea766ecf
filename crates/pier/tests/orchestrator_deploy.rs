//! `pier deploy` end to end on the real Docker engine: three replicas of a FROM-scratch
//! busybox httpd image pulled from the pier registry, healthy, in the catalog with host
//! ports that answer; an unchanged deploy is a no-op; bad input is refused before anything
//! changes and the running revision keeps serving.

mod orchestrator_common;

use std::time::Duration;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

/// The manifest digest the registry serves for `repo:tag`.
async fn registry_digest(port: u16, repo: &str, tag: &str) -> String {
    let resp = reqwest::Client::new()
        .head(format!("http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("HEAD manifest");
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.headers()["docker-content-digest"]
        .to_str()
        .expect("digest header")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_healthy_in_catalog_and_bad_input_refused() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("hello:v1", HttpdVariant::Healthy);
    let file = c.write_file("hello.toml", &service_file("hello", &image, 3, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy failed:\n{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        c.log("dev")
    );
    let text = stdout(&out);
    assert!(text.contains("succeeded"), "{text}");
    assert!(text.contains("healthy"), "{text}");

    let passing = c.passing("hello").await;
    assert_eq!(passing.len(), 3, "{passing:?}");
    for (_, port, _) in &passing {
        let body = body_of(*port).await.expect("the host port answers");
        assert!(body.contains("hello:v1"), "{body}");
    }
    assert_eq!(c.guard.containers(false).len(), 3);

    // The same file again changes nothing.
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));

    // Lists, with --json.
    let ls = c.pier(&["service", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["healthy"], 3);
    let ps = c.pier(&["service", "ps", "hello", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["display_state"] == "healthy")
            .count(),
        3
    );
    let nodes = c.pier(&["node", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(v[0]["tasks"], 3);

    // Bad input: each a specific error, nothing changes.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "typo",
            service_file("hello", &image, 3, "").replace("interval", "intervall"),
            "unknown field `intervall`",
        ),
        ("toml", "name = \"hello\"\nimage = \n".to_string(), "line 2"),
        (
            "negative",
            service_file("hello", &image, 3, "").replace("count = 3", "count = -2"),
            "must not be negative",
        ),
        (
            "too-many",
            service_file("hello", &image, 3, "").replace("count = 3", "count = 100000"),
            "maximum",
        ),
        (
            "port",
            service_file("hello", &image, 3, "").replace("port = 8080", "port = 70000"),
            "out of range",
        ),
        (
            "no-image",
            service_file(
                "hello",
                &format!("127.0.0.1:{}/hello:nope", c.registry_port),
                3,
                "",
            ),
            "does not exist in the pier registry",
        ),
        (
            "too-big",
            service_file("hello", &image, 3, "")
                .replace("port = 8080", "port = 8080\nmemory = \"100000GiB\""),
            "no node can ever run",
        ),
        (
            "never-pass",
            service_file("hello", &image, 3, "").replace("port = 8080\n", ""),
            "could never pass",
        ),
    ];
    for (name, text, expected) in cases {
        let f = c.write_file(&format!("{name}.toml"), &text);
        let out = c.pier(&["deploy", &f]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            stderr(&out).contains(expected),
            "{name}: expected {expected:?} in {}",
            stderr(&out)
        );
    }
    let detail = c.get("/api/v1/services/hello").await;
    assert_eq!(detail["service"]["revision"], 1);
    assert_eq!(c.passing("hello").await.len(), 3);

    // The revision pinned the tag's manifest digest, and the containers run exactly it.
    let pinned = detail["spec"]["pinned_image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let digest = registry_digest(c.registry_port, "hello", "v1").await;
    assert_eq!(pinned, format!("{image}@{digest}"), "{detail}");
    let by_digest = format!("127.0.0.1:{}/hello@{digest}", c.registry_port);
    for id in c.guard.containers(false) {
        let ran = pier_testkit::docker::docker(&["inspect", "--format", "{{.Config.Image}}", &id]);
        assert_eq!(ran.trim(), by_digest, "container {id}");
    }
    let inspect = c.pier(&["service", "inspect", "hello"]);
    assert!(stdout(&inspect).contains(&pinned), "{}", stdout(&inspect));
    // The tag moves: the same file is a new revision running the new digest.
    let moved = c.push_image("hello:v1", HttpdVariant::CrashAfter { seconds: 3600 });
    assert_eq!(moved, image);
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(!stdout(&out).contains("unchanged"), "{}", stdout(&out));
    let detail = c.get("/api/v1/services/hello").await;
    assert_eq!(detail["service"]["revision"], 2);
    let new_digest = registry_digest(c.registry_port, "hello", "v1").await;
    assert_ne!(new_digest, digest);
    assert_eq!(
        detail["spec"]["pinned_image"],
        serde_json::Value::String(format!("{image}@{new_digest}"))
    );

    // Logs from the agent through the server.
    let logs = c.pier(&["logs", "hello"]);
    assert!(logs.status.success(), "{}", stderr(&logs));

    // Scale down and remove: no container left behind.
    let out = c.pier(&["service", "scale", "hello", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("one container left", Duration::from_secs(20), || async {
        c.guard.containers(true).len() == 1
    })
    .await;
    let out = c.pier(&["service", "rm", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("no container left", Duration::from_secs(20), || async {
        c.guard.containers(true).is_empty()
    })
    .await;
    eventually("service gone", Duration::from_secs(10), || async {
        c.get("/api/v1/services")
            .await
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_visibly() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("crashy:v1", HttpdVariant::CrashAfter { seconds: 1 });
    let file = c.write_file(
        "crashy.toml",
        &format!("name = \"crashy\"\nimage = \"{image}\"\ncount = 1\n"),
    );
    let out = c.pier(&["deploy", &file]);
    assert!(
        !out.status.success(),
        "a crash-looping first deploy succeeded"
    );
    assert!(
        stderr(&out).contains("exited with code 1"),
        "{}",
        stderr(&out)
    );
    // Replacements keep coming, each after a longer wait, and `ps` says so.
    eventually(
        "a back-off line in pier service ps",
        Duration::from_secs(30),
        || async { stdout(&c.pier(&["service", "ps", "crashy"])).contains("restarting in") },
    )
    .await;
    let detail = c.get("/api/v1/services/crashy").await;
    assert!(
        detail["service"]["restart_status"]
            .as_str()
            .unwrap_or("")
            .contains("exited 1"),
        "{detail}"
    );
    let logs = c.pier(&["logs", "crashy"]);
    assert!(
        stdout(&logs).contains("crashing after 1s"),
        "{}",
        stdout(&logs)
    );
}

/// `pier logs -f SERVICE` (the API's `?follow=true`) stays open across a scale: the instance
/// started after the tail opened joins it as soon as its agent reports it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_service_log_takes_in_instances_started_later() {
    use futures::StreamExt;
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("tick:v1", HttpdVariant::Ticking);
    let file = c.write_file("tick.toml", &service_file("tick", &image, 1, ""));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let first: Vec<String> = c
        .tasks("tick")
        .await
        .iter()
        .filter_map(|t| t["task"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");

    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/services/tick/logs?follow=true&tail=1",
            c.addr()
        ))
        .send()
        .await
        .expect("open the followed log");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut body = resp.bytes_stream();
    let out = c.pier(&["service", "scale", "tick", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let joined = loop {
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        let Ok(Some(Ok(chunk))) = next else {
            break None;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        let newcomer = text
            .lines()
            .filter(|l| l.contains("| tick "))
            .filter_map(|l| l.split(" | ").next())
            .find(|id| !first.iter().any(|f| f == id))
            .map(str::to_string);
        if newcomer.is_some() {
            break newcomer;
        }
    };
    assert!(
        joined.is_some(),
        "no line of the second instance reached the open tail within 30 s; it got:\n{text}"
    );
}
