//! Route ownership and check limits through a real `pier dev`: a host belongs to the first
//! service that claims it (a Consul registration or a `pier deploy` of another service naming
//! it gets 409, the gateway keeps routing it to its owner, the claim is released when the
//! owner is gone), and checks registered on the server may reach loopback in `pier dev` but
//! never the link-local metadata address.

mod orchestrator_common;

use std::time::Duration;

use orchestrator_common::*;
use pier_testkit::images::HttpdVariant;
use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::json;

const HOST: &str = "shop.example.com";

async fn consul_register(c: &Cluster, body: serde_json::Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .put(format!("{}/v1/agent/service/register", c.addr()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Whether the gateway routes HOST to web, over HTTP and over HTTPS (a provided certificate).
async fn gateway_says_web(gws: &[GatewayClient]) -> bool {
    for gw in gws {
        if !matches!(gw.get(HOST, "/").await, Some((200, body)) if body.contains("web:v1")) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_belongs_to_its_first_service_until_it_is_gone() {
    let mut c = Cluster::start(true, &[]).await;
    let image = c.push_image("web:v1", HttpdVariant::Healthy);
    c.provide_cert(HOST);
    let gws = c.gateway_clients();
    let gw = &gws;
    let web = format!("route = \"{HOST}\"\n{}", service_file("web", &image, 1, ""));
    let file = c.write_file("web.toml", &web);
    let out = c.pier(&["deploy", "--detach", &file]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    eventually("web routed at its host", Duration::from_secs(60), || {
        gateway_says_web(gw)
    })
    .await;
    let (_, web_port, _) = c.passing("web").await[0].clone();

    // A Consul service claiming the host by a route tag (any case, any port) or another
    // service's default host: 409 naming the owner.
    for (id, extra) in [
        ("evil-1", json!({"Tags": [format!("urlprefix-{HOST}")]})),
        (
            "evil-2",
            json!({"Tags": ["urlprefix-SHOP.Example.com:8080"]}),
        ),
        ("evil-4", json!({"Tags": ["urlprefix-web.localhost"]})),
    ] {
        let mut body = json!({"ID": id, "Name": "evil", "Address": "127.0.0.1", "Port": web_port});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, text) = consul_register(&c, body).await;
        assert_eq!(status, 409, "{id}: {text}");
        assert!(
            text.contains("web"),
            "{id}: the error names the owner: {text}"
        );
    }
    let evil: serde_json::Value = c.get("/v1/catalog/service/evil").await;
    assert_eq!(evil, json!([]), "nothing of evil was registered");

    // A pier deploy of another service whose route names the host: refused, 409.
    let other = format!(
        "route = \"{HOST}\"\n{}",
        service_file("other", &image, 1, "")
    );
    let file = c.write_file("other.toml", &other);
    let out = c.pier(&["deploy", "--detach", &file]);
    assert!(
        !out.status.success(),
        "deploy of other succeeded: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("belongs to service \"web\""),
        "{}",
        stderr(&out)
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/services", c.addr()))
        .json(&json!({ "file": other }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap_or_default());
    let services = c.get("/api/v1/services").await;
    assert!(
        !services.to_string().contains("\"other\""),
        "other was created: {services}"
    );

    // The owner keeps its route.
    for _ in 0..10 {
        assert!(gateway_says_web(gw).await, "the gateway lost web's host");
    }

    // The owner gone (service removed, no instance left): the claim is released.
    let out = c.pier(&["service", "rm", "web"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let body = json!({"ID": "new-1", "Name": "newshop", "Address": "127.0.0.1", "Port": web_port,
        "Tags": [format!("urlprefix-{HOST}")]});
    let mut last = (0, String::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        last = consul_register(&c, body.clone()).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(last.0, 200, "the host was never released: {}", last.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_checks_reach_loopback_but_not_the_metadata_address() {
    let c = Cluster::start(false, &[]).await;
    let (status, text) = consul_register(
        &c,
        json!({"ID": "meta-1", "Name": "meta",
            "Check": {"HTTP": "http://169.254.169.254/latest/meta-data/", "Interval": "1s"}}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("--check-allow"), "{text}");
    let (status, text) = consul_register(
        &c,
        json!({"ID": "self-1", "Name": "selfcheck",
            "Check": {"HTTP": format!("{}/v1/status/leader", c.addr()), "Interval": "500ms"}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    eventually(
        "the loopback check passes",
        Duration::from_secs(20),
        || async {
            let checks = c.get("/v1/agent/checks").await;
            checks["service:self-1"]["Status"] == "passing"
        },
    )
    .await;
}

/// A one-server `pier server --insecure` on free loopback ports with `extra` flags; its API
/// address once it answers.
async fn server(dir: &std::path::Path, name: &str, extra: &[&str]) -> (PierProcess, String) {
    let (http, raft) = (free_port(), free_port());
    let data = dir.join(name);
    let data = data.to_string_lossy().into_owned();
    let (http_s, raft_s) = (http.to_string(), raft.to_string());
    let mut args = vec![
        "server",
        "--insecure",
        "--data-dir",
        &data,
        "--node-name",
        name,
        "--http-port",
        &http_s,
        "--raft-port",
        &raft_s,
    ];
    args.extend_from_slice(extra);
    let proc = PierProcess::spawn(BIN, name, &args, dir);
    let base = format!("http://127.0.0.1:{http}");
    wait_http_ok(&format!("{base}/v1/status/leader"), Duration::from_secs(30)).await;
    (proc, base)
}

async fn register_check(base: &str, id: &str, check: serde_json::Value) -> (u16, String) {
    let body = json!({"ID": id, "Name": id, "Check": check});
    // The server's agent node registers itself shortly after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::Client::new()
            .put(format!("{base}/v1/agent/service/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let out = (r.status().as_u16(), r.text().await.unwrap_or_default());
        if out.0 != 404 && out.0 != 503 || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_checks_reach_only_check_allow_networks() {
    let dir = tempfile::tempdir().unwrap();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();

    // Default: private ranges only; loopback (the server's own API) and metadata refused.
    let (mut plain, base) = server(dir.path(), "s-default", &[]).await;
    for (id, check) in [
        (
            "meta",
            json!({"HTTP": "http://169.254.169.254/", "Interval": "1s"}),
        ),
        (
            "own-api",
            json!({"HTTP": format!("{base}/v1/agent/self"), "Interval": "1s"}),
        ),
        (
            "tcp-local",
            json!({"TCP": format!("localhost:{port}"), "Interval": "1s"}),
        ),
    ] {
        let (status, text) = register_check(&base, id, check).await;
        assert_eq!(status, 400, "{id}: {text}");
        assert!(text.contains("--check-allow"), "{id}: {text}");
    }
    let (status, text) = register_check(
        &base,
        "private",
        json!({"TCP": "10.255.255.1:80", "Interval": "10s"}),
    )
    .await;
    assert_eq!(
        status, 200,
        "a private address is allowed by default: {text}"
    );
    plain.signal_and_wait("TERM", Duration::from_secs(10));

    // `--check-allow 127.0.0.0/8`: exactly that network; the check runs and passes.
    let (mut open, base) = server(dir.path(), "s-allow", &["--check-allow", "127.0.0.0/8"]).await;
    let (status, text) = register_check(
        &base,
        "local",
        json!({"TCP": format!("127.0.0.1:{port}"), "Interval": "300ms"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = register_check(
        &base,
        "private",
        json!({"TCP": "10.255.255.1:80", "Interval": "10s"}),
    )
    .await;
    assert_eq!(status, 400, "the flag replaces the default: {text}");
    eventually(
        "the allowed check passes",
        Duration::from_secs(20),
        || async {
            let checks: serde_json::Value = reqwest::get(format!("{base}/v1/agent/checks"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            checks["service:local"]["Status"] == "passing"
        },
    )
    .await;
    let out = std::process::Command::new(BIN)
        .args(["server", "--check-allow", "10.0.0.0/33"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("10.0.0.0/33"), "{}", stderr(&out));
    open.signal_and_wait("TERM", Duration::from_secs(10));
}
