//! `[files]` (issue 15, item 2) against the real Docker engine: a `pier dev` on free ports
//! runs `web`, whose files are rendered from `{{ service "api" }}` and `{{ key "app/config" }}`
//! templates. The file inside web's container changes within 1 s of an `api` instance
//! becoming healthy (measured) and web is signalled; a KV change re-renders and restarts it
//! in place; a bad template is refused at deploy naming the file and the line.

mod orchestrator_common;

use std::time::{Duration, Instant};

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

const UPSTREAMS: &str = "/etc/app/upstreams.conf";
const CONFIG: &str = "/etc/app/config.txt";

/// The file in the container, or None while it cannot be read (a restart, say).
async fn read_in(container: &str, path: &str) -> Option<String> {
    let out = tokio::process::Command::new("docker")
        .args(["exec", container, "/bin/busybox", "cat", path])
        .output()
        .await
        .expect("docker exec");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn inspect(container: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn put_key(c: &Cluster, key: &str, value: &str) {
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/kv/{key}", c.addr()))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "PUT {key}: {}", resp.status());
}

/// web's only task once healthy: (task id, container id).
async fn web_task(c: &Cluster) -> Option<(String, String)> {
    let tasks = c.tasks("web").await;
    let live: Vec<_> = tasks
        .iter()
        .filter(|t| t["task"]["desired"] == "running")
        .collect();
    match live.as_slice() {
        [t] if t["display_state"] == "healthy" => Some((
            t["task"]["id"].as_str()?.to_string(),
            t["status"]["container_id"].as_str()?.to_string(),
        )),
        _ => None,
    }
}

fn web_file(image: &str, upstreams_template: &str) -> String {
    // sh as PID 1: counts SIGHUPs in /www/hups, exits on SIGTERM; httpd serves beside it.
    let script = "trap 'echo hup >> /www/hups' HUP; trap 'exit 0' TERM; /bin/busybox httpd -p 8080 -h /www; while true; do /bin/busybox sleep 0.1; done";
    format!(
        r#"name = "web"
image = "{image}"
port = 8080
command = ["/bin/busybox", "sh", "-c", "{script}"]
stop_timeout = "2s"

[health]
http = "/healthz"
interval = "1s"

[deploy]
min_healthy_time = "1s"
drain_delay = "500ms"

[files]
"{CONFIG}" = '{{{{ key "app/config" }}}}'

[files."{UPSTREAMS}"]
on_change = "signal:SIGHUP"
template = '''
{upstreams_template}'''
"#
    )
}

const GOOD: &str = "{{ range service \"api\" }}server {{ .Address }}:{{ .Port }}\n{{ else }}no api\n{{ end }}all={{ service \"api\" }}\n";

/// Waits (blocking queries) until `api` has a passing instance; returns when the test saw it
/// and the address a container on this node reaches it at (its pier network address).
async fn api_passing(c: &Cluster) -> (Instant, String) {
    let http = reqwest::Client::new();
    let mut index = 0u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let resp = http
            .get(format!(
                "{}/v1/health/service/api?passing&index={index}&wait=5s",
                c.addr()
            ))
            .send()
            .await
            .unwrap();
        index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let list: serde_json::Value = resp.json().await.unwrap();
        if let Some(first) = list.as_array().and_then(|a| a.first()) {
            let seen = Instant::now();
            let addr = first["Service"]["Meta"]["pier-network-addr"]
                .as_str()
                .expect("a local instance carries its pier network address")
                .to_string();
            return (seen, addr);
        }
    }
    panic!("api never had a passing instance");
}

/// Reads `path` in `container` as fast as docker exec allows until `done` holds; returns
/// when it did and the content.
async fn until_content(
    container: &str,
    path: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> (Instant, String) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(text) = read_in(container, path).await {
            if done(&text) {
                return (Instant::now(), text);
            }
            last = Some(text);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} in {container} never as expected; last: {last:?}");
}

#[tokio::test]
async fn files_follow_healthy_instances_within_a_second_and_key_changes_restart_the_task() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets_arg = secrets_dir.path().to_str().unwrap().to_string();
    let mut c = Cluster::start(true, &["--secrets-dir", &secrets_arg]).await;
    let web_image = c.push_image("files-web:v1", HttpdVariant::Healthy);
    let api_image = c.push_image("files-api:v1", HttpdVariant::Healthy);
    put_key(&c, "app/config", "color=blue").await;

    // A bad template is refused before anything changes, naming the file and its line.
    let bad = c.write_file(
        "bad.toml",
        &web_file(&web_image, "first line\n{{ range servce \"api\" }}\n"),
    );
    let out = c.pier(&["deploy", &bad]);
    assert!(!out.status.success(), "a bad template must be refused");
    let err = stderr(&out);
    assert!(
        err.contains(UPSTREAMS) && err.contains("template line 2") && err.contains("range"),
        "{err}"
    );
    assert_eq!(c.get("/api/v1/services").await, serde_json::json!([]));

    let file = c.write_file("web.toml", &web_file(&web_image, GOOD));
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "deploy web: {}", stderr(&out));
    eventually("web healthy", Duration::from_secs(90), || async {
        web_task(&c).await.is_some()
    })
    .await;
    let (task, container) = web_task(&c).await.expect("web's healthy task");
    assert_eq!(
        read_in(&container, UPSTREAMS).await.as_deref(),
        Some("no api\nall=\n")
    );
    assert_eq!(
        read_in(&container, CONFIG).await.as_deref(),
        Some("color=blue")
    );
    let mounts = inspect(
        &container,
        "{{range .Mounts}}{{.Destination}} {{.RW}} {{.Source}};{{end}}",
    );
    let expected_source = secrets_dir.path().join(format!("dev/{task}.files/0"));
    assert!(
        mounts.contains(&format!("/etc/app false {};", expected_source.display())),
        "one read-only host directory per file directory: {mounts}"
    );

    // api becomes healthy: web's file names it within 1 s, and web gets its SIGHUP.
    let started_before = inspect(&container, "{{.State.StartedAt}}");
    let api = c.write_file("api.toml", &service_file("api", &api_image, 1, ""));
    let out = c.pier(&["deploy", &api]);
    assert!(out.status.success(), "deploy api: {}", stderr(&out));
    let ((seen_healthy, addr), (seen_file, content)) = tokio::join!(
        api_passing(&c),
        until_content(&container, UPSTREAMS, Duration::from_secs(90), |t| t
            .starts_with("server "))
    );
    let latency = seen_file.saturating_duration_since(seen_healthy);
    println!("file changed {latency:?} after api was seen healthy");
    assert!(
        latency < Duration::from_secs(1),
        "the file changed {latency:?} after api became healthy"
    );
    assert_eq!(content, format!("server {addr}\nall={addr}\n"));
    eventually("web got SIGHUP", Duration::from_secs(5), || async {
        read_in(&container, "/www/hups")
            .await
            .is_some_and(|t| t.lines().count() >= 1)
    })
    .await;
    assert_eq!(
        inspect(&container, "{{.State.StartedAt}}"),
        started_before,
        "a signal, not a restart"
    );

    // A KV change re-renders within 1 s and, by default, restarts the container in place.
    // The render is timed on the mount's host side (the very file the container sees; an
    // exec cannot read it while the restart it causes is under way).
    let put_at = Instant::now();
    put_key(&c, "app/config", "color=green").await;
    let host_file = expected_source.join("config.txt");
    loop {
        if std::fs::read_to_string(&host_file).ok().as_deref() == Some("color=green") {
            break;
        }
        assert!(
            put_at.elapsed() < Duration::from_secs(10),
            "the key change was never rendered"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let latency = put_at.elapsed();
    println!("key change rendered after {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    eventually(
        "web restarted in place",
        Duration::from_secs(20),
        || async { inspect(&container, "{{.State.StartedAt}}") != started_before },
    )
    .await;
    eventually(
        "the same task healthy again after its restart",
        Duration::from_secs(30),
        || async { web_task(&c).await == Some((task.clone(), container.clone())) },
    )
    .await;
    assert_eq!(
        read_in(&container, CONFIG).await.as_deref(),
        Some("color=green")
    );

    // api gone: the file says so again.
    let api = c.write_file("api.toml", &service_file("api", &api_image, 0, ""));
    let out = c.pier(&["deploy", &api]);
    assert!(out.status.success(), "scale api to 0: {}", stderr(&out));
    until_content(&container, UPSTREAMS, Duration::from_secs(30), |t| {
        t == "no api\nall=\n"
    })
    .await;
}
