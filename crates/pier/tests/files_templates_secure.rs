//! `[files]` in a secure cluster (a real `pier server` with its CA and tokens, and a `pier
//! agent` joined with its certificate): the agent reads the keys its tasks' templates name
//! with its certificate (read only, never write), and giving a service a template that reads
//! a key takes a token that may read that key.

mod security_common;

use std::time::{Duration, Instant};

use pier_testkit::docker::{docker, ImageGuard};
use pier_testkit::images::{build_httpd_image, HttpdVariant};
use security_common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_read_template_keys_with_their_certificate_and_deployers_need_read_access() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 1, &[]).await;
    let mgmt = c.management_token();
    let server = c.servers[0].base();
    let admin = c.client(Some(&mgmt));
    let put = |value: &'static str| {
        admin
            .put(format!("{server}/v1/kv/app/config"))
            .body(value)
            .send()
    };
    assert!(put("color=blue").await.unwrap().status().is_success());

    // The agent's certificate reads keys, and writes none.
    let agent_dir = tmp.path().join("agent-n1");
    let (_agent, _containers) = c.spawn_agent("n1", &agent_dir, None);
    wait_file(&agent_dir.join("tls/node.crt"), Duration::from_secs(30)).await;
    let as_n1 = c.node_client(&agent_dir);
    let r = as_n1
        .get(format!("{server}/v1/kv/app/config?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "color=blue");
    let r = as_n1
        .put(format!("{server}/v1/kv/app/config"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an agent wrote a key");

    let tag = format!("pier-test/files-secure:{}", std::process::id());
    build_httpd_image(&tag, HttpdVariant::Healthy);
    let _image = ImageGuard::new(&tag);
    let file = tmp.path().join("web.toml");
    std::fs::write(
        &file,
        format!("name = \"web\"\nimage = \"{tag}\"\nport = 8080\n\n[deploy]\nmin_healthy_time = \"500ms\"\n\n[files]\n\"/etc/app/config.txt\" = '{{{{ key \"app/config\" }}}}'\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    // A token that may deploy web but not read the key may not give web a template reading it.
    let (deploy_only, _) = c.create_token(&["deploy:web"]);
    let out = c.cli(0, Some(&deploy_only), &["deploy", file]);
    assert!(
        !out.status.success(),
        "a template read a key its deployer may not read"
    );
    assert!(
        stderr(&out).contains("403") && stderr(&out).contains("app/config"),
        "{}",
        stderr(&out)
    );
    let (deploy_and_read, _) = c.create_token(&["deploy:web", "kv:read:app/"]);
    let out = c.cli(0, Some(&deploy_and_read), &["deploy", "--detach", file]);
    assert!(out.status.success(), "deploy: {}", stderr(&out));

    let deadline = Instant::now() + Duration::from_secs(60);
    let container = loop {
        let tasks: Value = admin
            .get(format!("{server}/api/v1/services/web/tasks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let healthy = tasks.as_array().and_then(|a| {
            a.iter()
                .find(|t| t["display_state"] == "healthy")
                .and_then(|t| t["status"]["container_id"].as_str().map(str::to_string))
        });
        if let Some(id) = healthy {
            break id;
        }
        assert!(Instant::now() < deadline, "web never healthy: {tasks}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let read = || {
        docker(&[
            "exec",
            &container,
            "/bin/busybox",
            "cat",
            "/etc/app/config.txt",
        ])
    };
    assert_eq!(read(), "color=blue");

    // A change reaches the file over the agent's mTLS blocking query (then the task restarts).
    assert!(put("color=green").await.unwrap().status().is_success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::process::Command::new("docker")
            .args([
                "exec",
                &container,
                "/bin/busybox",
                "cat",
                "/etc/app/config.txt",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&now.stdout) == "color=green" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the key change never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = c.cli(0, Some(&mgmt), &["service", "rm", "web"]);
    assert!(out.status.success(), "service rm: {}", stderr(&out));
}
