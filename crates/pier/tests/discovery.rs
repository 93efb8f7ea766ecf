//! Services find each other from inside their containers (issue 15, items 1 and 4), against
//! the real Docker engine: every test runs a `pier dev` on free ports with its own pier
//! network (bridge address, node gateway on :80, node DNS on :53), so tests run in parallel
//! and beside a running `pier dev`. Busybox-static's wget crashes on DNS lookups, so names
//! are resolved with `nslookup` and fetched with `nc` and a `Host` header.

mod orchestrator_common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;

/// A name only the test's upstream resolver knows, and its address.
const EXTERNAL_NAME: &str = "outside.pier-test.example";
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 7);

/// A tiny DNS resolver on 127.0.0.1 (UDP) standing in for the host's upstream: it answers
/// [`EXTERNAL_NAME`] and NXDOMAIN for everything else. On its own thread: the test's
/// runtime is blocked while `docker exec` runs.
fn test_upstream() -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if let Some(bytes) = upstream_answer(&buf[..n]) {
                let _ = sock.send_to(&bytes, peer);
            }
        }
    });
    addr
}

fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut resp = Message::response(query.metadata.id, OpCode::Query);
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = ResponseCode::NXDomain;
    if let Some(q) = query.queries.first() {
        resp.add_query(q.clone());
        let name = q.name().to_ascii().to_ascii_lowercase();
        if name.trim_end_matches('.') == EXTERNAL_NAME {
            resp.metadata.response_code = ResponseCode::NoError;
            if q.query_type() == RecordType::A {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    5,
                    RData::A(A(EXTERNAL_IP)),
                ));
            }
        }
    }
    resp.to_vec().ok()
}

/// The running container of `service`'s healthy task.
async fn container_of(c: &Cluster, service: &str) -> String {
    let tasks = c.tasks(service).await;
    let task = tasks
        .iter()
        .find(|t| t["display_state"] == "healthy")
        .unwrap_or_else(|| panic!("no healthy task of {service}: {tasks:?}"));
    task["status"]["container_id"]
        .as_str()
        .expect("a container id")
        .to_string()
}

fn exec(container: &str, argv: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(["exec", container])
        .args(argv)
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

/// The addresses an `nslookup` inside the container printed for `name`.
fn nslookup(container: &str, name: &str) -> Vec<String> {
    let (_, out) = exec(container, &["/bin/busybox", "nslookup", name]);
    let mut after_name = false;
    let mut addrs = Vec::new();
    for line in out.lines() {
        if line.starts_with("Name:") {
            after_name = true;
        } else if after_name {
            if let Some(a) = line.strip_prefix("Address:") {
                addrs.push(a.trim().to_string());
            }
        }
    }
    addrs
}

/// `GET /` with `Host: host` sent to `ip:port` from inside the container: the raw response.
fn http_get_in(container: &str, ip: &str, port: u16, host: &str) -> String {
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | /bin/busybox nc -w 3 {ip} {port}"
    );
    exec(container, &["/bin/busybox", "sh", "-c", &script]).1
}

fn env_of(container: &str) -> String {
    exec(container, &["/bin/busybox", "env"]).1
}

fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A service file with a port and no `[health]`: pier's implicit TCP check decides.
fn plain_service(name: &str, image: &str, extra_top: &str, extra_deploy: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"{image}\"\nport = 8080\n{extra_top}\n[deploy]\nmin_healthy_time = \"500ms\"\ndrain_delay = \"1s\"\n{extra_deploy}"
    )
}

#[tokio::test]
async fn tasks_reach_each_other_by_name_with_env_needs_and_a_forwarding_resolver() {
    let upstream = test_upstream();
    let upstream_arg = upstream.to_string();
    let mut c = Cluster::start(true, &["--dns-upstream", &upstream_arg]).await;
    let api_image = c.push_image("api:v1", HttpdVariant::Healthy);
    let web_image = c.push_image("web:v1", HttpdVariant::Healthy);

    // `web` needs `api`: deployed first, its task waits and says so.
    let web_file = c.write_file(
        "web.toml",
        &plain_service("web", &web_image, "needs = [\"api\"]", ""),
    );
    let web_deploy = Command::new(BIN)
        .args(["--addr", &c.addr(), "deploy", &web_file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pier deploy web");
    eventually("web waits for api", Duration::from_secs(30), || async {
        c.count_state("web", "waiting for api").await == 1
    })
    .await;
    let ps = stdout(&c.pier(&["service", "ps", "web"]));
    assert!(ps.contains("waiting for api"), "{ps}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.count_state("web", "waiting for api").await,
        1,
        "web must keep waiting while api does not exist: {:?}",
        c.tasks("web").await
    );

    let api_file = c.write_file("api.toml", &plain_service("api", &api_image, "", ""));
    let out = c.pier(&["deploy", &api_file]);
    assert!(out.status.success(), "deploy api: {}", stderr(&out));
    let web_done = tokio::task::spawn_blocking(move || web_deploy.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        web_done.status.success(),
        "web starts once api is healthy: {}{}",
        stdout(&web_done),
        stderr(&web_done)
    );

    let web = container_of(&c, "web").await;
    let api = container_of(&c, "api").await;
    let web_task = c.tasks("web").await[0]["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Environment.
    let env = env_of(&web);
    let bridge = env
        .lines()
        .find_map(|l| l.strip_prefix("PIER_DNS="))
        .unwrap_or_else(|| panic!("PIER_DNS missing: {env}"))
        .to_string();
    for want in [
        "PIER_SERVICE=web".to_string(),
        "PIER_REVISION=1".to_string(),
        format!("PIER_TASK={web_task}"),
        "PIER_NODE=dev".to_string(),
        "PIER_ZONE=local".to_string(),
        "API_URL=http://api.internal".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }
    assert_eq!(
        inspect(&web, "{{json .HostConfig.Dns}}"),
        format!("[\"{bridge}\"]"),
        "pier's DNS is the container's resolver"
    );

    // api.internal → the node gateway on the bridge address; through it, api's page.
    assert_eq!(nslookup(&web, "api.internal"), vec![bridge.clone()]);
    let page = http_get_in(&web, &bridge, 80, "api.internal");
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(
        page.contains("api:v1"),
        "api's page through api.internal: {page}"
    );

    // api.service.consul → the api container's address on the network, and it serves there.
    let api_ip = inspect(
        &api,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert_eq!(nslookup(&web, "api.service.consul"), vec![api_ip.clone()]);
    let (_, srv) = exec(
        &web,
        &[
            "/bin/busybox",
            "nslookup",
            "-type=SRV",
            "api.service.consul",
        ],
    );
    assert!(srv.contains(" 8080 "), "SRV with the container port: {srv}");
    assert!(http_get_in(&web, &api_ip, 8080, "api").contains("api:v1"));

    // Any other name goes to the upstream resolver.
    assert_eq!(
        nslookup(&web, EXTERNAL_NAME),
        vec![EXTERNAL_IP.to_string()],
        "forwarded to the test's upstream resolver"
    );
    assert!(nslookup(&web, "nope.internal").is_empty());

    // The node gateway and DNS listen on the bridge address only, never on a wildcard.
    let log = c.log("dev");
    assert!(
        log.contains(&format!("gateway serving listen={bridge}:80")),
        "{log}"
    );
    assert!(!log.contains("listen=0.0.0.0"), "{log}");

    // Hardening pier applies to every container.
    assert_eq!(
        inspect(&web, "{{json .HostConfig.SecurityOpt}}"),
        "[\"no-new-privileges\"]"
    );
    assert_eq!(inspect(&web, "{{.HostConfig.PidsLimit}}"), "2048");
    assert_eq!(inspect(&web, "{{.HostConfig.LogConfig.Type}}"), "json-file");
    assert_eq!(
        inspect(&web, "{{index .HostConfig.LogConfig.Config \"max-size\"}}"),
        "10m"
    );
}

#[tokio::test]
async fn a_port_nobody_listens_on_fails_the_deployment_and_rolls_back() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("quiet:v1", HttpdVariant::Healthy);
    let good = c.write_file("good.toml", &plain_service("quiet", &image, "", ""));
    let out = c.pier(&["deploy", &good]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Same image, but the process never listens on its port: no [health] is written, the
    // implicit TCP check on port 8080 never passes.
    let bad = c.write_file(
        "bad.toml",
        &plain_service(
            "quiet",
            &image,
            "command = [\"/bin/busybox\", \"sleep\", \"3600\"]",
            "healthy_deadline = \"15s\"\n",
        ),
    );
    let out = c.pier(&["deploy", &bad]);
    assert!(
        !out.status.success(),
        "a task that never listens was taken for healthy: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("rolled back"), "{err}");
    eventually(
        "back on revision 1 only",
        Duration::from_secs(30),
        || async {
            let p = c.passing("quiet").await;
            p.len() == 1 && p.iter().all(|(_, _, r)| r == "rev-1")
        },
    )
    .await;
    let inspect = stdout(&c.pier(&["service", "inspect", "quiet", "--json"]));
    assert!(
        inspect.contains("\"tcp\""),
        "the implicit check is shown: {inspect}"
    );
}

#[tokio::test]
async fn deploy_settings_harden_the_container() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("hard:v1", HttpdVariant::Healthy);
    let file = c.write_file(
        "hard.toml",
        &plain_service(
            "hard",
            &image,
            "",
            "user = \"65534:65534\"\nread_only_root = true\ncap_drop = [\"ALL\"]\n",
        ),
    );
    let out = c.pier(&["deploy", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&c, "hard").await;
    assert_eq!(inspect(&id, "{{.Config.User}}"), "65534:65534");
    assert_eq!(inspect(&id, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(inspect(&id, "{{json .HostConfig.CapDrop}}"), "[\"ALL\"]");
    let (ok, out) = exec(&id, &["/bin/busybox", "touch", "/www/x"]);
    assert!(!ok, "the root filesystem is read-only: {out}");
    let (_, out) = exec(&id, &["/bin/busybox", "id", "-u"]);
    assert_eq!(out.trim(), "65534");
}

#[tokio::test]
async fn rolling_update_of_api_under_calls_from_web_fails_no_call() {
    let mut c = Cluster::start(true, &[]).await;
    let api_v1 = c.push_image("api:v1", HttpdVariant::Healthy);
    let api_v2 = c.push_image("api:v2", HttpdVariant::Healthy);
    let web_image = c.push_image("web:v1", HttpdVariant::Healthy);
    let api = |image: &str| {
        plain_service("api", image, "count = 2", "")
            .replace("min_healthy_time = \"500ms\"", "min_healthy_time = \"1s\"")
    };
    let f1 = c.write_file("api1.toml", &api(&api_v1));
    let out = c.pier(&["deploy", &f1]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fw = c.write_file(
        "web.toml",
        &plain_service("web", &web_image, "needs = [\"api\"]", ""),
    );
    let out = c.pier(&["deploy", &fw]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web = container_of(&c, "web").await;
    let bridge = env_of(&web)
        .lines()
        .find_map(|l| l.strip_prefix("PIER_DNS="))
        .expect("PIER_DNS")
        .to_string();

    // Calls from web to http://api.internal/ until /www/stop exists, one line per call.
    let script = format!(
        "while [ ! -e /www/stop ]; do \
           r=$(printf 'GET / HTTP/1.0\\r\\nHost: api.internal\\r\\n\\r\\n' | /bin/busybox nc -w 5 {bridge} 80); \
           case \"$r\" in *' 200 '*api:v1*) echo v1;; *' 200 '*api:v2*) echo v2;; *) echo \"fail $r\" | /bin/busybox head -1;; esac; \
         done"
    );
    let caller = Command::new("docker")
        .args(["exec", &web, "/bin/busybox", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker exec the call loop");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let f2 = c.write_file("api2.toml", &api(&api_v2));
    let out = c.pier(&["deploy", &f2]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Keep calling a moment on the new revision alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, touched) = exec(&web, &["/bin/busybox", "touch", "/www/stop"]);
    assert!(ok, "{touched}");
    let done = tokio::task::spawn_blocking(move || caller.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines = stdout(&done);
    let count = |what: &str| lines.lines().filter(|l| l.starts_with(what)).count();
    let failures: Vec<&str> = lines.lines().filter(|l| l.starts_with("fail")).collect();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {failures:?}",
        failures.len(),
        lines.lines().count()
    );
    assert!(
        count("v1") > 0 && count("v2") > 0,
        "calls spanned the rollout: {lines}"
    );
    assert!(
        lines.lines().count() >= 50,
        "too few calls to tell: {lines}"
    );
    assert!(lines.lines().last() == Some("v2"), "ends on v2: {lines}");
}

#[tokio::test]
async fn a_standalone_agent_serves_names_to_its_tasks() {
    let mut c = Cluster::start(false, &[]).await;
    c.start_agent("node-a", "a");
    eventually("node-a registered", Duration::from_secs(20), || async {
        c.get("/api/v1/nodes")
            .await
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    let api_image = c.push_image("api:v1", HttpdVariant::Healthy);
    let web_image = c.push_image("web:v1", HttpdVariant::Healthy);
    for (name, image, top) in [
        ("api", &api_image, ""),
        ("web", &web_image, "needs = [\"api\"]"),
    ] {
        let f = c.write_file(
            &format!("{name}.toml"),
            &plain_service(name, image, top, ""),
        );
        let out = c.pier(&["deploy", &f]);
        assert!(out.status.success(), "deploy {name}: {}", stderr(&out));
    }
    let web = container_of(&c, "web").await;
    let env = env_of(&web);
    assert!(env.lines().any(|l| l == "PIER_NODE=node-a"), "{env}");
    assert!(env.lines().any(|l| l == "PIER_ZONE=a"), "{env}");
    let bridge = env
        .lines()
        .find_map(|l| l.strip_prefix("PIER_DNS="))
        .unwrap_or_else(|| panic!("PIER_DNS missing: {env}"))
        .to_string();
    assert_eq!(nslookup(&web, "api.internal"), vec![bridge.clone()]);
    assert_eq!(nslookup(&web, "api.service.consul").len(), 1);
    let page = http_get_in(&web, &bridge, 80, "api.internal");
    assert!(page.contains("api:v1"), "{page}");
}
