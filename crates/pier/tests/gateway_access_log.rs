//! The gateway's access log in a real `pier dev`: one combined-format line per request in the
//! `--access-log` file, all of them there after SIGTERM, and after logrotate's
//! `mv` + SIGHUP the next lines land in a new file at the same path.

mod gateway_common;

use std::time::Duration;

use gateway_common::*;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn get_n(port: u16, n: usize, tag: &str) {
    for i in 0..n {
        let (status, body) = gateway_get(port, "web.localhost", &format!("/{tag}/{i}?q=1"))
            .await
            .expect("gateway answers");
        assert_eq!((status, body.as_str()), (200, "web"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_file_has_every_request_and_follows_logrotate() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let log_arg = log.display().to_string();
    let mut dev = Dev::start(dir.path(), "dev", &["--access-log", &log_arg]).await;
    let b = backend("web").await;
    dev.register("web-1", "web", b, &[]).await;
    let gw = dev.gateway_port;
    eventually("web routed", Duration::from_secs(10), || async {
        matches!(gateway_get(gw, "web.localhost", "/").await, Some((200, _)))
    })
    .await;
    // Lines written so far (the readiness polls) are set aside: count from here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = lines(&log).len();

    get_n(gw, 50, "first").await;
    // Flushed within a second without any shutdown.
    eventually(
        "lines flushed within 1 s",
        Duration::from_millis(1500),
        || async { lines(&log).len() == before + 50 },
    )
    .await;
    let first = lines(&log);
    let sample = first
        .iter()
        .find(|l| l.contains("/first/7?q=1"))
        .expect("line of request 7");
    // Combined format: peer, time, request line, status, bytes, referer, user agent.
    assert!(sample.starts_with("127.0.0.1 - - ["), "{sample}");
    assert!(
        sample.contains("] \"GET /first/7?q=1 HTTP/1.1\" 200 3 \"-\" \"-\""),
        "{sample}"
    );

    // logrotate: move the file, SIGHUP; new requests go to a new file at the old path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &dev.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("new file opened", Duration::from_secs(3), || async {
        log.exists()
    })
    .await;
    get_n(gw, 30, "second").await;

    // SIGTERM right away: every line must be written before the process exits.
    let status = dev
        .process
        .signal_and_wait("TERM", Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let old = lines(&rotated);
    let new = lines(&log);
    assert_eq!(old.len(), before + 50, "rotated file: {old:#?}");
    assert!(old.iter().all(|l| !l.contains("/second/")));
    let second: Vec<_> = new.iter().filter(|l| l.contains("/second/")).collect();
    assert_eq!(second.len(), 30, "new file: {new:#?}");
    assert_eq!(
        new.len(),
        30,
        "only the new requests in the new file: {new:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_gateway_writes_json_lines_and_all_of_them_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), "dev", &["--access-log", "off"]).await;
    let b = backend("web").await;
    dev.register("web-1", "web", b, &[]).await;
    let port = pier_testkit::net::free_port();
    let log = dir.path().join("gw-access.log");
    let mut gw = pier_testkit::process::PierProcess::spawn(
        PIER,
        "gateway",
        &[
            "gateway",
            "--server",
            &dev.addr(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-format",
            "json",
        ],
        dir.path(),
    );
    eventually("web routed", Duration::from_secs(10), || async {
        matches!(
            gateway_get(port, "web.localhost", "/").await,
            Some((200, _))
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = lines(&log).len();
    get_n(port, 40, "json").await;
    // Straight to SIGTERM: the lines still in the writer's buffer must reach the file.
    let signalled = std::time::Instant::now();
    let status = gw
        .signal_and_wait("TERM", Duration::from_secs(20))
        .expect("exits on SIGTERM");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    let all = lines(&log);
    assert_eq!(all.len(), before + 40, "{all:#?}");
    let v: serde_json::Value = serde_json::from_str(all.last().unwrap()).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/json/39?q=1");
    assert_eq!(v["host"], "web.localhost");
    assert_eq!(v["status"], 200);
    assert_eq!(v["service"], "web");
    assert_eq!(v["backend"], b.to_string());
    assert_eq!(v["remote"], "127.0.0.1");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}
