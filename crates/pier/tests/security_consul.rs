//! Consul clients against a secure cluster, unchanged but for a token and the CA: py-consul (from
//! PyPI) registers a service and uses KV with a token over HTTPS and is refused without one;
//! VictoriaMetrics' `consul_sd_configs` with `token:` discovers the service, and without the
//! token discovers nothing.

mod security_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::net::free_port;
use security_common::*;
use serde_json::Value;

const PY_CONSUL: &str = "py-consul==1.8.0";

fn python_with_py_consul() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-consul-venv-secure");
    pier_testkit::python::venv_with(&venv, PY_CONSUL, "consul")
}

/// py-consul: with the token, register `web` and use KV under `app/`; without it, refused.
const SCRIPT: &str = r#"
import sys, consul
port, ca, token, web_port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=ca, token=token)
c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=web_port)
assert c.kv.put("app/greeting", "hello")
_, v = c.kv.get("app/greeting")
assert v["Value"] == b"hello", v
_, nodes = c.catalog.service("web")
assert [n["ServiceID"] for n in nodes] == ["web-1"], nodes
anonymous = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=ca)
for attempt in (lambda: anonymous.kv.put("app/x", "y"),
                lambda: anonymous.agent.service.register("web", service_id="web-2", port=1)):
    try:
        attempt()
    except consul.ACLPermissionDenied:
        continue
    except consul.ConsulException as e:
        if "401" in str(e) or "403" in str(e):
            continue
        raise
    raise SystemExit("a write without a token was accepted")
# A token for app/ only may not write elsewhere.
try:
    c.kv.put("other/x", "y")
    raise SystemExit("a kv:write:app/ token wrote other/x")
except (consul.ACLPermissionDenied, consul.ConsulException):
    pass
print("ok")
"#;

fn scrape_config(port: u16, ca: &Path, token: Option<&str>) -> String {
    let token_line = token
        .map(|t| format!("        token: '{t}'\n"))
        .unwrap_or_default();
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pier-consul-sd\n    \
         consul_sd_configs:\n      - server: '127.0.0.1:{port}'\n        scheme: https\n        \
         services: ['web']\n{token_line}        tls_config:\n          ca_file: '{}'\n",
        ca.display()
    )
}

/// The addresses VictoriaMetrics discovered for job `pier-consul-sd`.
async fn discovered(c: &reqwest::Client, vm: &str) -> Option<Vec<String>> {
    let v: Value = c
        .get(format!("{vm}/api/v1/targets"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .filter(|t| t["labels"]["job"] == "pier-consul-sd")
            .filter_map(|t| t["discoveredLabels"]["__address__"].as_str())
            .map(str::to_string)
            .collect(),
    )
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_vm(dir: &Path, config: &str, port: u16) -> Child {
    let file = dir.join(format!("scrape-{port}.yml"));
    std::fs::write(&file, config).unwrap();
    let child = Command::new("victoria-metrics")
        .arg(format!("-promscrape.config={}", file.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!(
            "-storageDataPath={}",
            dir.join(format!("vm-{port}")).display()
        ))
        .arg("-promscrape.consulSDCheckInterval=1s")
        .arg("-loggerLevel=ERROR")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("victoria-metrics is required (apt-get install victoria-metrics)");
    Child(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_clients_work_with_a_token_and_are_refused_without() {
    let python = tokio::task::spawn_blocking(python_with_py_consul)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let c = SecureCluster::start(tmp.path(), 1, &[]).await;
    let (token, _) = c.create_token(&["catalog:register:web*", "kv:write:app/", "read"]);
    let ca = c.ca_path();
    let port = c.servers[0].http;
    let web_port = free_port();

    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(port.to_string())
        .arg(&ca)
        .arg(&token)
        .arg(web_port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "py-consul: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // VictoriaMetrics with the token finds web-1; without it, nothing.
    let http = reqwest::Client::new();
    let with_port = free_port();
    let without_port = free_port();
    let _with = start_vm(
        tmp.path(),
        &scrape_config(port, &ca, Some(&token)),
        with_port,
    );
    let _without = start_vm(tmp.path(), &scrape_config(port, &ca, None), without_port);
    let want = format!("127.0.0.1:{web_port}");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let found = discovered(&http, &format!("http://127.0.0.1:{with_port}")).await;
        if found.as_deref() == Some(std::slice::from_ref(&want)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VictoriaMetrics with the token never discovered {want}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The other one has had as long; it must have found nothing (it answers, though).
    let found = discovered(&http, &format!("http://127.0.0.1:{without_port}")).await;
    assert_eq!(
        found,
        Some(Vec::new()),
        "VictoriaMetrics without a token discovered targets"
    );
}
