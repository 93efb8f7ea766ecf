//! A pipeline in a secure cluster: created with a `pipeline:` token, its run builds the image and
//! pushes it to the cluster's TLS registry with the credentials the server makes for that one
//! repository (no operator token involved), an agent joined with its token pulls and runs it,
//! and the push is in the audit log under that server-made token.

mod pipeline_common;
mod security_common;

use std::time::{Duration, Instant};

use pier_testkit::git::busybox_site_repo;
use pier_testkit::net::free_port;
use pipeline_common::RegistryImages;
use security_common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_pushes_to_the_secure_registry_with_its_own_credentials() {
    pier_testkit::docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let registry_port = free_port();
    let port_arg = registry_port.to_string();
    let c = SecureCluster::start(tmp.path(), 1, &["--registry-port", &port_arg]).await;
    let _images = RegistryImages(format!("127.0.0.1:{registry_port}/"));
    let (_agent, _containers) = c.spawn_agent("n1", &tmp.path().join("agent-n1"), None);

    // Only what a CI job needs: the pipeline, nothing of the registry.
    let (ci, _) = c.create_token(&["pipeline:web"]);
    let repo = busybox_site_repo("web", "secure v1\n");
    let out = c.cli(
        0,
        Some(&ci),
        &[
            "pipeline",
            "create",
            "web",
            "--repo",
            repo.path().to_str().unwrap(),
            "--poll",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let mgmt = c.client(Some(&c.management_token()));
    let server = c.servers[0].base();
    let deadline = Instant::now() + Duration::from_secs(240);
    let run = loop {
        let r = mgmt
            .get(format!("{server}/api/v1/pipelines/web/runs/1"))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            let run: Value = r.json().await.unwrap();
            let state = run["status"]["state"].as_str().unwrap_or("").to_string();
            if !["queued", "building", "pushing", "deploying"].contains(&state.as_str()) {
                break run;
            }
        }
        assert!(Instant::now() < deadline, "run 1 never finished");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = mgmt
        .get(format!("{server}/api/v1/pipelines/web/runs/1/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(run["status"]["state"], "succeeded", "{run}\n{log}");
    let image = run["image"].as_str().unwrap().to_string();
    assert!(
        image.starts_with(&format!("127.0.0.1:{registry_port}/web:")),
        "{image}"
    );

    // The agent pulled it (with its node certificate) and runs it.
    let filter = format!("label={}={}", _containers.label, _containers.value);
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ids = docker(&["ps", "-q", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert!(!ids.is_empty(), "no container on the agent");
    let running = docker(&[&["inspect", "--format", "{{.Config.Image}}"], &ids[..]].concat());
    let repo_at = format!("127.0.0.1:{registry_port}/web@sha256:");
    assert!(
        running.lines().all(|l| l.starts_with(&repo_at)),
        "the agent runs something else than the pushed web image: {running:?}"
    );

    // The tag is in the registry (read over TLS with a pull token).
    let (puller, _) = c.create_token(&["registry:pull:web"]);
    let tags: Value = c
        .client(Some(&puller))
        .get(format!(
            "https://127.0.0.1:{registry_port}/v2/web/tags/list"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tag = image.rsplit(':').next().unwrap();
    assert!(
        tags["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == tag)),
        "{tags}"
    );
    // The digest the agent runs is the one the tag names.
    let r = c
        .client(Some(&puller))
        .head(format!(
            "https://127.0.0.1:{registry_port}/v2/web/manifests/{tag}"
        ))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        running.lines().all(|l| l.ends_with(&digest)),
        "tag {tag} is {digest}, the agent runs {running:?}"
    );

    // The push is audited, not under any operator token.
    let out = c.cli(
        0,
        Some(&c.management_token()),
        &["audit", "--since", "1h", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = String::from_utf8_lossy(&out.stdout).into_owned();
    // The manifest was put with the token the server made for this push (its subject is the
    // server), not with the CI token or any operator's.
    let manifest = format!("/v2/web/manifests/{tag}");
    let pushes: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["method"] == "PUT" && l["path"] == manifest.as_str())
        .collect();
    assert_eq!(
        pushes.len(),
        1,
        "no single audited push of {manifest}:\n{audit}"
    );
    assert_eq!(pushes[0]["status"], 201);
    assert_eq!(pushes[0]["who"], "token:node:server/s1", "{audit}");
    eprintln!("audited pushes: {pushes:?}");
}
