//! One evaluation of an HTTP, TCP or script check.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::model::{CheckKind, CheckStatus};

/// Most bytes of a check's output that are stored (Consul keeps 4 KiB), marker included.
pub const MAX_OUTPUT_BYTES: usize = 4096;

const TRUNCATED_MARKER: &str = " ...(truncated)";

/// `s` cut to at most [`MAX_OUTPUT_BYTES`] bytes (on a character boundary), ending with a
/// marker when something was cut. Applies to probe outputs and to reported outputs alike.
pub fn cap_output(s: &str) -> String {
    if s.len() <= MAX_OUTPUT_BYTES {
        return s.to_string();
    }
    let mut cut = MAX_OUTPUT_BYTES - TRUNCATED_MARKER.len();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(MAX_OUTPUT_BYTES);
    out.push_str(&s[..cut]);
    out.push_str(TRUNCATED_MARKER);
    out
}

fn truncate(s: String) -> String {
    if s.len() <= MAX_OUTPUT_BYTES {
        s
    } else {
        cap_output(&s)
    }
}

/// Reads at most `limit` bytes of a response body; the rest is never buffered.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() <= limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(limit + 1);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Consul's mapping of HTTP status codes.
pub fn http_status(code: u16) -> CheckStatus {
    match code {
        200..=299 => CheckStatus::Passing,
        429 => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    }
}

/// Consul's mapping of script exit codes.
pub fn exit_status(code: Option<i32>) -> CheckStatus {
    match code {
        Some(0) => CheckStatus::Passing,
        Some(1) => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    }
}

/// The HTTP client of probes: its user agent, and redirects followed only within the checked
/// host (at most 10), so a redirect cannot take a probe to an address nobody vetted.
pub fn http_client(pinned: Option<(&str, &[SocketAddr])>) -> reqwest::Client {
    let same_host = reqwest::redirect::Policy::custom(|attempt| {
        let original = attempt.previous().first().and_then(|u| u.host_str());
        if attempt.previous().len() >= 10 || attempt.url().host_str() != original {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent("pier-health-check/1")
        .redirect(same_host);
    if let Some((host, addrs)) = pinned {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    builder.build().unwrap_or_default()
}

/// Runs one probe of `kind` with `timeout`, connecting only to `pinned` (the addresses
/// [`super::allow::vet_check`] vetted) when given. TTL, heartbeat and manual checks are not
/// probed.
pub async fn probe(
    client: &reqwest::Client,
    kind: &CheckKind,
    timeout: Duration,
    pinned: &[SocketAddr],
) -> (CheckStatus, String) {
    match kind {
        CheckKind::Http {
            url,
            method,
            headers,
            body,
            ..
        } => {
            // A host name is resolved to the vetted addresses only (an address needs nothing).
            let named = reqwest::Url::parse(url).ok().and_then(|u| {
                let host = u.host_str()?;
                let literal = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
                (!literal).then(|| host.to_string())
            });
            match named.filter(|_| !pinned.is_empty()) {
                Some(host) => {
                    let client = http_client(Some((&host, pinned)));
                    probe_http(&client, url, method, headers, body, timeout).await
                }
                None => probe_http(client, url, method, headers, body, timeout).await,
            }
        }
        CheckKind::Tcp { address } => probe_tcp(address, pinned, timeout).await,
        CheckKind::Script { args } => probe_script(args, timeout).await,
        CheckKind::Ttl { .. } | CheckKind::Heartbeat | CheckKind::Manual => {
            (CheckStatus::Critical, "not a probed check".to_string())
        }
    }
}

async fn probe_http(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    timeout: Duration,
) -> (CheckStatus, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = client.request(method.clone(), url).timeout(timeout);
    for (name, values) in headers {
        for v in values {
            req = req.header(name.as_str(), v.as_str());
        }
    }
    if !body.is_empty() {
        req = req.body(body.to_string());
    }
    let attempt = async {
        let resp = req.send().await?;
        let code = resp.status();
        let text = read_capped(resp, MAX_OUTPUT_BYTES).await;
        Ok::<_, reqwest::Error>((code, text))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((code, text))) => (
            http_status(code.as_u16()),
            truncate(format!("HTTP {method} {url}: {code} Output: {text}")),
        ),
        Ok(Err(e)) if e.is_timeout() => (
            CheckStatus::Critical,
            format!(
                "HTTP {method} {url}: timed out after {} ms",
                timeout.as_millis()
            ),
        ),
        Ok(Err(e)) => {
            // reqwest's top-level message is generic; the sources say what failed.
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                source = s.source();
            }
            (
                CheckStatus::Critical,
                truncate(format!("HTTP {method} {url}: {detail}")),
            )
        }
        Err(_) => (
            CheckStatus::Critical,
            format!(
                "HTTP {method} {url}: timed out after {} ms",
                timeout.as_millis()
            ),
        ),
    }
}

async fn probe_tcp(
    address: &str,
    pinned: &[SocketAddr],
    timeout: Duration,
) -> (CheckStatus, String) {
    let connect = async {
        if pinned.is_empty() {
            tokio::net::TcpStream::connect(address).await
        } else {
            tokio::net::TcpStream::connect(pinned).await
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_stream)) => (
            CheckStatus::Passing,
            format!("TCP connect {address}: Success"),
        ),
        Ok(Err(e)) => (CheckStatus::Critical, format!("TCP connect {address}: {e}")),
        Err(_) => (
            CheckStatus::Critical,
            format!(
                "TCP connect {address}: timed out after {} ms",
                timeout.as_millis()
            ),
        ),
    }
}

async fn probe_script(args: &[String], timeout: Duration) -> (CheckStatus, String) {
    let Some((program, rest)) = args.split_first() else {
        return (CheckStatus::Critical, "no program to run".to_string());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                CheckStatus::Critical,
                format!("cannot run {program:?}: {e}"),
            )
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s
                    .take(MAX_OUTPUT_BYTES as u64 * 2)
                    .read_to_end(&mut out)
                    .await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s
                    .take(MAX_OUTPUT_BYTES as u64 * 2)
                    .read_to_end(&mut err)
                    .await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((Ok(status), out, err)) => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&String::from_utf8_lossy(&err));
            (exit_status(status.code()), truncate(text))
        }
        Ok((Err(e), _, _)) => (
            CheckStatus::Critical,
            format!("waiting for {program:?}: {e}"),
        ),
        // The future owning the child is dropped here; kill_on_drop ends the process.
        Err(_) => (
            CheckStatus::Critical,
            format!(
                "Timed out ({} ms) running check {program:?}",
                timeout.as_millis()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(http_status(200), CheckStatus::Passing);
        assert_eq!(http_status(204), CheckStatus::Passing);
        assert_eq!(http_status(429), CheckStatus::Warning);
        assert_eq!(http_status(500), CheckStatus::Critical);
        assert_eq!(http_status(301), CheckStatus::Critical);
        assert_eq!(exit_status(Some(0)), CheckStatus::Passing);
        assert_eq!(exit_status(Some(1)), CheckStatus::Warning);
        assert_eq!(exit_status(Some(2)), CheckStatus::Critical);
        assert_eq!(exit_status(None), CheckStatus::Critical);
    }

    #[test]
    fn outputs_are_capped_at_4_kib_on_a_char_boundary() {
        assert_eq!(cap_output("short"), "short");
        let exact = "x".repeat(MAX_OUTPUT_BYTES);
        assert_eq!(cap_output(&exact), exact);
        let huge = "é".repeat(MAX_OUTPUT_BYTES);
        let capped = cap_output(&huge);
        assert!(capped.len() <= MAX_OUTPUT_BYTES, "{}", capped.len());
        assert!(capped.len() > MAX_OUTPUT_BYTES - 32);
        assert!(capped.ends_with(TRUNCATED_MARKER));
        assert_eq!(truncate(huge), capped);
    }

    #[tokio::test]
    async fn script_and_tcp_probes() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let t = Duration::from_secs(5);
        assert_eq!(
            probe_script(&sh("echo ok"), t).await.0,
            CheckStatus::Passing
        );
        assert_eq!(probe_script(&sh("exit 1"), t).await.0, CheckStatus::Warning);
        assert_eq!(
            probe_script(&sh("exit 3"), t).await.0,
            CheckStatus::Critical
        );
        let (s, out) = probe_script(&sh("sleep 5"), Duration::from_millis(200)).await;
        assert_eq!(s, CheckStatus::Critical);
        assert!(out.contains("Timed out"), "{out}");
        assert_eq!(
            probe_script(&["/nonexistent/x".to_string()], t).await.0,
            CheckStatus::Critical
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(probe_tcp(&addr, &[], t).await.0, CheckStatus::Passing);
        drop(listener);
        assert_eq!(probe_tcp(&addr, &[], t).await.0, CheckStatus::Critical);
    }

    /// A tiny HTTP server: `/` answers 200, `/away` redirects to `elsewhere`, `/here` to `/`.
    async fn serve(elsewhere: String) -> SocketAddr {
        use axum::response::Redirect;
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/here", get(|| async { Redirect::temporary("/") }))
            .route(
                "/away",
                get(move || async move { Redirect::temporary(&elsewhere) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn http(url: String) -> CheckKind {
        CheckKind::Http {
            url,
            method: "GET".into(),
            headers: Default::default(),
            body: String::new(),
            tls_skip_verify: false,
        }
    }

    #[tokio::test]
    async fn probes_connect_to_the_vetted_addresses_only() {
        let t = Duration::from_secs(5);
        let client = http_client(None);
        let addr = serve("http://other.invalid/".into()).await;
        // A name that resolves nowhere now: the probe uses the addresses vetted before, so a
        // name whose answer changed since (DNS rebinding) cannot move it.
        let url = format!("http://vetted.invalid:{}/", addr.port());
        let (status, out) = probe(&client, &http(url.clone()), t, &[addr]).await;
        assert_eq!(status, CheckStatus::Passing, "{out}");
        let (status, _) = probe(&client, &http(url), t, &[]).await;
        assert_eq!(
            status,
            CheckStatus::Critical,
            "unpinned, the name does not resolve"
        );
        let tcp = CheckKind::Tcp {
            address: format!("vetted.invalid:{}", addr.port()),
        };
        assert_eq!(
            probe(&client, &tcp, t, &[addr]).await.0,
            CheckStatus::Passing
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_within_the_checked_host_only() {
        let t = Duration::from_secs(5);
        let client = http_client(None);
        let target = serve(String::new()).await;
        let addr = serve(format!("http://localhost:{}/", target.port())).await;
        let here = format!("http://127.0.0.1:{}/here", addr.port());
        assert_eq!(
            probe(&client, &http(here), t, &[addr]).await.0,
            CheckStatus::Passing
        );
        // To another host (which answers 200): not followed, the 307 is what counts.
        let away = format!("http://127.0.0.1:{}/away", addr.port());
        let (status, out) = probe(&client, &http(away), t, &[addr]).await;
        assert_eq!(status, CheckStatus::Critical, "{out}");
        assert!(out.contains("307"), "{out}");
    }
}
