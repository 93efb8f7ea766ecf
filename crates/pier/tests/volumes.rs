//! Volumes (issue 15, item 3) against the real Docker engine: a named volume keeps its data
//! across a container kill and a rollout and pins its service to the node holding it; a host
//! path is mounted only below an agent's `--volume-root` (refused up front otherwise); tmpfs.

mod orchestrator_common;

use std::process::Command;
use std::time::Duration;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

/// Removes the test's named volumes when dropped (declared before the cluster, so it runs
/// after the cluster's containers are gone), also when the test fails.
struct VolumeGuard(Vec<String>);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

fn exec_sh(container: &str, script: &str) -> (bool, String) {
    let out = Command::new("docker")
        .args(["exec", container, "/bin/busybox", "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The healthy task of `service` other than `not`: (task id, container id, node).
async fn healthy(
    c: &Cluster,
    service: &str,
    not: Option<&str>,
) -> Option<(String, String, String)> {
    c.tasks(service).await.iter().find_map(|t| {
        let container = t["status"]["container_id"].as_str()?.to_string();
        (t["display_state"] == "healthy" && Some(container.as_str()) != not).then(|| {
            (
                t["task"]["id"].as_str().unwrap_or_default().to_string(),
                container,
                t["task"]["node"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

fn store_file(image: &str, volume: &str, root: &str, env: &str) -> String {
    format!(
        "name = \"store\"\nimage = \"{image}\"\nport = 8080\n\n[[volumes]]\nname = \"{volume}\"\ntarget = \"/data\"\n\n[[volumes]]\ntmpfs = true\ntarget = \"/scratch\"\nsize = \"16MiB\"\n\n[[volumes]]\nsource = \"{root}/shared\"\ntarget = \"/shared\"\nread_only = true\n\n[env]\nVERSION = \"{env}\"\n\n[deploy]\nmin_healthy_time = \"500ms\"\ndrain_delay = \"500ms\"\n"
    )
}

#[tokio::test]
async fn a_named_volume_survives_a_kill_and_a_rollout_host_paths_and_tmpfs_are_mounted() {
    let volume = format!("data-{}", std::process::id());
    let _volumes = VolumeGuard(vec![format!("pier-dev-{volume}")]);
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().to_str().unwrap().to_string();
    std::fs::create_dir_all(root_dir.path().join("shared")).unwrap();
    std::fs::write(root_dir.path().join("shared/host.txt"), "from the host").unwrap();
    let mut c = Cluster::start(true, &["--volume-root", &root]).await;
    let image = c.push_image("store:v1", HttpdVariant::Healthy);

    // A host path outside the allowed root: refused before anything changes.
    let bad = store_file(&image, &volume, "/etc", "1");
    let out = c.pier(&["deploy", &c.write_file("bad.toml", &bad)]);
    assert!(
        !out.status.success(),
        "a host path outside --volume-root was accepted"
    );
    assert!(
        stderr(&out).contains("/etc/shared") && stderr(&out).contains("--volume-root"),
        "{}",
        stderr(&out)
    );
    assert_eq!(c.get("/api/v1/services").await, serde_json::json!([]));

    let file = c.write_file("store.toml", &store_file(&image, &volume, &root, "1"));
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let (_, first, _) = healthy(&c, "store", None).await.expect("a healthy task");
    let (ok, out) = exec_sh(&first, "echo kept-1 > /data/note && cat /shared/host.txt");
    assert!(ok && out.contains("from the host"), "{out}");
    let (ok, _) = exec_sh(&first, "echo x > /shared/new");
    assert!(!ok, "the host path is mounted read-only");
    let (ok, out) = exec_sh(
        &first,
        "echo x > /scratch/t && /bin/busybox grep ' /scratch ' /proc/mounts",
    );
    assert!(
        ok && out.contains("tmpfs") && out.contains("size=16384k"),
        "{out}"
    );

    // The container is killed: its replacement sees the same data.
    let out = Command::new("docker")
        .args(["kill", &first])
        .output()
        .unwrap();
    assert!(out.status.success());
    eventually(
        "a replacement after the kill",
        Duration::from_secs(60),
        || async { healthy(&c, "store", Some(&first)).await.is_some() },
    )
    .await;
    let (_, second, _) = healthy(&c, "store", Some(&first))
        .await
        .expect("replacement");
    let (ok, out) = exec_sh(&second, "cat /data/note && echo kept-2 >> /data/note");
    assert!(ok && out.trim() == "kept-1", "{out}");

    // A rollout (new revision): the new task sees it too.
    let file = c.write_file("store.toml", &store_file(&image, &volume, &root, "2"));
    let out = c.pier(&["deploy", &file]);
    assert!(
        out.status.success(),
        "deploy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("revision 2"), "{}", stdout(&out));
    let tasks = c.tasks("store").await;
    let third = tasks
        .iter()
        .find(|t| t["display_state"] == "healthy" && t["task"]["revision"] == 2)
        .and_then(|t| t["status"]["container_id"].as_str())
        .unwrap_or_else(|| panic!("no healthy task of revision 2: {tasks:?}"))
        .to_string();
    let (ok, out) = exec_sh(&third, "cat /data/note");
    assert!(ok && out == "kept-1\nkept-2\n", "{out:?}");
    let (_, out) = exec_sh(&third, "/bin/busybox ls /scratch");
    assert!(out.trim().is_empty(), "a tmpfs starts empty: {out}");

    let inspect = stdout(&c.pier(&["service", "inspect", "store"]));
    assert!(
        inspect.contains(&format!("/data <- named volume {volume}"))
            && inspect.contains("/scratch <- tmpfs (16 MiB)"),
        "{inspect}"
    );

    // Listed with its node and user; not removable while mounted; removable once unused.
    let out = c.pier(&["volume", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == volume.as_str()))
        .unwrap_or_else(|| panic!("{volume} not listed: {list}"));
    assert_eq!(entry["node"], "dev");
    assert_eq!(entry["used_by"], serde_json::json!(["store"]));
    let out = c.pier(&["volume", "rm", &volume]);
    assert!(!out.status.success(), "a mounted volume was removed");
    assert!(
        stderr(&out).contains("mounted by store"),
        "{}",
        stderr(&out)
    );
    let out = c.pier(&["service", "rm", "store"]);
    assert!(out.status.success(), "service rm: {}", stderr(&out));
    eventually(
        "the volume removed once unused",
        Duration::from_secs(60),
        || async { c.pier(&["volume", "rm", &volume]).status.success() },
    )
    .await;
    let out = Command::new("docker")
        .args(["volume", "inspect", &format!("pier-dev-{volume}")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the engine still has the volume");
}

#[tokio::test]
async fn a_named_volume_pins_its_service_to_the_node_holding_it() {
    let volume = format!("pinned-{}", std::process::id());
    let _volumes = VolumeGuard(vec![
        format!("pier-node-a-{volume}"),
        format!("pier-node-b-{volume}"),
    ]);
    let mut c = Cluster::start_two_zones(&[]).await;
    let image = c.push_image("pinned:v1", HttpdVariant::Healthy);
    // No agent allows host paths: refused up front.
    let host = format!(
        "name = \"hosty\"\nimage = \"{image}\"\nport = 8080\n[[volumes]]\nsource = \"/srv/data\"\ntarget = \"/data\"\n"
    );
    let out = c.pier(&["deploy", &c.write_file("hosty.toml", &host)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no node allows host paths"),
        "{}",
        stderr(&out)
    );

    let file = |n: u32| {
        format!(
            "name = \"pinned\"\nimage = \"{image}\"\nport = 8080\n[[volumes]]\nname = \"{volume}\"\ntarget = \"/data\"\n[env]\nN = \"{n}\"\n[deploy]\nmin_healthy_time = \"300ms\"\ndrain_delay = \"300ms\"\n"
        )
    };
    let out = c.pier(&["deploy", &c.write_file("p.toml", &file(1))]);
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let (_, _, node) = healthy(&c, "pinned", None).await.expect("healthy");
    eventually(
        "the agent reports its volume",
        Duration::from_secs(20),
        || async {
            let nodes = c.get("/api/v1/nodes").await;
            nodes.as_array().is_some_and(|l| {
                l.iter().any(|n| {
                    n["name"] == node.as_str()
                        && n["volumes"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == volume.as_str()))
                })
            })
        },
    )
    .await;
    // Spread would put a surge task on the other node; the volume keeps every one here.
    for n in 2..=3 {
        let out = c.pier(&["deploy", &c.write_file("p.toml", &file(n))]);
        assert!(out.status.success(), "deploy {n}: {}", stderr(&out));
        for t in c.tasks("pinned").await {
            assert_eq!(
                t["task"]["node"],
                node.as_str(),
                "task off its volume's node: {t}"
            );
        }
    }
}
