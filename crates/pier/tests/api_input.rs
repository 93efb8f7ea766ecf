//! Bad input to pier's API gets a 4xx JSON error with a message, changes
//! nothing, and never takes the server down.

use std::time::Duration;

use pier_testkit::net::free_port;
use pier_testkit::process::{wait_http_ok, PierProcess};
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");

async fn expect_error(resp: reqwest::Response, status: u16, needle: &str) {
    assert_eq!(resp.status().as_u16(), status, "wrong status");
    let body: Value = resp.json().await.expect("error body is JSON");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "message {message:?} does not mention {needle:?}"
    );
}

/// Sends a PUT exactly as written, bypassing URL normalisation.
async fn raw_put(port: u16, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (http, raft) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http}");
    let data = tmp.path().join("data");
    let _dev = PierProcess::spawn(
        PIER,
        "dev",
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-port",
            &http.to_string(),
            "--raft-port",
            &raft.to_string(),
            "--registry-port",
            &free_port().to_string(),
            "--gateway-port",
            &free_port().to_string(),
            "--https-port",
            &free_port().to_string(),
            "--dns-port",
            &free_port().to_string(),
            "--no-network",
        ],
        tmp.path(),
    );
    wait_http_ok(&format!("{base}/api/v1/status"), Duration::from_secs(30)).await;
    let c = reqwest::Client::new();
    // Wait until the one-member cluster accepts writes.
    for _ in 0..200 {
        let r = c
            .put(format!("{base}/api/v1/kv/ready"))
            .body("1")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unknown fields and wrong types in a JSON body.
    let r = c
        .post(format!("{base}/api/v1/txn"))
        .json(&json!({"ops": [{"op": "put", "key": "a", "value": "1", "colour": "red"}]}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "colour").await;
    let r = c
        .post(format!("{base}/api/v1/txn"))
        .json(&json!({"ops": [{"op": "put", "key": "a", "value": 5}]}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid").await;
    let r = c
        .post(format!("{base}/api/v1/txn"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "malformed").await;

    // Invalid names and sizes.
    // URL parsers resolve `..` and `%2e%2e` before sending, so these go raw.
    for path in [
        "/api/v1/kv/a/../b",
        "/api/v1/kv/a/%2e%2e/b",
        "/api/v1/kv/..",
    ] {
        let (status, body) = raw_put(http, path, "x").await;
        assert_eq!(status, 400, "{path} answered {status}: {body}");
        assert!(
            body.contains(".."),
            "{path}: error does not say what is wrong: {body}"
        );
    }
    let long_key = "k".repeat(600);
    let r = c
        .put(format!("{base}/api/v1/kv/{long_key}"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "512").await;
    let r = c
        .put(format!("{base}/api/v1/kv/big"))
        .body(vec![b'x'; 600 * 1024])
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "limit").await;
    let r = c
        .put(format!("{base}/api/v1/kv/huge"))
        // The server answers 413 without reading the body and closes the
        // connection; keep it out of the client's pool.
        .header("connection", "close")
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "body over 1 MiB");

    // Query parameters.
    let r = c
        .get(format!("{base}/api/v1/kv/ready?index=abc"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "index").await;
    let r = c
        .get(format!("{base}/api/v1/kv/ready?index=1&wait=11m"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "10m").await;
    let r = c.get(format!("{base}/api/v1/nope")).send().await.unwrap();
    expect_error(r, 404, "/api/v1/").await;

    // Nothing of the above was written, and the server still answers.
    let keys: Vec<Value> = c
        .get(format!("{base}/api/v1/kv?recurse=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = keys.iter().filter_map(|k| k["key"].as_str()).collect();
    assert_eq!(names, vec!["ready"], "bad requests wrote something");
}
