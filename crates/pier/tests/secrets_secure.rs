//! Secrets in a secure cluster (a real `pier server` with its CA and tokens, and a `pier
//! agent` joined with its certificate): values are sealed at rest (a snapshot of the store
//! holds no plaintext), only the node that runs a task reads its values, writes take a
//! management token, and the task still gets its value over mTLS.

mod security_common;

use std::time::{Duration, Instant};

use pier_testkit::docker::{docker, ImageGuard};
use pier_testkit::images::{build_httpd_image, HttpdVariant};
use security_common::*;
use serde_json::Value;

const VALUE: &str = "sealed-pw-Hq2Lm8Vx4Kc";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_reach_only_their_tasks_node() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 1, &[]).await;
    let mgmt = c.management_token();
    let server = c.servers[0].base();
    let value_file = tmp.path().join("value");
    std::fs::write(&value_file, VALUE).unwrap();
    let value_path = value_file.to_str().unwrap();

    // Writing takes management rights; a read token lists names only.
    let (read_token, _) = c.create_token(&["read"]);
    let out = c.cli(
        0,
        Some(&read_token),
        &["secret", "set", "db-password", "--from-file", value_path],
    );
    assert!(!out.status.success(), "a read token set a secret");
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let out = c.cli(
        0,
        Some(&mgmt),
        &["secret", "set", "db-password", "--from-file", value_path],
    );
    assert!(out.status.success(), "secret set: {}", stderr(&out));
    assert!(stdout(&out).contains(", sealed"), "{}", stdout(&out));
    let out = c.cli(0, Some(&read_token), &["secret", "ls", "--json"]);
    assert!(out.status.success(), "secret ls: {}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "db-password");
    assert_eq!(list[0]["sealed"], true);
    assert!(!stdout(&out).contains(VALUE));
    let out = c.cli(0, Some(&read_token), &["secret", "rm", "db-password"]);
    assert!(!out.status.success(), "a read token removed a secret");

    // At rest: the store's record holds no plaintext (nor its base64).
    let snap = tmp.path().join("cluster.snapshot");
    let out = c.cli(
        0,
        Some(&mgmt),
        &["snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(out.status.success(), "snapshot save: {}", stderr(&out));
    let records = pier_testkit::snapshot::stored_records(&snap, "orch.secrets");
    assert_eq!(records.len(), 1, "one stored secret");
    let stored = String::from_utf8_lossy(&records[0].1).into_owned();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
    assert!(
        stored.contains("\"sealed\":\"v1."),
        "sealed format: {stored}"
    );
    assert!(
        !stored.contains(VALUE) && !stored.contains(&b64),
        "{stored}"
    );

    // A task's values: its node's agent only, not even a management token.
    let agent_dir = tmp.path().join("agent-n1");
    let (_agent, _containers) = c.spawn_agent("n1", &agent_dir, None);
    wait_file(&agent_dir.join("tls/node.crt"), Duration::from_secs(30)).await;
    let as_n1 = c.node_client(&agent_dir);
    let r = as_n1
        .get(format!("{server}/api/v1/nodes/n2/tasks/t1/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another node's task secrets");
    let r = c
        .client(Some(&mgmt))
        .get(format!("{server}/api/v1/nodes/n1/tasks/t1/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a management token reads no values");
    let r = as_n1
        .get(format!("{server}/api/v1/nodes/n1/tasks/t1/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "its own node: allowed, but no such task");

    // A task on n1 gets the value (fetched by the agent with its certificate).
    let tag = format!("pier-test/secret-secure:{}", std::process::id());
    build_httpd_image(&tag, HttpdVariant::Healthy);
    let _image = ImageGuard::new(&tag);
    let file = tmp.path().join("web.toml");
    std::fs::write(
        &file,
        format!("name = \"web\"\nimage = \"{tag}\"\nport = 8080\nsecret_files = [\"db-password\"]\n\n[secrets]\nDB_PASSWORD = \"db-password\"\n\n[deploy]\nmin_healthy_time = \"500ms\"\n"),
    )
    .unwrap();
    // A deploy-scoped token could read any secret through its own container: it may not give
    // a service a new one.
    let (deploy_token, _) = c.create_token(&["deploy:web"]);
    let out = c.cli(0, Some(&deploy_token), &["deploy", file.to_str().unwrap()]);
    assert!(!out.status.success(), "a deploy token added a secret");
    assert!(
        stderr(&out).contains("management token") && stderr(&out).contains("403"),
        "{}",
        stderr(&out)
    );
    let out = c.cli(0, Some(&mgmt), &["deploy", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // Keeping the secrets the service has is fine.
    let out = c.cli(
        0,
        Some(&deploy_token),
        &["deploy", "--detach", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "redeploy: {}", stderr(&out));
    let admin = c.client(Some(&mgmt));
    let deadline = Instant::now() + Duration::from_secs(30);
    let container = loop {
        let tasks: Value = admin
            .get(format!("{server}/api/v1/services/web/tasks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let running = tasks.as_array().and_then(|a| {
            a.iter()
                .find(|t| t["display_state"] == "healthy")
                .and_then(|t| t["status"]["container_id"].as_str().map(str::to_string))
        });
        if let Some(id) = running {
            break id;
        }
        assert!(Instant::now() < deadline, "web never healthy: {tasks}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        docker(&[
            "exec",
            &container,
            "/bin/busybox",
            "cat",
            "/run/secrets/db-password"
        ]),
        VALUE
    );
    let env = docker(&["exec", &container, "/bin/busybox", "env"]);
    assert!(
        env.lines().any(|l| l == format!("DB_PASSWORD={VALUE}")),
        "{env}"
    );
    // The files are under the agent's secrets directory, per node and task, and go with the
    // task.
    let tasks: Value = admin
        .get(format!("{server}/api/v1/services/web/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = tasks[0]["task"]["id"]
        .as_str()
        .expect("a task id")
        .to_string();
    let dir = pier_agent::secrets::default_dir().join("n1").join(&task);
    assert!(dir.join("db-password").exists(), "{}", dir.display());
    let out = c.cli(0, Some(&mgmt), &["service", "rm", "web"]);
    assert!(out.status.success(), "service rm: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} left behind", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(tmp.path().join("s1.log")).unwrap_or_default();
    assert!(
        !log.is_empty() && !log.contains(VALUE),
        "the value in the server's log"
    );
    let log = std::fs::read_to_string(tmp.path().join("agent-n1.log")).unwrap_or_default();
    assert!(
        !log.is_empty() && !log.contains(VALUE),
        "the value in the agent's log"
    );
}
