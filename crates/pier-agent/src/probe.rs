//! Health probes, run by the agent next to the containers, against the published host port
//! (the same path the gateway uses).

use std::time::Duration;

use pier_api::service::HealthKind;
use pier_core::health::CheckResult;

use crate::docker::DockerDriver;

pub struct ProbeTarget<'a> {
    pub host_ip: &'a str,
    /// Container port → host port.
    pub host_ports: &'a std::collections::BTreeMap<u16, u16>,
    pub container_id: &'a str,
    /// The container's address on the node's pier network, when it has one.
    pub network_ip: Option<&'a str>,
}

pub async fn run(
    kind: &HealthKind,
    target: &ProbeTarget<'_>,
    timeout_ms: u64,
    http: &reqwest::Client,
    docker: &DockerDriver,
) -> CheckResult {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    match kind {
        HealthKind::Http { path, port } => {
            let Some(host_port) = target.host_ports.get(port) else {
                return CheckResult::critical(format!("container port {port} is not published"));
            };
            let url = format!("http://{}:{host_port}{path}", target.host_ip);
            match http.get(&url).timeout(timeout).send().await {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                    CheckResult::passing()
                }
                Ok(resp) => CheckResult::critical(format!("GET {path} answered {}", resp.status())),
                Err(e) if e.is_timeout() => CheckResult::timed_out(timeout_ms),
                Err(e) => CheckResult::critical(format!("GET {path} failed: {e}")),
            }
        }
        HealthKind::Tcp { port } => {
            // On the pier network, the container itself: a published port is accepted by
            // Docker's proxy even when nothing listens behind it, so a connect there proves
            // nothing.
            let addr = match (target.network_ip, target.host_ports.get(port)) {
                (Some(ip), _) => format!("{ip}:{port}"),
                (None, Some(host_port)) => format!("{}:{host_port}", target.host_ip),
                (None, None) => {
                    return CheckResult::critical(format!("container port {port} is not published"))
                }
            };
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => CheckResult::passing(),
                Ok(Err(e)) => CheckResult::critical(format!("connect to port {port} failed: {e}")),
                Err(_) => CheckResult::timed_out(timeout_ms),
            }
        }
        HealthKind::Command { argv } => match docker.exec(target.container_id, argv, timeout).await
        {
            Ok(Some(0)) => CheckResult::passing(),
            Ok(Some(code)) => CheckResult::critical(format!("{} exited {code}", argv.join(" "))),
            Ok(None) => CheckResult::timed_out(timeout_ms),
            Err(e) => CheckResult::critical(format!("cannot run {}: {e}", argv.join(" "))),
        },
    }
}
