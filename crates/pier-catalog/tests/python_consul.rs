//! A real Consul client library from PyPI (py-consul) against the API: registration with an
//! HTTP check served by this test, health with `passing`, KV put/get/cas/recurse/keys, and a
//! blocking query. py-consul is installed into a venv under the target directory if missing;
//! the test fails loudly if that is impossible.

mod common;

use std::path::{Path, PathBuf};

use common::{Options, StatusServer, TestServer};

const PY_CONSUL: &str = "py-consul==1.8.0";

fn python_with_py_consul() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-consul-venv");
    pier_testkit::python::venv_with(&venv, PY_CONSUL, "consul")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_client_end_to_end() {
    common::init_tracing();
    let python = tokio::task::spawn_blocking(python_with_py_consul)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::single(dir.path(), Options::default()).await;
    let target = StatusServer::start(200).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/consul_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg("127.0.0.1")
        .arg(s.http_addr.port().to_string())
        .arg(format!("http://{}/health", target.addr))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "py-consul script failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), "OK");
    assert!(
        target.hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the HTTP check ran"
    );
}
