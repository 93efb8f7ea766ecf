//! A standalone `pier gateway` in a secure cluster joins like an agent: with a join token it
//! gets a certificate of its own (`gateway/NAME`), follows the catalog and the certificates
//! over mTLS and serves a registered service over HTTP and HTTPS; its certificate reads the
//! catalog and the certificate keys and nothing else. Without a token (or with an API token)
//! it refuses to start with a clear message, and a gateway join token adds only gateways.

mod security_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use pier_testkit::process::PierProcess;
use security_common::*;

/// Runs `pier ARGS` to its end (at most 30 s): (success, stderr).
async fn run_to_end(args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new(PIER)
        .args(args)
        .env_remove("PIER_TOKEN")
        .env_remove("PIER_JOIN_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .unwrap_or_else(|_| panic!("pier {args:?} did not end within 30 s"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CA of the test's own and a certificate for `shop.example.com` it signed (openssl).
fn make_shop_cert(d: &Path) {
    let sh = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null",
    );
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=shop.example.com \
        -keyout shop.key -out shop.csr 2>/dev/null && \
        printf 'subjectAltName=DNS:shop.example.com\\n' > ext && \
        openssl x509 -req -in shop.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext -out shop.crt 2>/dev/null");
}

/// curl through the gateway until it answers `want` (30 s at most).
async fn wait_served(gateway: &PierProcess, curl_args: &[String], want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(curl_args)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the gateway never answered {want:?} to curl {curl_args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gateway.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gateway_joins_with_a_token_and_may_only_serve() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    // Short-lived certificates: the gateway's renews within the test.
    let c = SecureCluster::start(d, 1, &["--cert-lifetime", "24s"]).await;
    let mgmt = c.management_token();
    let server = c.servers[0].base();

    // Without a token, against an https:// server: it refuses to start, saying why.
    let empty = d.join("gw-none");
    let (ok, err) = run_to_end(&[
        "gateway",
        "--server",
        &server,
        "--data-dir",
        empty.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert!(!ok, "a gateway started in a secure cluster without a token");
    assert!(err.contains("needs --token"), "{err}");
    // An API token (even management) is no join token.
    let (ok, err) = run_to_end(&[
        "gateway",
        "--server",
        &server,
        "--token",
        &mgmt,
        "--data-dir",
        empty.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert!(!ok, "a gateway started with an API token");
    assert!(err.contains("takes a join token"), "{err}");

    // A backend registered through the Consul API, and a certificate for its host.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "shop" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let reg = serde_json::json!({
        "ID": "shop-1", "Name": "shop", "Address": "127.0.0.1", "Port": backend.port(),
        "Tags": ["urlprefix-shop.example.com"]
    });
    let r = c
        .client(Some(&mgmt))
        .put(format!("{server}/v1/agent/service/register"))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    make_shop_cert(d);
    let (crt, key) = (d.join("shop.crt"), d.join("shop.key"));
    let out = c.cli(
        0,
        Some(&mgmt),
        &[
            "cert",
            "add",
            "shop.example.com",
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // The gateway joins with the agent join token and serves HTTP and HTTPS.
    let gw_dir = d.join("gw1");
    let (http, https) = (free_port(), free_port());
    let args = [
        "gateway",
        "--server",
        &server,
        "--token",
        &c.agent_token(),
        "--name",
        "gw1",
        "--data-dir",
        gw_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--https-port",
        &https.to_string(),
        "--access-log",
        "off",
    ];
    let started = Instant::now();
    let gw = PierProcess::spawn(PIER, "gateway-gw1", &args, d);
    let took = wait_served(
        &gw,
        &[
            "-H".into(),
            "Host: shop.example.com".into(),
            format!("http://127.0.0.1:{http}/"),
        ],
        "shop",
    )
    .await;
    eprintln!("joined gateway served HTTP {took:?} after its start");
    let ca = d.join("ca.pem").display().to_string();
    wait_served(
        &gw,
        &[
            "--cacert".into(),
            ca,
            "--resolve".into(),
            format!("shop.example.com:{https}:127.0.0.1"),
            format!("https://shop.example.com:{https}/"),
        ],
        "shop",
    )
    .await;
    eprintln!(
        "joined gateway served HTTPS {:?} after its start",
        started.elapsed()
    );

    // Its certificate names a gateway, and may read the catalog and the keys, nothing else.
    let cert = std::fs::read_to_string(gw_dir.join("tls/node.crt")).unwrap();
    let id = pier_security::ca::identity_of_pem(&cert).unwrap();
    assert_eq!(id.role, pier_security::ca::Role::Gateway);
    assert_eq!(id.name, "gw1");
    let as_gw = c.node_client(&gw_dir);
    for path in ["/v1/catalog/services", "/api/v1/gateway/certs"] {
        let r = as_gw.get(format!("{server}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path} as the gateway");
    }
    let deploy = serde_json::json!({"file": "name = \"evil\"\nimage = \"x\"\n"});
    let refused = [
        ("POST", "/api/v1/services", Some(deploy)),
        (
            "PUT",
            "/api/v1/secrets/db-password",
            Some(serde_json::json!({"value": "x"})),
        ),
        ("GET", "/api/v1/secrets", None),
        ("GET", "/api/v1/nodes/n1/tasks/t1/secrets", None),
        ("PUT", "/v1/kv/app/x", None),
        ("GET", "/v1/kv/app/x", None),
        ("GET", "/api/v1/status", None),
        ("POST", "/api/v1/certs", None),
        ("PUT", "/v1/agent/service/register", Some(reg.clone())),
        ("PUT", "/api/v1/nodes/gw1", None),
    ];
    for (method, path, body) in refused {
        let mut rb = as_gw.request(method.parse().unwrap(), format!("{server}{path}"));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path} as the gateway");
    }
    // Nothing was deployed.
    let r = c
        .client(Some(&mgmt))
        .get(format!("{server}/api/v1/services"))
        .send()
        .await
        .unwrap();
    assert!(!r.text().await.unwrap().contains("evil"));

    // Its certificate renews before it expires, and past the first one's expiry the gateway
    // still follows the catalog: a service registered then is served.
    let first_issued = Instant::now();
    loop {
        let now = std::fs::read_to_string(gw_dir.join("tls/node.crt")).unwrap_or_default();
        if !now.is_empty() && now != cert {
            break;
        }
        assert!(
            first_issued.elapsed() < Duration::from_secs(30),
            "the gateway's 24 s certificate was not renewed within 30 s\n{}",
            gw.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "gateway certificate renewed {:?} after the test read it",
        first_issued.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(first_issued.elapsed())).await;
    let later = serde_json::json!({
        "ID": "late-1", "Name": "late", "Address": "127.0.0.1", "Port": backend.port(),
        "Tags": ["urlprefix-late.example.com"]
    });
    let r = c
        .client(Some(&mgmt))
        .put(format!("{server}/v1/agent/service/register"))
        .json(&later)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_served(
        &gw,
        &[
            "-H".into(),
            "Host: late.example.com".into(),
            format!("http://127.0.0.1:{http}/"),
        ],
        "shop",
    )
    .await;

    // A gateway join token adds a gateway, not an agent.
    let out = c.cli(
        0,
        Some(&mgmt),
        &["token", "create", "--role", "gateway", "--ttl", "1h"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let gw_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let agent_dir = d.join("agent-with-gw-token");
    let (ok, err) = run_to_end(&[
        "agent",
        "--server",
        &server,
        "--token",
        &gw_token,
        "--name",
        "sneaky",
        "--zone",
        "a",
        "--data-dir",
        agent_dir.to_str().unwrap(),
        "--registry-port",
        "0",
        "--no-network",
    ])
    .await;
    assert!(!ok, "an agent joined with a gateway token");
    assert!(err.contains("can add only gateways"), "{err}");
    assert!(!agent_dir.join("tls/node.crt").exists());

    // A second gateway joined with it serves the service too.
    let gw2_dir = d.join("gw2");
    let http2 = free_port();
    let args2 = [
        "gateway",
        "--server",
        &server,
        "--token",
        &gw_token,
        "--name",
        "gw2",
        "--data-dir",
        gw2_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{http2}"),
        "--access-log",
        "off",
    ];
    let gw2 = PierProcess::spawn(PIER, "gateway-gw2", &args2, d);
    wait_served(
        &gw2,
        &[
            "-H".into(),
            "Host: shop.example.com".into(),
            format!("http://127.0.0.1:{http2}/"),
        ],
        "shop",
    )
    .await;
}
