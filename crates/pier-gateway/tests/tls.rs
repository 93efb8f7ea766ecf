//! The HTTPS listener with real clients (curl, openssl): certificates picked by SNI, HTTP/2
//! and HTTP/1.1 by ALPN, `X-Forwarded-Proto: https`, a certificate swapped in the resolver
//! served by the next connection, and no certificate for an unknown name.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use pier_gateway::{certified_key, CertResolver, Gateway, GatewayConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA: its PEM certificate and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `host` signed by `ca`: (chain PEM, key PEM).
fn leaf(ca: &Ca, host: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn certs(
    entries: &[(&str, &(String, String))],
) -> HashMap<String, Arc<rustls::sign::CertifiedKey>> {
    entries
        .iter()
        .map(|(host, (c, k))| {
            let (ck, info) = certified_key(c.as_bytes(), k.as_bytes()).unwrap();
            assert!(info.covers(host));
            (host.to_string(), ck)
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `curl` over HTTPS to `host` at the gateway's HTTPS port, trusting `cacert`:
/// (exit ok, "<http_version> <status> <body>", stderr).
fn curl_https(port: u16, host: &str, cacert: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", cacert])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", " %{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{host}:{port}/who"))
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Running {
    https: u16,
    resolver: Arc<CertResolver>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn start(routes: Arc<pier_gateway::RouteTable>) -> Running {
    let cfg = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), "a");
    let (tx, rx) = tokio::sync::watch::channel(routes);
    let mut gw = Gateway::new(cfg, rx).unwrap();
    let resolver = CertResolver::new(None);
    let https = gw
        .enable_https("127.0.0.1:0".parse().unwrap(), Arc::clone(&resolver))
        .unwrap()
        .port();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = tx;
        gw.serve(async {
            let _ = stop_rx.await;
        })
        .await
    });
    Running {
        https,
        resolver,
        stop: Some(stop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_picks_the_certificate_by_sni_and_speaks_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let routes = table(&[
        instance("shop", &a, "a", true),
        instance("blog", &b, "a", true),
    ]);
    let gw = start(routes);
    let ca1 = ca("test CA one");
    let shop = leaf(&ca1, "shop.localhost");
    let blog = leaf(&ca1, "blog.localhost");
    gw.resolver.replace(certs(&[
        ("shop.localhost", &shop),
        ("blog.localhost", &blog),
    ]));
    let cacert = write(dir.path(), "ca1.pem", &ca1.pem);
    let port = gw.https;

    // HTTP/2 by ALPN; curl checks the name, so the certificate SNI picked is the right one.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let cacert = cacert.clone();
        move || curl_https(port, "shop.localhost", &cacert, &["--http2"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "a 2 200");
    let (ok, out, err) = tokio::task::spawn_blocking({
        let cacert = cacert.clone();
        move || curl_https(port, "blog.localhost", &cacert, &["--http1.1"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "b 1.1 200");
    // The backend learns the client used HTTPS.
    let seen = b.seen();
    let last = seen.last().expect("blog saw the request");
    assert_eq!(last.headers["x-forwarded-proto"], "https");

    // openssl names the leaf SNI chose: each host gets its own.
    for host in ["shop.localhost", "blog.localhost"] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", host, "-CAfile", &cacert])
            .args(["-verify_hostname", host, "-verify_return_error"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        assert!(text.contains(&format!("s:CN = {host}")), "{text}");
    }

    // A name without a certificate: the handshake fails, no other host's certificate is shown.
    let (ok, _, err) = tokio::task::spawn_blocking({
        let cacert = cacert.clone();
        move || curl_https(port, "other.localhost", &cacert, &[])
    })
    .await
    .unwrap();
    assert!(!ok, "a host without a certificate was served");
    assert!(err.contains("alert") || err.contains("SSL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_serves_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestBackend::start("a").await;
    let gw = start(table(&[instance("shop", &a, "a", true)]));
    let (ca1, ca2) = (ca("one"), ca("two"));
    let (p1, p2) = (
        write(dir.path(), "ca1.pem", &ca1.pem),
        write(dir.path(), "ca2.pem", &ca2.pem),
    );
    gw.resolver
        .replace(certs(&[("shop.localhost", &leaf(&ca1, "shop.localhost"))]));
    let port = gw.https;
    let run = |ca: String| {
        tokio::task::spawn_blocking(move || curl_https(port, "shop.localhost", &ca, &[]))
    };
    let (ok, out, err) = run(p1.clone()).await.unwrap();
    assert!(ok && out.ends_with(" 200"), "{out} {err}");

    gw.resolver
        .replace(certs(&[("shop.localhost", &leaf(&ca2, "shop.localhost"))]));
    let (ok, out, err) = run(p2).await.unwrap();
    assert!(
        ok && out.ends_with(" 200"),
        "new certificate not served: {out} {err}"
    );
    let (ok, _, _) = run(p1).await.unwrap();
    assert!(!ok, "the old certificate is still served");
}
