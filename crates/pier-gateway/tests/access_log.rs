//! The access log: one structured `tracing` event per request, with the
//! fields operators filter on, written through a real JSON subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_one_structured_access_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("pier_gateway::access=info")
        .with_writer(move || writer.clone())
        .init();

    let b = TestBackend::start("w1").await;
    let gw = TestGateway::start(
        |c| c.zone = "a".into(),
        table(&[instance("web", &b, "a", true)]),
    );
    let c = client();
    let r = c
        .get(gw.url("/hello?x=1"))
        .header("host", "web.localhost")
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "w1");
    let (status, _) = get(&c, &gw, "nowhere.localhost", "/").await;
    assert_eq!(status, 404);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = &lines[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "web.localhost");
    assert_eq!(ok["path"], "/hello");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["service"], "web");
    assert_eq!(ok["backend"], b.addr.to_string());
    assert_eq!(ok["zone"], "a");
    assert_eq!(ok["request_id"], "trace-me-1");
    assert_eq!(ok["attempts"], 1);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    let missing = &lines[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["host"], "nowhere.localhost");
    assert_eq!(missing["service"], "-");
    assert_eq!(missing["backend"], "-");
    assert_eq!(missing["request_id"].as_str().unwrap().len(), 36);
}
