//! `env_file` of a service file (issue 15, item 2) against the real Docker engine: `pier
//! deploy` reads it beside the service file, `[env]` wins, and a bad line is refused before
//! anything is sent, naming the file and the line.

mod orchestrator_common;

use std::process::Command;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

#[tokio::test]
async fn deploy_reads_the_env_file_beside_the_service_file_and_env_wins() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("env-file:v1", HttpdVariant::Healthy);
    let service = format!(
        "name = \"cfg\"\nimage = \"{image}\"\nport = 8080\nenv_file = \"app.env\"\n\n[env]\nMODE = \"from-env-table\"\n\n[deploy]\nmin_healthy_time = \"500ms\"\n"
    );
    let dir = c.dir.path().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cfg.toml");
    std::fs::write(&file, &service).unwrap();
    let file = file.to_str().unwrap().to_string();

    // A bad line: refused with the file and the line; nothing deployed.
    std::fs::write(
        dir.join("app.env"),
        "# config\nLEVEL=debug\nthis is not a pair\n",
    )
    .unwrap();
    let out = c.pier(&["deploy", &file]);
    assert!(!out.status.success(), "a bad env file must be refused");
    let err = stderr(&out);
    assert!(err.contains("app.env") && err.contains("line 3"), "{err}");
    assert_eq!(c.get("/api/v1/services").await, serde_json::json!([]));

    std::fs::write(
        dir.join("app.env"),
        "# config\nLEVEL=debug\nMODE=from-env-file\nGREETING=\"hello world\"\n",
    )
    .unwrap();
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let tasks = c.tasks("cfg").await;
    let container = tasks
        .iter()
        .find(|t| t["display_state"] == "healthy")
        .and_then(|t| t["status"]["container_id"].as_str())
        .unwrap_or_else(|| panic!("no healthy task: {tasks:?}"))
        .to_string();
    let out = Command::new("docker")
        .args(["exec", &container, "/bin/busybox", "env"])
        .output()
        .expect("docker exec");
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in ["LEVEL=debug", "MODE=from-env-table", "GREETING=hello world"] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }

    // The same files again: unchanged; a changed env file: a new revision.
    let out = c.pier(&["deploy", &file]);
    assert!(stdout(&out).contains("unchanged"), "{}", stdout(&out));
    std::fs::write(dir.join("app.env"), "LEVEL=info\n").unwrap();
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("updated (revision 2)"),
        "{}",
        stdout(&out)
    );
    let spec = c.get("/api/v1/services/cfg/revisions/2").await;
    assert_eq!(spec["env_file"], "app.env");
}
