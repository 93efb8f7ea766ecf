//! `pier server --registry-cert F --registry-key F`: the registry of a secure cluster serves a
//! certificate of the operator's own CA to clients naming a host it covers — skopeo and curl
//! trusting only that CA push and pull — while clients reaching it by address (agents,
//! servers) keep the cluster certificate. A pair that does not match or has expired (or an
//! `--insecure` server) stops the server at start with a clear message; a replaced file is
//! served without a restart.

mod security_common;

use std::path::Path;
use std::time::{Duration, Instant};

use pier_testkit::docker;
use pier_testkit::net::free_port;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use security_common::*;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn operator_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names` signed by `ca` (expired if `expired`): (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `pier server` with `args` must fail at start (30 s at most): its stderr.
async fn start_fails(args: &[&str]) -> String {
    let child = tokio::process::Command::new(PIER)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("pier server with a bad registry certificate kept running")
        .unwrap();
    assert!(!out.status.success(), "pier server started: {}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// curl `url` trusting only `cacert`: the HTTP status it got (None: no TLS session).
fn curl_status(cacert: &Path, url: &str, extra: &[&str]) -> Option<u16> {
    let cacert = cacert.to_str().unwrap();
    let mut args = vec!["-sS", "--max-time", "5", "-o", "/dev/null"];
    args.extend(["-w", "%{http_code}", "--cacert", cacert]);
    args.extend(extra);
    args.push(url);
    let out = run("curl", &args, &[]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_serves_the_operators_certificate_to_names_it_covers() {
    docker::docker_available();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = operator_ca();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let op_ca = write("operator-ca.pem", &ca.pem);
    let (crt, key) = leaf(&ca, &["localhost"], false);
    let (crt, key) = (write("registry.crt", &crt), write("registry.key", &key));

    // Bad pairs stop the server at start, saying what is wrong.
    let port_arg = free_port().to_string();
    let (_, other_key) = leaf(&ca, &["localhost"], false);
    let other_key = write("other.key", &other_key);
    let bad_dir = d.join("bad");
    let base = [
        "server",
        "--data-dir",
        bad_dir.to_str().unwrap(),
        "--http-port",
        "0",
        "--raft-port",
        "0",
        "--registry-port",
        &port_arg,
    ];
    let err = start_fails(
        &[
            &base[..],
            &["--registry-cert", &crt, "--registry-key", &other_key],
        ]
        .concat(),
    )
    .await;
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let (old_crt, old_key) = leaf(&ca, &["localhost"], true);
    let (old_crt, old_key) = (write("old.crt", &old_crt), write("old.key", &old_key));
    let err = start_fails(
        &[
            &base[..],
            &["--registry-cert", &old_crt, "--registry-key", &old_key],
        ]
        .concat(),
    )
    .await;
    assert!(err.contains("expired"), "{err}");
    let err = start_fails(
        &[
            &base[..],
            &[
                "--insecure",
                "--registry-cert",
                &crt,
                "--registry-key",
                &key,
            ],
        ]
        .concat(),
    )
    .await;
    assert!(err.contains("needs a secure cluster"), "{err}");

    // A secure cluster whose registry serves the operator's certificate for `localhost`.
    let port = free_port();
    let port_arg = port.to_string();
    let c = SecureCluster::start(
        d,
        1,
        &[
            "--registry-port",
            &port_arg,
            "--registry-cert",
            &crt,
            "--registry-key",
            &key,
        ],
    )
    .await;
    let by_name = format!("https://localhost:{port}/v2/");
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl_status(Path::new(&op_ca), &by_name, &[]) != Some(401) {
        assert!(
            Instant::now() < deadline,
            "registry never answered on {by_name}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // By address (as agents and servers reach it): the cluster certificate, unchanged.
    let by_ip = format!("https://127.0.0.1:{port}/v2/");
    assert_eq!(curl_status(&c.ca_path(), &by_ip, &[]), Some(401));
    assert_eq!(curl_status(Path::new(&op_ca), &by_ip, &[]), None);

    // skopeo, trusting only the operator's CA, pushes and pulls with a token.
    let certs = d.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &ca.pem).unwrap();
    let (push, _) = c.create_token(&["registry:push:team/*"]);
    let tag = format!("pier-test/regop-{}:v1", std::process::id());
    let layout = d.join("layout");
    let _image = httpd_image_layout(&tag, "operator cert\n", &layout);
    let app = format!("docker://localhost:{port}/team/app:v1");
    let cert_dir = format!("--dest-cert-dir={}", certs.display());
    let creds = format!("--dest-creds=ci:{push}");
    let src = format!("oci:{}:img", layout.display());
    let out = run(
        "skopeo",
        &["copy", "--quiet", &creds, &cert_dir, &src, &app],
        &[],
    );
    assert!(out.status.success(), "push: {}", text(&out));
    let pulled = d.join("pulled");
    let out = run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("--src-creds=ci:{push}"),
            &format!("--src-cert-dir={}", certs.display()),
            &app,
            &format!("dir:{}", pulled.display()),
        ],
        &[],
    );
    assert!(out.status.success(), "pull: {}", text(&out));
    assert!(pulled.join("manifest.json").exists());

    // A replaced certificate (a new name) is served without a restart.
    let (crt2, key2) = leaf(&ca, &["localhost", "registry.example.test"], false);
    std::fs::write(d.join("registry.key"), key2).unwrap();
    std::fs::write(d.join("registry.crt"), crt2).unwrap();
    let resolve = format!("registry.example.test:{port}:127.0.0.1");
    let new_name = format!("https://registry.example.test:{port}/v2/");
    let replaced = Instant::now();
    while curl_status(Path::new(&op_ca), &new_name, &["--resolve", &resolve]) != Some(401) {
        assert!(
            replaced.elapsed() < Duration::from_secs(15),
            "the replaced registry certificate was not served within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "replaced registry certificate served after {:?}",
        replaced.elapsed()
    );
}
