//! HTTPS in a secure cluster of 3 `pier server`s, each with a gateway: `pier cert add` needs a
//! management token, the key is sealed in the store (no private key in any server's raft
//! files), the listing never shows it, every server's gateway serves the certificate, and
//! the key endpoint for standalone gateways refuses callers without management access.

mod security_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use security_common::*;

/// The stored record of `host` in table `gateway_certs`.
fn stored_cert(snapshot: &Path, host: &str) -> serde_json::Value {
    pier_testkit::snapshot::stored_json(snapshot, "gateway_certs", host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_sealed_guarded_and_served_by_every_server_gateway() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let c = SecureCluster::start_each(root.path(), 3, |i| {
        vec![
            "--gateway-port".into(),
            ports[i].0.to_string(),
            "--gateway-https-port".into(),
            ports[i].1.to_string(),
            "--access-log".into(),
            "off".into(),
        ]
    })
    .await;
    let mgmt = c.management_token();

    // A backend registered through the Consul API with the management token.
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
        .put(format!("{}/v1/agent/service/register", c.servers[0].base()))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // A certificate from a CA of the test's own (openssl).
    let d = root.path();
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
    let (crt, key) = (d.join("shop.crt"), d.join("shop.key"));
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let add = [
        "cert",
        "add",
        "shop.example.com",
        "--cert",
        crt,
        "--key",
        key,
    ];

    // Without a token, or with a read-only one: refused, nothing stored.
    let out = c.cli(0, None, &add);
    assert!(!out.status.success());
    let (reader, _) = c.create_token(&["read"]);
    let out = c.cli(0, Some(&reader), &add);
    assert!(!out.status.success(), "a read token added a certificate");
    let out = c.cli(0, Some(&mgmt), &add);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("key sealed"));
    let stored = Instant::now();

    // Every server's gateway serves it.
    let ca = d.join("ca.pem").display().to_string();
    for (i, (_, https)) in ports.iter().enumerate() {
        let https = *https;
        loop {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", "--cacert", &ca, "--http2"])
                .args(["--resolve", &format!("shop.example.com:{https}:127.0.0.1")])
                .args(["-w", " %{http_version}"])
                .arg(format!("https://shop.example.com:{https}/"))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "shop 2" {
                break;
            }
            assert!(
                stored.elapsed() < Duration::from_secs(10),
                "gateway of s{} never served it: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "all 3 gateways served the certificate {:?} after it was stored",
        stored.elapsed()
    );

    // The listing (read access suffices) says the key is sealed and never contains it.
    let out = c.cli(0, Some(&reader), &["cert", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list[0]["host"], "shop.example.com");
    assert_eq!(list[0]["key_sealed"], true);
    assert_eq!(list[0]["issuer"], "CN=test-ca");

    // At rest: the store holds the key sealed, never in the clear.
    let key_pem = std::fs::read_to_string(key).unwrap();
    let snap = d.join("cluster.snapshot");
    let out = c.cli(
        0,
        Some(&mgmt),
        &["snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = stored_cert(&snap, "shop.example.com");
    assert_eq!(stored["key"]["kind"], "sealed");
    let sealed = stored["key"]["value"].as_str().unwrap();
    assert!(
        sealed.starts_with("v1.") && !sealed.contains("PRIVATE KEY"),
        "{sealed}"
    );
    let body_line = key_pem.lines().nth(1).unwrap();
    assert!(!stored.to_string().contains(body_line));

    // The key endpoint for standalone gateways: management only.
    let url = format!("{}/api/v1/gateway/certs", c.servers[1].base());
    let r = c.client(Some(&reader)).get(&url).send().await.unwrap();
    assert!(r.status() == 403 || r.status() == 401, "{}", r.status());
    let r = c.client(Some(&mgmt)).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body[0]["key_pem"].as_str().unwrap().trim(), key_pem.trim());
}
