//! The registry of a secure cluster: TLS with the cluster's certificate, and Docker token
//! authentication with pier API tokens — tried with skopeo and the Docker CLI, as users push
//! and pull.

mod security_common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pier_testkit::docker::{self, ImageGuard};
use pier_testkit::net::free_port;
use security_common::*;
use serde_json::Value;

/// `skopeo copy` from an OCI layout to `dest`, with `creds` ("user:token") if any.
fn skopeo_push(layout: &Path, dest: &str, certs: &Path, creds: Option<&str>) -> Output {
    let src = format!("oci:{}:img", layout.display());
    let cert_dir = format!("--dest-cert-dir={}", certs.display());
    let mut args = vec!["copy", "--quiet", &cert_dir, &src, dest];
    let creds_arg;
    if let Some(c) = creds {
        creds_arg = format!("--dest-creds={c}");
        args.insert(2, &creds_arg);
    }
    run("skopeo", &args, &[])
}

fn skopeo_inspect(reference: &str, certs: &Path, creds: Option<&str>) -> Output {
    let cert_dir = format!("--cert-dir={}", certs.display());
    let mut args = vec!["inspect", &cert_dir, reference];
    let creds_arg;
    if let Some(c) = creds {
        creds_arg = format!("--creds={c}");
        args.insert(1, &creds_arg);
    }
    run("skopeo", &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_of_a_secure_cluster_asks_for_tokens_over_tls() {
    docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let c = SecureCluster::start(tmp.path(), 1, &["--registry-port", &port_arg]).await;
    let mgmt = c.management_token();
    let registry = format!("127.0.0.1:{port}");
    // skopeo trusts the CA files in a directory.
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), c.ca_pem()).unwrap();

    let (push, push_accessor) = c.create_token(&["registry:push:team/*"]);
    let (read, _) = c.create_token(&["read"]);

    // Plain HTTP gets nowhere; HTTPS without credentials gets the Docker challenge.
    let plain = reqwest::Client::new()
        .get(format!("http://{registry}/v2/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "the registry answered plain HTTP"
    );
    let r = c
        .client(None)
        .get(format!("https://{registry}/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"https://{registry}/v2/token\",service=\"pier-registry\""
        )) && challenge.contains("scope=\"repository:team/app:pull\""),
        "{challenge}"
    );

    // An image to push, as an OCI layout.
    let tag = format!("pier-test/regauth-{}:v1", std::process::id());
    let layout = tmp.path().join("layout");
    let _image = httpd_image_layout(&tag, "secured\n", &layout);

    // Push: refused without a token and outside the token's repositories; allowed inside.
    let app = format!("docker://{registry}/team/app:v1");
    let out = skopeo_push(&layout, &app, &certs, None);
    assert!(!out.status.success(), "anonymous push worked");
    let other = format!("docker://{registry}/other/app:v1");
    let out = skopeo_push(&layout, &other, &certs, Some(&format!("ci:{push}")));
    assert!(!out.status.success(), "push outside team/* worked");
    let out = skopeo_push(&layout, &app, &certs, Some(&format!("ci:{push}")));
    assert!(out.status.success(), "push to team/app: {}", text(&out));

    // Pull: a read token may, nobody without one.
    let out = skopeo_inspect(&app, &certs, Some(&format!("reader:{read}")));
    assert!(out.status.success(), "{}", text(&out));
    let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(inspected["Digest"].as_str().unwrap().starts_with("sha256:"));
    let out = skopeo_inspect(&app, &certs, None);
    assert!(!out.status.success(), "anonymous pull worked");
    // A read token cannot push.
    let out = skopeo_push(&layout, &app, &certs, Some(&format!("reader:{read}")));
    assert!(!out.status.success(), "a read token pushed");

    // The Docker CLI: login with the token as the password, push, pull back.
    let docker_config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.to_str().unwrap())];
    let mut login = Command::new("docker");
    login
        .args(["login", "--username", "ci", "--password-stdin", &registry])
        .envs(env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(push.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", text(&out));
    let remote = format!("{registry}/team/web:v1");
    let mut image = ImageGuard::new(&tag);
    docker::docker(&["tag", &tag, &remote]);
    image.also(&remote);
    let out = run("docker", &["push", &remote], &env);
    assert!(out.status.success(), "docker push: {}", text(&out));
    docker::docker(&["rmi", &remote]);
    let out = run("docker", &["pull", &remote], &env);
    assert!(out.status.success(), "docker pull: {}", text(&out));

    // An agent pulls with its node certificate through its node-local endpoint: Docker needs no
    // login and no CA there.
    let agent_dir = tmp.path().join("agent");
    let agent_registry = free_port();
    let _agent = c.spawn_agent("n1", &agent_dir, Some(agent_registry));
    let local = format!("127.0.0.1:{agent_registry}/team/app:v1");
    image.also(&local);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        // No DOCKER_CONFIG: no credentials at all.
        let out = run("docker", &["pull", &local], &[]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "docker pull through the agent's endpoint: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Revoked: refused at once.
    let out = c.cli(0, Some(&mgmt), &["acl", "token", "revoke", &push_accessor]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = skopeo_inspect(&app, &certs, Some(&format!("ci:{push}")));
    assert!(!out.status.success(), "a revoked token still pulls");

    // The refusals and the push are in the audit log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.cli(0, Some(&mgmt), &["audit", "--json"]);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let pushed = lines.iter().any(|l| {
            l["method"] == "PUT"
                && l["path"] == "/v2/team/app/manifests/v1"
                && l["status"] == 201
                && l["who"] == format!("token:{push_accessor}")
        });
        let refused = lines.iter().any(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v2/other/"))
        });
        if pushed && refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log lacks the push ({pushed}) or the refusal ({refused}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
