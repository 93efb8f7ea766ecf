//! Secrets (issue 15, item 2) against the real Docker engine: a `pier dev` on free ports runs
//! a service that gets a secret as an environment variable and as a file; the value is in the
//! container and nowhere else a user can look (every API answer, the CLI, the task's logs,
//! pier's own log), and a new value rolls the service.

mod orchestrator_common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

const V1: &str = "pw-v1-Zq8xK3mN7rT2";
const V2: &str = "pw-v2-Wd4hJ9sL1pB6";

fn pier_with_stdin(c: &Cluster, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(c.addr())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pier");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("pier exits")
}

fn exec(container: &str, argv: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["exec", container])
        .args(argv)
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "docker exec {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The healthy task of `service` at `revision`: (task id, container id).
async fn healthy_task(c: &Cluster, service: &str, revision: u64) -> Option<(String, String)> {
    c.tasks(service).await.iter().find_map(|t| {
        (t["display_state"] == "healthy" && t["task"]["revision"] == revision).then(|| {
            (
                t["task"]["id"].as_str().unwrap_or_default().to_string(),
                t["status"]["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
    })
}

fn web_file(image: &str) -> String {
    format!(
        "name = \"web\"\nimage = \"{image}\"\nport = 8080\nsecret_files = [\"db-password\"]\n\n[secrets]\nDB_PASSWORD = \"db-password\"\n\n[health]\nhttp = \"/healthz\"\ninterval = \"1s\"\n\n[deploy]\nmin_healthy_time = \"1s\"\ndrain_delay = \"500ms\"\n"
    )
}

/// Every answer a user can read about the service and the secret, as text.
async fn everything_shown(c: &Cluster, deployment: &str) -> String {
    let mut all = String::new();
    for path in [
        "/api/v1/services".to_string(),
        "/api/v1/services/web".to_string(),
        "/api/v1/services/web/tasks".to_string(),
        "/api/v1/services/web/revisions/1".to_string(),
        "/api/v1/services/web/revisions/2".to_string(),
        "/api/v1/secrets".to_string(),
        "/api/v1/nodes".to_string(),
        format!("/api/v1/deployments/{deployment}"),
        "/v1/catalog/service/web".to_string(),
        "/v1/health/service/web".to_string(),
    ] {
        let resp = reqwest::get(format!("{}{path}", c.addr())).await.unwrap();
        all.push_str(&resp.text().await.unwrap());
    }
    for args in [
        &["service", "inspect", "web"][..],
        &["service", "inspect", "web", "--json"],
        &["service", "ps", "web"],
        &["secret", "ls"],
        &["secret", "ls", "--json"],
        &["logs", "web"],
    ] {
        let out = c.pier(args);
        assert!(out.status.success(), "pier {args:?}: {}", stderr(&out));
        all.push_str(&stdout(&out));
        all.push_str(&stderr(&out));
    }
    all
}

#[tokio::test]
async fn a_secret_reaches_its_tasks_as_env_and_file_only_and_a_new_value_rolls_the_service() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets_arg = secrets_dir.path().to_str().unwrap().to_string();
    // Secret files left by a task whose container is gone (removed while its agent was
    // down): the agent sweeps them.
    let stale = secrets_dir.path().join("dev/web-9-0dd0dead");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("db-password"), "stale").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "5 minutes ago"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(touched.success());
    let mut c = Cluster::start(true, &["--secrets-dir", &secrets_arg]).await;
    let image = c.push_image("secret-web:v1", HttpdVariant::Healthy);
    eventually(
        "stale secret files swept",
        Duration::from_secs(30),
        || async { !stale.exists() },
    )
    .await;
    let file = c.write_file("web.toml", &web_file(&image));

    // A service naming a secret that does not exist is refused before anything changes.
    let out = c.pier(&["deploy", &file]);
    assert!(!out.status.success(), "deploy without the secret must fail");
    assert!(
        stderr(&out).contains("db-password") && stderr(&out).contains("do not exist"),
        "{}",
        stderr(&out)
    );
    assert_eq!(c.get("/api/v1/services").await, serde_json::json!([]));

    // Bad names and sizes are refused with clear errors.
    let out = pier_with_stdin(&c, &["secret", "set", "DB_Password"], b"x");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("a-z, 0-9"), "{}", stderr(&out));
    let big = c.write_file("big", &"x".repeat(64 * 1024 + 1));
    let out = c.pier(&["secret", "set", "big", "--from-file", &big]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("64 KiB"), "{}", stderr(&out));
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/secrets/big", c.addr()))
        .json(&serde_json::json!({ "value_base64": "eA==".repeat(20_000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "the server checks the size too");

    let out = pier_with_stdin(&c, &["secret", "set", "db-password"], V1.as_bytes());
    assert!(out.status.success(), "secret set: {}", stderr(&out));
    assert!(
        stdout(&out).contains("created (version 1"),
        "{}",
        stdout(&out)
    );
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let (task1, container1) = healthy_task(&c, "web", 1)
        .await
        .expect("a healthy task of revision 1");

    // In the container: the variable, and the file read-only with mode 0400.
    let env = exec(&container1, &["/bin/busybox", "env"]);
    assert!(
        env.lines().any(|l| l == format!("DB_PASSWORD={V1}")),
        "{env}"
    );
    let content = exec(
        &container1,
        &["/bin/busybox", "cat", "/run/secrets/db-password"],
    );
    assert_eq!(content, V1);
    let mode = exec(
        &container1,
        &[
            "/bin/busybox",
            "stat",
            "-c",
            "%a",
            "/run/secrets/db-password",
        ],
    );
    assert_eq!(mode.trim(), "400");
    let mounts = docker_inspect(
        &container1,
        "{{range .Mounts}}{{.Destination}} {{.RW}} {{.Source}};{{end}}",
    );
    assert!(mounts.contains("/run/secrets false "), "{mounts}");
    let source = mounts
        .split(';')
        .find_map(|m| m.strip_prefix("/run/secrets false "))
        .expect("the secrets mount's host side")
        .to_string();
    assert_eq!(
        std::path::Path::new(&source),
        secrets_dir.path().join("dev").join(&task1),
        "one directory per task under --secrets-dir/<node>"
    );

    // The listing: name, version, size, users; never the value.
    let list = c.get("/api/v1/secrets").await;
    assert_eq!(list[0]["name"], "db-password");
    assert_eq!(list[0]["version"], 1);
    assert_eq!(list[0]["size_bytes"], V1.len());
    assert_eq!(list[0]["used_by"], serde_json::json!(["web"]));
    let out = c.pier(&["secret", "rm", "db-password"]);
    assert!(!out.status.success(), "a secret in use cannot be removed");
    assert!(stderr(&out).contains("used by web"), "{}", stderr(&out));

    // A new value rolls the service: the new task sees it, the old one is gone with its files.
    let out = pier_with_stdin(&c, &["secret", "set", "db-password"], V2.as_bytes());
    assert!(out.status.success(), "secret set: {}", stderr(&out));
    assert!(
        stdout(&out).contains("updated (version 2")
            && stdout(&out).contains("rolling service web to revision 2"),
        "{}",
        stdout(&out)
    );
    let detail = c.get("/api/v1/services/web").await;
    let deployment = detail["service"]["deployment"]
        .as_str()
        .expect("a deployment")
        .to_string();
    eventually(
        "revision 2 healthy, revision 1 gone",
        Duration::from_secs(60),
        || async {
            let tasks = c.tasks("web").await;
            healthy_task(&c, "web", 2).await.is_some()
                && tasks
                    .iter()
                    .all(|t| t["task"]["revision"] == 2 || t["display_state"] == "stopped")
        },
    )
    .await;
    let (_, container2) = healthy_task(&c, "web", 2).await.expect("revision 2");
    let env = exec(&container2, &["/bin/busybox", "env"]);
    assert!(
        env.lines().any(|l| l == format!("DB_PASSWORD={V2}")),
        "{env}"
    );
    assert_eq!(
        exec(
            &container2,
            &["/bin/busybox", "cat", "/run/secrets/db-password"]
        ),
        V2
    );
    eventually(
        "the old task's secret files removed",
        Duration::from_secs(20),
        || async { !std::path::Path::new(&source).exists() },
    )
    .await;
    let detail = c.get("/api/v1/services/web").await;
    assert_eq!(detail["spec"]["secret_versions"]["db-password"], 2);
    assert_eq!(detail["spec"]["secrets"]["DB_PASSWORD"], "db-password");

    // Nowhere else: no API answer, no CLI output, no log.
    let shown = everything_shown(&c, &deployment).await;
    assert!(shown.contains("db-password"), "names are shown: {shown}");
    for value in [V1, V2] {
        assert!(!shown.contains(value), "{value} leaked: {shown}");
        let log = c.log("dev");
        assert!(!log.is_empty(), "pier's log is read");
        assert!(!log.contains(value), "{value} in pier's log");
    }

    // Setting the same value again changes nothing.
    let out = pier_with_stdin(&c, &["secret", "set", "db-password"], V2.as_bytes());
    assert!(
        stdout(&out).contains("unchanged (version 2"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("rolling"), "{}", stdout(&out));

    // Removing the service removes its task's secret files; then the secret can go.
    let (task2, _) = healthy_task(&c, "web", 2).await.expect("revision 2");
    let dir2 = secrets_dir.path().join("dev").join(&task2);
    assert!(dir2.exists(), "{}", dir2.display());
    let out = c.pier(&["service", "rm", "web"]);
    assert!(out.status.success(), "service rm: {}", stderr(&out));
    eventually(
        "the task's secret files removed with it",
        Duration::from_secs(30),
        || async { !dir2.exists() },
    )
    .await;
    let out = c.pier(&["secret", "rm", "db-password"]);
    assert!(out.status.success(), "secret rm: {}", stderr(&out));
    assert_eq!(c.get("/api/v1/secrets").await, serde_json::json!([]));
}
