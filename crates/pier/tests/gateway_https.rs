//! HTTPS through the gateway of a real `pier dev --no-agent`, with services registered through
//! the Consul API and in-process backends, checked with curl and openssl: `*.localhost` served
//! with certificates from the local CA (HTTP/2 by ALPN); provided certificates stored with
//! `pier cert add`, picked by SNI, listed by `pier cert ls --json` without keys, replaced
//! within a second, removed; bad certificates refused with a clear error.

mod gateway_common;

use std::path::Path;
use std::time::{Duration, Instant};

use gateway_common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// `curl` over HTTPS to `host` at `port` trusting `cacert`: (ok, "<body> <version> <status>", stderr).
fn curl_https(port: u16, host: &str, cacert: &str, extra: &[&str]) -> (bool, String, String) {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let mut args = vec!["--cacert", cacert, "--resolve", &resolve];
    args.extend(["-w", " %{http_version} %{http_code}"]);
    args.extend(extra);
    args.push(&url);
    curl(&args)
}

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

/// Writes a leaf for `names` signed by `ca` into `dir`: (cert path, key path).
fn leaf(dir: &Path, tag: &str, ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The stored record of `host` in table `gateway_certs`.
fn stored_cert(snapshot: &Path, host: &str) -> serde_json::Value {
    pier_testkit::snapshot::stored_json(snapshot, "gateway_certs", host)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// `pier cert add HOST` with `pair`, then waits (1 s at most) until HTTPS on `https` presents a
/// certificate `ca_path` trusts; prints how long that took.
async fn replace_and_wait_served(
    dev: &Dev,
    https: u16,
    host: &'static str,
    pair: &(String, String),
    ca_path: &str,
    what: &str,
) {
    let out = dev.pier(&["cert", "add", host, "--cert", &pair.0, "--key", &pair.1]);
    assert!(out.status.success(), "{out:?}");
    let stored = Instant::now();
    eventually(what, Duration::from_secs(1), || {
        let ca_path = ca_path.to_string();
        async move { blocking(move || curl_https(https, host, &ca_path, &[]).0).await }
    })
    .await;
    eprintln!(
        "{what} {:?} after `pier cert add` returned",
        stored.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_localhost_names_with_its_local_ca_over_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), "dev", &["--access-log", "off"]).await;
    let https = dev.https_port;
    let b = backend("web").await;
    dev.register("web-1", "web", b, &[]).await;
    let gw = dev.gateway_port;
    eventually("web routed", Duration::from_secs(10), || async {
        matches!(gateway_get(gw, "web.localhost", "/").await, Some((200, _)))
    })
    .await;

    let ca = dir.path().join("data/tls/local-ca.pem");
    let key = dir.path().join("data/tls/local-ca.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "local CA key mode {mode:o}");
    let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap();
    assert!(
        log.contains(&ca.display().to_string()) && log.contains("update-ca-certificates"),
        "{log}"
    );

    let cacert = ca.display().to_string();
    let (ok, out, err) = blocking({
        let cacert = cacert.clone();
        move || curl_https(https, "web.localhost", &cacert, &["--http2"])
    })
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "web 2 200");
    let (ok, out, err) = blocking({
        let cacert = cacert.clone();
        move || curl_https(https, "web.localhost", &cacert, &["--http1.1"])
    })
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "web 1.1 200");
    // `--access-log off`: no access lines at all, not even as log events.
    let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap();
    assert!(!log.contains("pier_gateway::access"), "{log}");
    // Not a localhost name and no stored certificate: no certificate at all.
    let (ok, _, _) = blocking(move || curl_https(https, "web.example.com", &cacert, &[])).await;
    assert!(!ok, "the local CA issued for a public name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_certificates_are_picked_by_sni_listed_replaced_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = Dev::start(d, "dev", &["--access-log", "off"]).await;
    let https = dev.https_port;
    let (shop_b, blog_b) = (backend("shop").await, backend("blog").await);
    dev.register("shop-1", "shop", shop_b, &["urlprefix-shop.example.com"])
        .await;
    dev.register("blog-1", "blog", blog_b, &["urlprefix-blog.example.com"])
        .await;
    let (ca1, ca2) = (ca("provided CA one"), ca("provided CA two"));
    let (ca1_path, ca2_path) = (write(d, "ca1.pem", &ca1.pem), write(d, "ca2.pem", &ca2.pem));
    let shop = leaf(d, "shop", &ca1, &["shop.example.com"]);
    let blog = leaf(d, "blog", &ca1, &["*.example.com"]);

    // Refused with a clear message: a key of another certificate, a name not covered.
    let out = dev.pier(&[
        "cert",
        "add",
        "shop.example.com",
        "--cert",
        &shop.0,
        "--key",
        &blog.1,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not belong"),
        "{out:?}"
    );
    let out = dev.pier(&[
        "cert",
        "add",
        "api.other.org",
        "--cert",
        &shop.0,
        "--key",
        &shop.1,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("does not cover api.other.org") && err.contains("shop.example.com"),
        "{err}"
    );

    for (host, (c, k)) in [("shop.example.com", &shop), ("blog.example.com", &blog)] {
        let out = dev.pier(&["cert", "add", host, "--cert", c, "--key", k]);
        assert!(out.status.success(), "{out:?}");
    }
    eventually("both routed over HTTPS", Duration::from_secs(10), || {
        let ca1_path = ca1_path.clone();
        async move {
            blocking(move || {
                curl_https(https, "shop.example.com", &ca1_path, &[]).1 == "shop 2 200"
                    && curl_https(https, "blog.example.com", &ca1_path, &[]).1 == "blog 2 200"
            })
            .await
        }
    })
    .await;
    // SNI picks each host's own leaf (openssl shows the names of the one it got).
    for (host, expect) in [
        ("shop.example.com", "DNS:shop.example.com"),
        ("blog.example.com", "DNS:*.example.com"),
    ] {
        let ca1_path = ca1_path.clone();
        let text = blocking(move || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "openssl s_client -connect 127.0.0.1:{https} -servername {host} -CAfile {ca1_path} \
                     -verify_hostname {host} -verify_return_error </dev/null 2>/dev/null \
                     | openssl x509 -noout -ext subjectAltName"
                ))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .await;
        assert!(text.contains(expect), "{host}: {text}");
    }

    // The listing: metadata only.
    let out = dev.pier(&["cert", "ls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("key_pem"),
        "{text}"
    );
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(list.len(), 2, "{text}");
    let shop_entry = list
        .iter()
        .find(|c| c["host"] == "shop.example.com")
        .unwrap();
    assert_eq!(shop_entry["issuer"], "CN=provided CA one");
    assert_eq!(shop_entry["source"], "provided");
    assert_eq!(shop_entry["last_error"], serde_json::Value::Null);
    assert!(shop_entry["not_after"].as_i64().unwrap() > 1_700_000_000);
    // `pier dev` has no server secret: the key is stored as given, and says so. (The secure
    // cluster test checks the opposite with the same byte search of the raft files.)
    assert_eq!(shop_entry["key_sealed"], false);
    let snap = d.join("dev.snapshot");
    let out = dev.pier(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stored = stored_cert(&snap, "shop.example.com");
    assert_eq!(stored["key"]["kind"], "plain");
    assert_eq!(
        stored["key"]["value"],
        std::fs::read_to_string(&shop.1).unwrap()
    );

    // A replaced certificate is served by new connections within a second.
    let shop2 = leaf(d, "shop2", &ca2, &["shop.example.com"]);
    replace_and_wait_served(
        &dev,
        https,
        "shop.example.com",
        &shop2,
        &ca2_path,
        "replaced certificate served",
    )
    .await;

    // Removed: blog has no certificate any more.
    let out = dev.pier(&["cert", "rm", "blog.example.com"]);
    assert!(out.status.success(), "{out:?}");
    eventually(
        "removed certificate no longer served",
        Duration::from_secs(1),
        || {
            let ca1_path = ca1_path.clone();
            async move {
                blocking(move || !curl_https(https, "blog.example.com", &ca1_path, &[]).0).await
            }
        },
    )
    .await;
    let out = dev.pier(&["cert", "rm", "blog.example.com"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_https_redirect_answers_308_and_hsts_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), "dev", &["--access-log", "off"]).await;
    let https = dev.https_port;
    let (secure_b, plain_b) = (backend("secure").await, backend("plain").await);
    dev.register(
        "secure-1",
        "secure",
        secure_b,
        &["urlprefix-secure.localhost https=redirect hsts=true"],
    )
    .await;
    dev.register("plain-1", "plain", plain_b, &[]).await;
    let gw = dev.gateway_port;
    eventually("both routed", Duration::from_secs(10), || async {
        matches!(
            gateway_get(gw, "plain.localhost", "/").await,
            Some((200, _))
        ) && matches!(
            gateway_get(gw, "secure.localhost", "/").await,
            Some((308, _))
        )
    })
    .await;
    let cacert = dir
        .path()
        .join("data/tls/local-ca.pem")
        .display()
        .to_string();

    let (out, acme, followed, plain, headers) = blocking(move || {
        let http = |host: &str, path: &str| {
            curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "--resolve",
                &format!("{host}:{gw}:127.0.0.1"),
                &format!("http://{host}:{gw}{path}"),
            ])
            .1
        };
        let out = http("secure.localhost", "/a/b?c=1");
        let acme = http("secure.localhost", "/.well-known/acme-challenge/tok");
        let plain = http("plain.localhost", "/x");
        // A client following the redirect ends on HTTPS with the service's answer.
        let followed = curl(&[
            "-L",
            "--cacert",
            &cacert,
            "--resolve",
            &format!("secure.localhost:{gw}:127.0.0.1"),
            "--resolve",
            &format!("secure.localhost:{https}:127.0.0.1"),
            "-w",
            " %{scheme} %{http_code}",
            &format!("http://secure.localhost:{gw}/p"),
        ]);
        let headers = curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &cacert,
            "--resolve",
            &format!("secure.localhost:{https}:127.0.0.1"),
            &format!("https://secure.localhost:{https}/"),
        ]);
        (out, acme, followed, plain, headers)
    })
    .await;
    assert_eq!(out, format!("308 https://secure.localhost:{https}/a/b?c=1"));
    assert_eq!(acme, "200 ", "ACME challenges stay on plain HTTP");
    assert_eq!(
        plain, "200 ",
        "a route without the option is served over HTTP"
    );
    assert!(followed.0, "{}", followed.2);
    assert_eq!(followed.1.to_ascii_lowercase(), "secure https 200");
    assert!(
        headers
            .1
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{}",
        headers.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gateway_serves_the_stored_certificates_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = Dev::start(d, "dev", &["--access-log", "off"]).await;
    let shop_b = backend("shop").await;
    dev.register(
        "shop-1",
        "shop",
        shop_b,
        &["urlprefix-shop.example.com https=redirect"],
    )
    .await;
    let (http_port, https) = (
        pier_testkit::net::free_port(),
        pier_testkit::net::free_port(),
    );
    let _gw = pier_testkit::process::PierProcess::spawn(
        PIER,
        "gateway",
        &[
            "gateway",
            "--server",
            &dev.addr(),
            "--listen",
            &format!("127.0.0.1:{http_port}"),
            "--https-port",
            &https.to_string(),
            "--access-log",
            "off",
        ],
        d,
    );
    let (ca1, ca2) = (ca("standalone CA one"), ca("standalone CA two"));
    let (ca1_path, ca2_path) = (write(d, "ca1.pem", &ca1.pem), write(d, "ca2.pem", &ca2.pem));
    let one = leaf(d, "one", &ca1, &["shop.example.com"]);
    let out = dev.pier(&[
        "cert",
        "add",
        "shop.example.com",
        "--cert",
        &one.0,
        "--key",
        &one.1,
    ]);
    assert!(out.status.success(), "{out:?}");
    eventually(
        "served over HTTPS by the standalone gateway",
        Duration::from_secs(10),
        || {
            let ca1_path = ca1_path.clone();
            async move {
                blocking(move || {
                    curl_https(https, "shop.example.com", &ca1_path, &["--http2"]).1 == "shop 2 200"
                })
                .await
            }
        },
    )
    .await;
    // Its plain listener redirects to its own HTTPS port.
    let (_, out, _) = blocking(move || {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: shop.example.com",
            &format!("http://127.0.0.1:{http_port}/x"),
        ])
    })
    .await;
    assert_eq!(out, format!("308 https://shop.example.com:{https}/x"));

    let two = leaf(d, "two", &ca2, &["shop.example.com"]);
    replace_and_wait_served(
        &dev,
        https,
        "shop.example.com",
        &two,
        &ca2_path,
        "replaced certificate served by the standalone gateway",
    )
    .await;
}

/// Writes a leaf for `names` signed by `ca`, valid from an hour ago until `not_after`.
fn leaf_until(dir: &Path, tag: &str, ca: &Ca, names: &[&str], not_after: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn cert_ls(dev: &Dev) -> Vec<serde_json::Value> {
    let out = dev.pier(&["cert", "ls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_certificates_show_their_problems_in_cert_ls_and_bad_ones_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = Dev::start(d, "dev", &["--access-log", "off"]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 24 * 3600;
    let ca = ca("problem CA");

    // Refused, nothing stored: a key of another certificate, a host not covered, expired.
    let good = leaf_until(d, "good", &ca, &["good.example.com"], now + 90 * day);
    let other = leaf_until(d, "other", &ca, &["other.example.com"], now + 90 * day);
    let expired = leaf_until(d, "expired", &ca, &["old.example.com"], now - day);
    for (host, cert, key, expect) in [
        (
            "good.example.com",
            &good.0,
            &other.1,
            "does not belong to the certificate",
        ),
        (
            "bad.example.com",
            &good.0,
            &good.1,
            "does not cover bad.example.com",
        ),
        ("old.example.com", &expired.0, &expired.1, "expired on"),
    ] {
        let out = dev.pier(&["cert", "add", host, "--cert", cert, "--key", key]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains(expect),
            "{host}: {err}"
        );
    }
    assert_eq!(
        cert_ls(&dev),
        Vec::<serde_json::Value>::new(),
        "nothing stored"
    );

    // Stored: a healthy one, one with 5 days left (warned at once), one with 4 s left.
    let soon = leaf_until(d, "soon", &ca, &["soon.example.com"], now + 5 * day + 3600);
    let brief = leaf_until(d, "brief", &ca, &["brief.example.com"], now + 4);
    for (host, (cert, key)) in [
        ("good.example.com", &good),
        ("soon.example.com", &soon),
        ("brief.example.com", &brief),
    ] {
        let out = dev.pier(&["cert", "add", host, "--cert", cert, "--key", key]);
        assert!(out.status.success(), "{out:?}");
        let warned = String::from_utf8_lossy(&out.stderr).contains("warning: ");
        assert_eq!(warned, host != "good.example.com", "{host}: {out:?}");
    }
    let error_of = |list: &[serde_json::Value], host: &str| {
        list.iter()
            .find(|c| c["host"] == host)
            .unwrap_or_else(|| panic!("{host} listed: {list:?}"))["last_error"]
            .clone()
    };
    let list = cert_ls(&dev);
    assert_eq!(error_of(&list, "good.example.com"), serde_json::Value::Null);
    let soon_err = error_of(&list, "soon.example.com");
    assert!(
        soon_err.as_str().unwrap().starts_with("expires soon")
            && soon_err.as_str().unwrap().contains("in 5 days"),
        "{soon_err}"
    );
    let brief_err = error_of(&list, "brief.example.com");
    assert!(
        brief_err.as_str().unwrap().starts_with("expires soon"),
        "{brief_err}"
    );

    // Time alone changes the listing: the 4 s certificate is reported expired once it is.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let list = cert_ls(&dev);
    let brief_err = error_of(&list, "brief.example.com");
    assert!(
        brief_err.as_str().unwrap().starts_with("expired on"),
        "{brief_err}"
    );
    eprintln!(
        "cert ls --json: brief.example.com last_error {brief_err}; soon.example.com {soon_err}"
    );
    // The table shows it in the LAST ERROR column.
    let out = dev.pier(&["cert", "ls"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |host: &str| {
        table
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("a row for {host}: {table}"))
            .to_string()
    };
    assert!(
        table.lines().next().unwrap().ends_with("LAST ERROR"),
        "{table}"
    );
    assert!(row("brief.example.com").contains("expired on"), "{table}");
    assert!(row("soon.example.com").contains("expires soon"), "{table}");
    assert!(
        row("good.example.com").trim_end().ends_with(" -"),
        "{table}"
    );
}
