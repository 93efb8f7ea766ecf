//! Protocols and hostile input through a real gateway: WebSocket, h2c,
//! header limits, request smuggling, slow clients, body limits. Raw-socket
//! tests write bytes that no well-behaved client library would send.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Writes `request`, then reads until the gateway closes the connection (or
/// 3 s pass). Returns what was read and whether the connection was closed.
async fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_until_close(&mut s, Duration::from_secs(3)).await
}

async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

fn status_lines(resp: &str) -> usize {
    resp.matches("HTTP/1.1 ").count()
}

async fn ws_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let backend = ws_echo_backend().await;
    let gw = TestGateway::start(
        |_| {},
        table(&[instance_at("chat", "c1", backend, "a", true)]),
    );
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.localhost/socket", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnel_is_closed() {
    let backend = ws_echo_backend().await;
    let gw = TestGateway::start(
        |c| c.timeouts.idle_ms = 300,
        table(&[instance_at("chat", "c1", backend, "a", true)]),
    );
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat.localhost/", tcp)
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .unwrap();
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_request() {
    let b = TestBackend::start("h2b").await;
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", true)]));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("web.localhost", gw.addr)
        .build()
        .unwrap();
    let url = format!("http://web.localhost:{}/h2?x=1", gw.addr.port());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { c.get(url).send().await.unwrap() },
        ));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "h2b");
    }
    let post = c.post(&url).body("over h2").send().await.unwrap();
    assert_eq!(post.status(), 200);
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.body, Bytes::from("over h2"));
    assert_eq!(seen.path, "/h2?x=1");
    assert_eq!(
        seen.headers["host"],
        format!("web.localhost:{}", gw.addr.port()).as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    let b = TestBackend::start("w").await;
    let gw = TestGateway::start(
        |c| {
            c.limits.max_header_bytes = 16 * 1024;
            c.limits.max_headers = 50;
        },
        table(&[instance("web", &b, "a", true)]),
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (resp, closed) = raw(gw.addr, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(closed);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: web.localhost\r\n");
    for i in 0..60 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (resp, _) = raw(gw.addr, many.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    let (resp, _) = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_a_backend_ambiguously() {
    let b = TestBackend::start("w").await;
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", true)]));

    // Both framing headers, in both orders, with a second request hidden in
    // what Content-Length would call the body: hyper takes chunked, drops
    // Content-Length and closes after one response, so the hidden request is
    // never parsed, and the backend sees one request framed by the gateway.
    for req in [
        "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
    ] {
        let (resp, closed) = raw(gw.addr, req.as_bytes()).await;
        assert!(closed, "connection must close after an ambiguous request");
        assert_eq!(status_lines(&resp), 1, "{resp}");
        assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.1 400"), "{resp}");
    }
    for seen in b.seen() {
        assert_eq!(seen.path, "/");
        let te = seen.headers.contains_key("transfer-encoding");
        let cl = seen.headers.contains_key("content-length");
        assert!(
            !(te && cl),
            "backend got both framing headers: {:?}",
            seen.headers
        );
        assert!(seen.body.is_empty());
    }

    let before = b.hits();
    for (what, req) in [
        ("differing Content-Length", "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ("Content-Length list", "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4, 5\r\n\r\nabcde"),
        ("negative Content-Length", "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: -1\r\n\r\n"),
        ("TE not chunked", "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: identity\r\n\r\nabc"),
        ("TE coding before chunked", "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE twice", "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("space before colon", "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("missing Host", "GET / HTTP/1.1\r\n\r\n"),
    ] {
        let (resp, closed) = raw(gw.addr, req.as_bytes()).await;
        assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
        assert!(closed, "{what}: connection left open");
    }
    assert_eq!(b.hits(), before, "a malformed request reached the backend");

    // A malformed chunk is only found while streaming: the backend may have
    // seen the head, its body is cut off, the client gets 400 and a close.
    let (resp, closed) = raw(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_after_the_header_timeout() {
    let b = TestBackend::start("w").await;
    let gw = TestGateway::start(
        |c| c.timeouts.header_read_ms = 300,
        table(&[instance("web", &b, "a", true)]),
    );
    // Connects and says nothing.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut silent, Duration::from_secs(3)).await;
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Sends a header byte every 100 ms: never completes the head.
    let mut drip = TcpStream::connect(gw.addr).await.unwrap();
    drip.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if drip.write_all(b"X").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), drip.read(&mut buf)).await
        {
            let _ = n;
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("slowloris connection still open after 3 s");
    assert!(
        closed_after < Duration::from_millis(1500),
        "{closed_after:?}"
    );
    assert_eq!(b.hits(), 0);

    // A kept-alive connection that goes quiet is closed the same way.
    let mut ka = TcpStream::connect(gw.addr).await.unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_until_close(&mut ka, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_get_413() {
    let b = TestBackend::start("w").await;
    let gw = TestGateway::start(
        |c| c.limits.max_body_bytes = 1024,
        table(&[instance("web", &b, "a", true)]),
    );
    let c = client();
    let r = c
        .post(gw.url("/upload"))
        .header("host", "web.localhost")
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("1024"));
    assert_eq!(
        b.hits(),
        0,
        "declared oversize body must not reach a backend"
    );

    // Chunked, no length up front: cut off while streaming.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'y'; 512]))).collect();
    let r = c
        .post(gw.url("/upload"))
        .header("host", "web.localhost")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = c
        .post(gw.url("/upload"))
        .header("host", "web.localhost")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_still_gets_its_answer() {
    // Like `nc -N` or a client that shuts its write side after the request:
    // the request is still answered (HAProxy's default too).
    let b = TestBackend::start("hc").await;
    b.set_delay_ms(100);
    let gw = TestGateway::start(|_| {}, table(&[instance("web", &b, "a", true)]));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let (resp, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hc"), "{resp}");
    assert!(closed);
    assert_eq!(b.hits(), 1);
}
