//! ACME against a real pebble (Let's Encrypt's test CA, Debian's package): a `pier dev
//! --no-agent` with `--acme-directory` pointed at pebble, a service registered through the
//! Consul API whose route tag asks for `tls=acme`. Pebble resolves every name to 127.0.0.1
//! through `pebble-challtestsrv` and validates HTTP-01 against the gateway's HTTP port, so
//! the certificate is only issued if the gateway answers the challenge from the store.
//! Checked with curl trusting pebble's root, and `pier cert ls` (JSON and table). On a secure
//! 3-server cluster pebble validates through a follower's gateway (the leader orders), and
//! every server's gateway serves the certificate, its key and the account key sealed; the
//! leader killed, the next one orders another host with the stored account. Pebble's 45 s
//! certificates are renewed under steady HTTPS load without a failed request.

mod gateway_common;
mod security_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_common::*;
use pier_testkit::net::free_port;

/// A child process killed when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Killed {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = cmd
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("{name} must be installed (apt-get install pebble): {e}"));
    Killed(child)
}

/// pebble and its DNS (every name is 127.0.0.1), validating HTTP-01 on `http_port`.
struct Pebble {
    _dns: Killed,
    _pebble: Killed,
    /// The directory URL.
    directory: String,
    /// The certificate of pebble's own HTTPS listener (trusted by pier with --acme-ca-cert).
    listener_cert: PathBuf,
    /// Pebble's issuing root, for curl.
    root: PathBuf,
}

impl Pebble {
    async fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with(dir, http_port, tls_port, None).await
    }

    /// `validity_secs`: the lifetime of the certificates pebble issues (its default is years).
    async fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
    ) -> Pebble {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let listener_cert = dir.join("pebble.crt");
        std::fs::write(&listener_cert, cert.pem()).unwrap();
        std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();
        let (listen, mgmt, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("pebble.crt"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let mut config = config;
        if let Some(secs) = validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns_child = spawn(
            dir,
            "challtestsrv",
            Command::new("pebble-challtestsrv").args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_port()),
                "-defaultIPv4",
                "127.0.0.1",
                // The gateway listens on IPv4 loopback only.
                "-defaultIPv6",
                "",
            ]),
        );
        let pebble = spawn(
            dir,
            "pebble",
            Command::new("pebble")
                .args(["-config", dir.join("pebble.json").to_str().unwrap()])
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
        );
        let directory = format!("https://127.0.0.1:{listen}/dir");
        let ca = listener_cert.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !curl(&["--cacert", &ca, &directory]).0 {
            assert!(
                Instant::now() < deadline,
                "pebble did not start: see pebble.log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ok, root_pem, err) = curl(&[
            "--cacert",
            &ca,
            &format!("https://127.0.0.1:{mgmt}/roots/0"),
        ]);
        assert!(
            ok && root_pem.contains("BEGIN CERTIFICATE"),
            "pebble root: {err}"
        );
        let root = dir.join("pebble-root.pem");
        std::fs::write(&root, root_pem).unwrap();
        Pebble {
            _dns: dns_child,
            _pebble: pebble,
            directory,
            listener_cert,
            root,
        }
    }

    fn pier_args(&self) -> Vec<String> {
        vec![
            "--acme-directory".into(),
            self.directory.clone(),
            "--acme-ca-cert".into(),
            self.listener_cert.display().to_string(),
            "--acme-email".into(),
            "ops@example.com".into(),
        ]
    }
}

/// `pier dev --no-agent` whose gateway ports are known before pebble starts (pebble must
/// know the port it validates on).
async fn dev_with_pebble(dir: &Path, pebble_http_port: Option<u16>) -> (Dev, Pebble) {
    dev_with_pebble_validity(dir, pebble_http_port, None).await
}

async fn dev_with_pebble_validity(
    dir: &Path,
    pebble_http_port: Option<u16>,
    validity_secs: Option<u64>,
) -> (Dev, Pebble) {
    dev_with_pebble_opts(dir, pebble_http_port, validity_secs, &[]).await
}

/// As `dev_with_pebble_validity`, with `extra` arguments for `pier dev`.
async fn dev_with_pebble_opts(
    dir: &Path,
    pebble_http_port: Option<u16>,
    validity_secs: Option<u64>,
    extra_args: &[&str],
) -> (Dev, Pebble) {
    // Pebble's directory port is picked inside Pebble::start, so pier starts after it;
    // Dev::start picks the gateway ports itself, so pebble validates on a port reserved
    // here and passed to pier explicitly.
    let (gateway_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start_with(
        dir,
        pebble_http_port.unwrap_or(gateway_port),
        https_port,
        validity_secs,
    )
    .await;
    let mut extra = pebble.pier_args();
    extra.extend(["--access-log".into(), "off".into()]);
    extra.extend(extra_args.iter().map(|s| s.to_string()));
    let extra_ref: Vec<&str> = extra.iter().map(String::as_str).collect();
    let dev = Dev::start_on(dir, "dev", gateway_port, https_port, &extra_ref).await;
    (dev, pebble)
}

fn cert_ls_json(dev: &Dev) -> Vec<serde_json::Value> {
    let out = dev.pier(&["cert", "ls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("cert ls --json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_acme_route_gets_a_certificate_from_pebble_through_http01() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, pebble) = dev_with_pebble(dir.path(), None).await;
    let b = backend("shop").await;
    let started = Instant::now();
    dev.register(
        "shop-1",
        "shop",
        b,
        &["urlprefix-shop.example.com tls=acme"],
    )
    .await;

    let (https, root) = (dev.https_port, pebble.root.display().to_string());
    let mut last = (false, String::new(), String::new());
    while started.elapsed() < Duration::from_secs(30) {
        let root = root.clone();
        last = tokio::task::spawn_blocking(move || {
            let resolve = format!("shop.example.com:{https}:127.0.0.1");
            let url = format!("https://shop.example.com:{https}/");
            curl(&["--cacert", &root, "--resolve", &resolve, &url])
        })
        .await
        .unwrap();
        if last.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.0 && last.1 == "shop",
        "HTTPS with pebble's certificate within 30 s: {last:?}\n{}",
        std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default()
    );
    eprintln!(
        "certificate issued and served {:?} after the service was registered",
        started.elapsed()
    );

    let certs = cert_ls_json(&dev);
    let c = certs
        .iter()
        .find(|c| c["host"] == "shop.example.com")
        .unwrap_or_else(|| panic!("shop.example.com listed: {certs:?}"));
    assert_eq!(c["source"], "acme", "{c}");
    assert!(
        c["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "issuer from pebble: {c}"
    );
    assert!(c["last_error"].is_null(), "{c}");
    assert_eq!(c["names"], serde_json::json!(["shop.example.com"]), "{c}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        c["not_after"].as_i64().unwrap() > now + 30 * 24 * 3600,
        "{c}"
    );

    // Plain HTTP still serves the route.
    assert_eq!(
        gateway_get(dev.gateway_port, "shop.example.com", "/").await,
        Some((200, "shop".into()))
    );
    // No challenge is left behind once the order is done.
    assert_eq!(
        gateway_get(
            dev.gateway_port,
            "shop.example.com",
            "/.well-known/acme-challenge/x"
        )
        .await
        .map(|r| r.1),
        Some("shop".into()),
        "an unknown token goes to the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acme_challenge_tls_alpn_01_the_certificate_comes_through_the_https_listener() {
    let dir = tempfile::tempdir().unwrap();
    // Pebble's HTTP-01 port is bound but never listened on: only TLS-ALPN-01, validated on
    // the gateway's HTTPS port, can get this certificate issued.
    let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
    closed_socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let closed = closed_socket.local_addr().unwrap().port();
    let (dev, pebble) = dev_with_pebble_opts(
        dir.path(),
        Some(closed),
        None,
        &["--acme-challenge", "tls-alpn-01"],
    )
    .await;
    let b = backend("alpn").await;
    let started = Instant::now();
    dev.register(
        "alpn-1",
        "alpn",
        b,
        &["urlprefix-alpn.example.com tls=acme"],
    )
    .await;

    let (https, root) = (dev.https_port, pebble.root.display().to_string());
    let mut last = (false, String::new(), String::new());
    while started.elapsed() < Duration::from_secs(30) {
        let root = root.clone();
        last = tokio::task::spawn_blocking(move || {
            let resolve = format!("alpn.example.com:{https}:127.0.0.1");
            let url = format!("https://alpn.example.com:{https}/");
            curl(&["--cacert", &root, "--resolve", &resolve, &url])
        })
        .await
        .unwrap();
        if last.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
    assert!(
        last.0 && last.1 == "alpn",
        "HTTPS with pebble's certificate within 30 s: {last:?}\n{log}"
    );
    eprintln!(
        "certificate issued through TLS-ALPN-01 and served {:?} after the service was registered",
        started.elapsed()
    );
    assert!(
        log.contains("answering an ACME challenge") && log.contains("tls-alpn-01"),
        "the manager chose tls-alpn-01:\n{log}"
    );
    assert!(
        log.contains("answered an ACME TLS-ALPN-01 validation"),
        "the gateway answered pebble's validation handshake:\n{log}"
    );
    let certs = cert_ls_json(&dev);
    let c = certs
        .iter()
        .find(|c| c["host"] == "alpn.example.com")
        .unwrap_or_else(|| panic!("alpn.example.com listed: {certs:?}"));
    assert_eq!(c["source"], "acme", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    assert!(
        c["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "issuer from pebble: {c}"
    );

    // No validation certificate is left behind: a handshake offering only acme-tls/1 fails
    // now, and an ordinary one gets the issued certificate.
    let text = tokio::task::spawn_blocking(move || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{https} -servername alpn.example.com \
                 -alpn acme-tls/1 </dev/null 2>&1"
            ))
            .output()
            .expect("openssl is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(
        !text.contains("BEGIN CERTIFICATE") && !text.contains("acme-tls/1"),
        "an acme-tls/1 handshake after the order: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswerable_challenge_shows_its_error_in_cert_ls_and_http_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // Pebble validates on a port that is bound but never listened on, so the connection is
    // refused and the challenge cannot succeed. The socket stays bound for the whole test: a
    // port merely found free could be taken by another test's listener meanwhile (CI once saw
    // pebble get a 404 from some other gateway there).
    let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
    closed_socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let closed = closed_socket.local_addr().unwrap().port();
    let (dev, _pebble) = dev_with_pebble(dir.path(), Some(closed)).await;
    let b = backend("broken").await;
    dev.register(
        "broken-1",
        "broken",
        b,
        &["urlprefix-broken.example.com tls=acme"],
    )
    .await;

    let mut listed = None;
    eventually("the ACME error in cert ls", Duration::from_secs(30), || {
        let certs = cert_ls_json(&dev);
        listed = certs
            .into_iter()
            .find(|c| c["host"] == "broken.example.com" && c["last_error"].is_string());
        std::future::ready(listed.is_some())
    })
    .await;
    let c = listed.unwrap();
    assert_eq!(c["source"], "acme", "{c}");
    let err = c["last_error"].as_str().unwrap();
    assert!(
        err.contains("invalid") || err.contains("Invalid") || err.contains("connection"),
        "the CA's reason is shown: {err}"
    );
    eprintln!("cert ls last_error: {err}");

    let out = dev.pier(&["cert", "ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("broken.example.com"))
        .unwrap_or_else(|| panic!("a row for the host: {table}"));
    assert!(row.contains("acme") && row.contains(&err[..20]), "{row}");

    assert_eq!(
        gateway_get(dev.gateway_port, "broken.example.com", "/").await,
        Some((200, "broken".into())),
        "plain HTTP keeps serving"
    );

    // The route gone, its error goes too.
    let r = reqwest::Client::new()
        .put(format!(
            "{}/v1/agent/service/deregister/broken-1",
            dev.addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("the error leaves cert ls", Duration::from_secs(10), || {
        let certs = cert_ls_json(&dev);
        std::future::ready(!certs.iter().any(|c| c["host"] == "broken.example.com"))
    })
    .await;
}

/// The stored records of `table` in a snapshot archive, as text.
fn stored_records(snapshot: &Path, table: &str) -> Vec<String> {
    pier_testkit::snapshot::stored_records(snapshot, table)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).expect("a UTF-8 record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_servers_a_follower_answers_every_gateway_serves_and_the_next_leader_reuses_the_account(
) {
    use security_common::{stderr, SecureCluster};
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    // Pebble validates through the third server's gateway; the first server bootstraps and
    // leads, so the challenge is answered by a gateway on another server than the orderer.
    let pebble = Pebble::start(d, ports[2].0, ports[2].1).await;
    let acme = pebble.pier_args();
    let mut c = SecureCluster::start_each(d, 3, |i| {
        let mut args = vec![
            "--gateway-port".into(),
            ports[i].0.to_string(),
            "--gateway-https-port".into(),
            ports[i].1.to_string(),
            "--access-log".into(),
            "off".into(),
        ];
        args.extend(acme.iter().cloned());
        args
    })
    .await;
    let mgmt = c.management_token();
    let b = backend("shop").await;
    let reg = serde_json::json!({
        "ID": "shop-1", "Name": "shop", "Address": "127.0.0.1", "Port": b.port(),
        "Tags": ["urlprefix-shop.example.com tls=acme"]
    });
    let r = c
        .client(Some(&mgmt))
        .put(format!("{}/v1/agent/service/register", c.servers[1].base()))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let registered = Instant::now();

    let root_pem = pebble.root.display().to_string();
    for (i, (_, https)) in ports.iter().enumerate() {
        let (https, root_pem) = (*https, root_pem.clone());
        let mut last;
        loop {
            let root_pem = root_pem.clone();
            last = tokio::task::spawn_blocking(move || {
                let resolve = format!("shop.example.com:{https}:127.0.0.1");
                let url = format!("https://shop.example.com:{https}/");
                curl(&["--cacert", &root_pem, "--resolve", &resolve, &url])
            })
            .await
            .unwrap();
            if last.0 && last.1 == "shop" {
                break;
            }
            assert!(
                registered.elapsed() < Duration::from_secs(30),
                "gateway of s{} never served pebble's certificate: {last:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "all 3 gateways served the ACME certificate {:?} after the service was registered",
        registered.elapsed()
    );

    // One server ordered (the leader), and not the one whose gateway pebble validated through.
    let ordered: Vec<usize> = (0..3)
        .filter(|i| {
            std::fs::read_to_string(d.join(format!("s{}.log", i + 1)))
                .unwrap_or_default()
                .contains("ordering an ACME certificate")
        })
        .collect();
    assert_eq!(ordered.len(), 1, "servers that ordered: {ordered:?}");
    assert_ne!(
        ordered[0], 2,
        "s3 led: the cross-server answer was not exercised"
    );

    let out = c.cli(2, Some(&mgmt), &["cert", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["host"], "shop.example.com", "{list}");
    assert_eq!(list[0]["source"], "acme", "{list}");
    assert_eq!(list[0]["key_sealed"], true, "{list}");
    assert!(
        list[0]["issuer"].as_str().unwrap().contains("Pebble"),
        "{list}"
    );

    // At rest: the certificate key and the ACME account key are sealed, no challenge remains.
    let snap = d.join("cluster.snapshot");
    let out = c.cli(
        0,
        Some(&mgmt),
        &["snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let certs = stored_records(&snap, "gateway_certs");
    assert_eq!(certs.len(), 1);
    assert!(certs[0].contains("\"sealed\"") && !certs[0].contains("PRIVATE KEY"));
    let accounts = stored_records(&snap, "acme_account");
    assert_eq!(accounts.len(), 1, "one account for the cluster");
    let account: serde_json::Value = serde_json::from_str(&accounts[0]).unwrap();
    assert_eq!(account["sealed"], true, "{account}");
    assert!(!accounts[0].contains("key_pkcs8"), "{account}");
    assert!(stored_records(&snap, "acme_challenges").is_empty());

    // The leader killed: the next one orders a second host with the stored account.
    c.servers[ordered[0]]
        .proc
        .as_mut()
        .expect("the leader runs")
        .kill9();
    let killed = Instant::now();
    let survivor = (0..3).find(|i| *i != ordered[0]).unwrap();
    let reg = serde_json::json!({
        "ID": "blog-1", "Name": "blog", "Address": "127.0.0.1", "Port": b.port(),
        "Tags": ["urlprefix-blog.example.com tls=acme"]
    });
    eventually(
        "blog registered after the failover",
        Duration::from_secs(30),
        || {
            let req = c
                .client(Some(&mgmt))
                .put(format!(
                    "{}/v1/agent/service/register",
                    c.servers[survivor].base()
                ))
                .json(&reg)
                .send();
            async move { req.await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    let https = ports[2].1;
    let mut last;
    loop {
        let root_pem = root_pem.clone();
        last = tokio::task::spawn_blocking(move || {
            let resolve = format!("blog.example.com:{https}:127.0.0.1");
            let url = format!("https://blog.example.com:{https}/");
            curl(&["--cacert", &root_pem, "--resolve", &resolve, &url])
        })
        .await
        .unwrap();
        if last.0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(45),
            "blog.example.com never served after the failover: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "after the leader was killed, the next leader's certificate was served {:?} later",
        killed.elapsed()
    );
    let logs: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(d.join(format!("s{}.log", i + 1))).unwrap_or_default())
        .collect();
    let registered = logs
        .iter()
        .map(|l| l.matches("ACME account registered").count())
        .sum::<usize>();
    assert_eq!(registered, 1, "the new leader reused the stored account");
    let orderers = logs
        .iter()
        .filter(|l| l.contains("ordering an ACME certificate"))
        .count();
    assert_eq!(orderers, 2, "the second host was ordered by the new leader");
}

/// The expiry (`notAfter=...`) of the certificate the gateway on `port` serves for `host`.
fn served_end_date(port: u16, host: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {host} </dev/null 2>/dev/null \
             | openssl x509 -noout -enddate"
        ))
        .output()
        .expect("openssl is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_under_steady_https_load_with_no_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // 45 s certificates: renewed a third of their lifetime before expiry, about 30 s in.
    let (dev, pebble) = dev_with_pebble_validity(dir.path(), None, Some(45)).await;
    let b = backend("shop").await;
    dev.register(
        "shop-1",
        "shop",
        b,
        &["urlprefix-shop.example.com tls=acme"],
    )
    .await;
    let not_after = |dev: &Dev| {
        cert_ls_json(dev)
            .iter()
            .find(|c| c["host"] == "shop.example.com" && c["not_after"].as_i64() > Some(0))
            .and_then(|c| c["not_after"].as_i64())
    };
    let mut first = None;
    eventually("the first certificate", Duration::from_secs(30), || {
        first = not_after(&dev);
        std::future::ready(first.is_some())
    })
    .await;
    let first = first.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        first - now <= 45,
        "pebble issued a 45 s certificate: {} s left",
        first - now
    );
    let https = dev.https_port;
    let before = served_end_date(https, "shop.example.com");

    // Steady load: one new TLS connection (a full handshake) per request, back to back.
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let root = pebble.root.display().to_string();
        std::thread::spawn(move || {
            let resolve = format!("shop.example.com:{https}:127.0.0.1");
            let url = format!("https://shop.example.com:{https}/");
            let (mut errors, mut handshakes) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let w = ["-w", " %{time_appconnect}"];
                let r = curl(&["--cacert", &root, "--resolve", &resolve, w[0], w[1], &url]);
                match r.1.split_once(' ') {
                    Some(("shop", secs)) if r.0 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        handshakes.push((Instant::now(), secs.parse::<f64>().unwrap_or(f64::NAN)));
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{} {}", r.1, r.2));
                    }
                }
            }
            (errors, handshakes)
        })
    };
    let started = Instant::now();
    let mut renewed = None;
    eventually("the renewed certificate", Duration::from_secs(60), || {
        renewed = not_after(&dev).filter(|n| *n > first);
        std::future::ready(renewed.is_some())
    })
    .await;
    let renewed_at = Instant::now();
    eprintln!("renewed {:?} into the load", started.elapsed());
    // Keep the load on while every gateway path picks the new certificate up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (errors, handshakes) = load.join().unwrap();
    // Handshake (TCP + TLS) times, over the whole run and within a second of the swap.
    let p99 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (
            v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN) * 1e3,
            v.len(),
        )
    };
    let all = p99(handshakes.iter().map(|h| h.1).collect());
    let near = p99(handshakes
        .iter()
        .filter(|h| {
            h.0 + Duration::from_secs(1) >= renewed_at && h.0 <= renewed_at + Duration::from_secs(1)
        })
        .map(|h| h.1)
        .collect());
    eprintln!(
        "handshake p99 {:.2} ms over {} requests; {:.2} ms over the {} within 1 s of the swap",
        all.0, all.1, near.0, near.1
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("requests during renewal: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 20, "the load ran: {ok}");
    let after = served_end_date(https, "shop.example.com");
    assert!(
        before.starts_with("notAfter=") && after.starts_with("notAfter=") && after != before,
        "the gateway serves the renewed certificate: {before} -> {after}"
    );
}
