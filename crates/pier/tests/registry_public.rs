//! Anonymous pulls per repository prefix in a secure cluster's registry:
//! `pier registry public add pub/*` lets skopeo and `docker pull` fetch `pub/...` without
//! logging in, while every other repository still answers 401 with the Bearer challenge, a
//! push always needs a token, and `pier registry public rm` closes the door again.

mod security_common;

use std::path::Path;
use std::process::Output;

use pier_testkit::docker::{self, ImageGuard};
use pier_testkit::net::free_port;
use security_common::*;
use serde_json::Value;

/// `skopeo copy` from `src` to `dest`; `creds` ("user:token") for the side that is a registry.
fn skopeo_copy(src: &str, dest: &str, certs: &Path, creds: Option<&str>) -> Output {
    let mut args: Vec<String> = vec!["copy".into(), "--quiet".into()];
    let pushing = dest.starts_with("docker://");
    let side = if pushing { "dest" } else { "src" };
    args.push(format!("--{side}-cert-dir={}", certs.display()));
    if let Some(c) = creds {
        args.push(format!("--{side}-creds={c}"));
    } else if !pushing {
        // No credentials at all, not even ones from an auth file on this machine.
        args.push("--src-no-creds".into());
    }
    args.extend([src.to_string(), dest.to_string()]);
    run(
        "skopeo",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )
}

/// `skopeo inspect` without any credentials.
fn anonymous_inspect(reference: &str, certs: &Path) -> Output {
    let cert_dir = format!("--cert-dir={}", certs.display());
    run(
        "skopeo",
        &["inspect", "--no-creds", &cert_dir, reference],
        &[],
    )
}

/// `curl` without credentials: (status, WWW-Authenticate header).
fn curl(method: &str, url: &str, ca: &Path) -> (u16, String) {
    let out = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-X",
            method,
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "%{http_code} %header{www-authenticate}",
            url,
        ],
        &[],
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, challenge) = line.split_once(' ').unwrap_or((&line, ""));
    (
        status
            .parse()
            .unwrap_or_else(|_| panic!("curl: {}", text(&out))),
        challenge.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_prefixes_are_pulled_without_login_and_nothing_else_is() {
    docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let c = SecureCluster::start(tmp.path(), 1, &["--registry-port", &port_arg]).await;
    let mgmt = c.management_token();
    let registry = format!("127.0.0.1:{port}");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), c.ca_pem()).unwrap();
    let ca = certs.join("ca.crt");
    let (push, _) = c.create_token(&["registry:push:pub/*", "registry:push:team/*"]);
    let (read, _) = c.create_token(&["read"]);

    // One image, pushed with the token to a would-be public and a private repository.
    let tag = format!("pier-test/regpublic-{}:v1", std::process::id());
    let layout = tmp.path().join("layout");
    let _image = httpd_image_layout(&tag, "public\n", &layout);
    let src = format!("oci:{}:img", layout.display());
    let public_app = format!("docker://{registry}/pub/web:v1");
    let private_app = format!("docker://{registry}/team/web:v1");
    for dest in [&public_app, &private_app] {
        let out = skopeo_copy(&src, dest, &certs, Some(&format!("ci:{push}")));
        assert!(out.status.success(), "push {dest}: {}", text(&out));
    }

    // Nothing is public yet.
    let out = c.cli(0, Some(&mgmt), &["registry", "public", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    assert!(!anonymous_inspect(&public_app, &certs).status.success());

    // Only management may open a prefix; a bad pattern is refused with the rule.
    let out = c.cli(0, Some(&read), &["registry", "public", "add", "pub/*"]);
    assert!(
        !out.status.success(),
        "a read token made a repository public"
    );
    let out = c.cli(0, Some(&mgmt), &["registry", "public", "add", "Pub/*x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a repository name or prefix"),
        "{}",
        stderr(&out)
    );
    let out = c.cli(
        0,
        Some(&mgmt),
        &["registry", "public", "add", "pub/*", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.cli(0, Some(&read), &["registry", "public", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["pattern"], "pub/*", "{listed}");

    // Anonymous pulls of pub/...: skopeo inspect and a full copy (manifest and blobs), and
    // docker pull with no login at all.
    let out = anonymous_inspect(&public_app, &certs);
    assert!(out.status.success(), "anonymous inspect: {}", text(&out));
    let pulled = tmp.path().join("pulled");
    let out = skopeo_copy(
        &public_app,
        &format!("oci:{}:img", pulled.display()),
        &certs,
        None,
    );
    assert!(out.status.success(), "anonymous pull: {}", text(&out));
    let docker_config = tmp.path().join("docker-config-empty");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.to_str().unwrap())];
    let remote = format!("{registry}/pub/web:v1");
    let _pulled = ImageGuard::new(&remote);
    let out = run("docker", &["pull", &remote], &env);
    assert!(
        out.status.success(),
        "anonymous docker pull: {}",
        text(&out)
    );

    // Everything else still asks for credentials: other repositories, the catalog, pushes.
    assert!(!anonymous_inspect(&private_app, &certs).status.success());
    let (status, challenge) = curl(
        "GET",
        &format!("https://{registry}/v2/team/web/tags/list"),
        &ca,
    );
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"https://{registry}/v2/token\",service=\"pier-registry\""
        )) && challenge.contains("scope=\"repository:team/web:pull\""),
        "{challenge}"
    );
    let (status, _) = curl(
        "GET",
        &format!("https://{registry}/v2/pub/web/tags/list"),
        &ca,
    );
    assert_eq!(status, 200, "anonymous tag list of a public repository");
    let (status, challenge) = curl(
        "POST",
        &format!("https://{registry}/v2/pub/web/blobs/uploads/"),
        &ca,
    );
    assert_eq!(status, 401, "anonymous push to a public repository");
    assert!(
        challenge.contains("scope=\"repository:pub/web:pull,push\""),
        "{challenge}"
    );
    let (status, _) = curl(
        "DELETE",
        &format!("https://{registry}/v2/pub/web/manifests/v1"),
        &ca,
    );
    assert_eq!(status, 401, "anonymous delete in a public repository");
    let (status, _) = curl("GET", &format!("https://{registry}/v2/_catalog"), &ca);
    assert_eq!(status, 401, "anonymous catalog");
    let out = skopeo_copy(
        &src,
        &format!("docker://{registry}/pub/web:v2"),
        &certs,
        None,
    );
    assert!(
        !out.status.success(),
        "anonymous skopeo push to a public repository worked"
    );
    // The token endpoint gives an anonymous client pulls of public repositories only.
    let (status, _) = curl(
        "GET",
        &format!(
            "https://{registry}/v2/token?service=pier-registry&scope=repository:team/web:pull"
        ),
        &ca,
    );
    assert_eq!(status, 401);
    let (status, _) = curl(
        "GET",
        &format!(
            "https://{registry}/v2/token?service=pier-registry&scope=repository:pub/web:pull,push"
        ),
        &ca,
    );
    assert_eq!(status, 200);

    // Closed again: anonymous pulls of pub/... are refused at once.
    let out = c.cli(0, Some(&mgmt), &["registry", "public", "rm", "pub/*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.cli(0, Some(&mgmt), &["registry", "public", "rm", "pub/*"]);
    assert!(!out.status.success(), "removing a pattern twice");
    assert!(!anonymous_inspect(&public_app, &certs).status.success());
    let (status, _) = curl(
        "GET",
        &format!("https://{registry}/v2/pub/web/tags/list"),
        &ca,
    );
    assert_eq!(status, 401);
}
