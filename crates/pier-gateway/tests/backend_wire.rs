//! The gateway's own HTTP/1.1 client side against backends that answer with
//! hand-written bytes: every response framing a backend may use, framings it
//! must not use, interim responses, connections a backend closes while they
//! sit idle in the pool, and request bodies streamed to a real hyper backend.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a scripted backend does after it wrote a response.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
    /// Close once the connection sat idle this long.
    CloseIdleAfterMs(u64),
}

/// A backend that answers every request head (bodies are not expected) with
/// `response`, counting connections and requests.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(response: &'static [u8], after: After) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (Arc::clone(&connections), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = Arc::clone(&reqs);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            reqs.fetch_add(1, Ordering::SeqCst);
                            if s.write_all(response).await.is_err() {
                                return;
                            }
                            if after == After::Close {
                                return;
                            }
                        }
                        let read = match after {
                            After::CloseIdleAfterMs(ms) => {
                                match tokio::time::timeout(
                                    Duration::from_millis(ms),
                                    s.read(&mut chunk),
                                )
                                .await
                                {
                                    Ok(r) => r,
                                    Err(_) => return,
                                }
                            }
                            _ => s.read(&mut chunk).await,
                        };
                        match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn gateway_for(addr: SocketAddr) -> TestGateway {
    TestGateway::start(|_| {}, table(&[instance_at("web", "s1", addr, "a", true)]))
}

/// Sends `GET /` for `web.localhost` through the gateway.
async fn send_get(
    client: &reqwest::Client,
    gw: &TestGateway,
) -> reqwest::Result<reqwest::Response> {
    client
        .get(format!("http://{}/", gw.addr))
        .header("host", "web.localhost")
        .send()
        .await
}

async fn get(
    client: &reqwest::Client,
    gw: &TestGateway,
) -> (u16, String, reqwest::header::HeaderMap) {
    let resp = send_get(client, gw).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.unwrap(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_arrive_whole_and_keep_the_connection() {
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n,\r\n7\r\n world!\r\n0\r\nX-Sum: 13\r\n\r\n",
        After::KeepOpen,
    )
    .await;
    let gw = gateway_for(b.addr);
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let (status, body, headers) = get(&client, &gw).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello, world!");
        assert_eq!(headers["x-kind"], "chunked");
    }
    assert_eq!(b.requests(), 5);
    assert_eq!(
        b.connections(),
        1,
        "a chunked response read to its end leaves its connection reusable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_empty_responses() {
    // No length, no chunking: the body runs until the backend closes.
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end",
        After::Close,
    )
    .await;
    let gw = gateway_for(b.addr);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let (status, body, _) = get(&client, &gw).await;
        assert_eq!((status, body.as_str()), (200, "until the end"));
    }
    assert_eq!(
        b.connections(),
        3,
        "a close-delimited connection is never reused"
    );

    let b = Scripted::start(
        b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
        After::KeepOpen,
    )
    .await;
    let gw = gateway_for(b.addr);
    for _ in 0..3 {
        let (status, body, _) = get(&client, &gw).await;
        assert_eq!((status, body.as_str()), (204, ""));
    }
    assert_eq!(b.connections(), 1);

    // A HEAD response carries the length of the body it does not have.
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        After::KeepOpen,
    )
    .await;
    let gw = gateway_for(b.addr);
    for _ in 0..3 {
        let resp = client
            .head(format!("http://{}/", gw.addr))
            .header("host", "web.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "1000");
    }
    assert_eq!(b.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_not_forwarded() {
    let b = Scripted::start(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        After::KeepOpen,
    )
    .await;
    let gw = gateway_for(b.addr);
    let (status, body, _) = get(&reqwest::Client::new(), &gw).await;
    assert_eq!((status, body.as_str()), (200, "final"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_broken_responses_get_502() {
    let client = reqwest::Client::new();
    for (what, raw) in [
        (
            "both framing headers",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                [..],
        ),
        (
            "differing lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        (
            "101 unasked",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        ),
    ] {
        let b = Scripted::start(raw, After::KeepOpen).await;
        let gw = gateway_for(b.addr);
        let (status, body, _) = get(&client, &gw).await;
        assert_eq!(status, 502, "{what}: {body}");
    }

    // Cut off in the middle of the body: the client must see the response
    // fail, never a short body that looks complete.
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
        After::Close,
    )
    .await;
    let gw = gateway_for(b.addr);
    let sent = send_get(&client, &gw).await;
    // Either the head never arrives or the body fails: never a clean end.
    if let Ok(resp) = sent {
        assert!(resp.bytes().await.is_err(), "a truncated body must fail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_idle_connections_loses_no_get() {
    // Closes right after each response, without saying so: every pooled
    // connection is dead by the time the next request wants it.
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let gw = gateway_for(b.addr);
    let client = reqwest::Client::new();
    for i in 0..30 {
        let (status, body, _) = get(&client, &gw).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(b.requests(), 30);

    // Closes connections idle for 30 ms, like a backend with a short
    // keep-alive timeout; requests come 0–60 ms apart.
    let b = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::CloseIdleAfterMs(30),
    )
    .await;
    let gw = gateway_for(b.addr);
    for i in 0..30u64 {
        let (status, body, _) = get(&client, &gw).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
        tokio::time::sleep(Duration::from_millis((i * 7) % 60)).await;
    }
    assert_eq!(b.requests(), 30, "each request reached the backend once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_bodies_arrive_byte_exact() {
    let b = TestBackend::start("up").await;
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", true)]));
    let client = reqwest::Client::new();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();

    // Known length, larger than what the gateway buffers for replays.
    let resp = client
        .put(format!("http://{}/known", gw.addr))
        .header("host", "web.localhost")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Unknown length: the client sends chunks, the gateway re-chunks.
    let parts: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = client
        .post(format!("http://{}/chunked", gw.addr))
        .header("host", "web.localhost")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // An empty POST says Content-Length: 0.
    let resp = client
        .post(format!("http://{}/empty", gw.addr))
        .header("host", "web.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let seen = b.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "/known");
    assert_eq!(seen[0].headers["content-length"], "3000000");
    assert!(seen[0].body == big, "known-length body changed on the way");
    assert_eq!(seen[1].path, "/chunked");
    assert_eq!(seen[1].headers["transfer-encoding"], "chunked");
    assert!(!seen[1].headers.contains_key("content-length"));
    assert!(seen[1].body == big, "chunked body changed on the way");
    assert_eq!(seen[2].headers["content-length"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_bodies_arrive_byte_exact() {
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let client = reqwest::Client::new();

    let mut with_length =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    with_length.extend_from_slice(&body);
    let b = Scripted::start(Box::leak(with_length.into_boxed_slice()), After::KeepOpen).await;
    let gw = gateway_for(b.addr);
    for _ in 0..2 {
        let resp = send_get(&client, &gw).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.bytes().await.unwrap() == body,
            "length-delimited body changed"
        );
    }
    assert_eq!(b.connections(), 1);

    // The same bytes in uneven chunks.
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(70_001) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let b = Scripted::start(Box::leak(chunked.into_boxed_slice()), After::KeepOpen).await;
    let gw = gateway_for(b.addr);
    for _ in 0..2 {
        let resp = send_get(&client, &gw).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap() == body, "chunked body changed");
    }
    assert_eq!(b.connections(), 1);
}
