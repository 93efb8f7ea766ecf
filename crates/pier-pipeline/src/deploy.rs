//! Rolling out a built image: a [`Deployer`] submits the filled service file and waits for the
//! deployment's outcome. [`HttpDeployer`] does that through pier's own API
//! (`POST /api/v1/services`, blocking `GET /api/v1/deployments/ID`), so it works the same on
//! the leader and on any other server.

use std::time::Duration;

use pier_api::service::{DeployRequest, DeployResponse, DeploymentRecord, DeploymentStatus};
use pier_api::ApiError;

use crate::log_sink::LogSink;

/// How a deployment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployOutcome {
    Succeeded,
    /// It failed and the previous revision was rolled out again.
    RolledBack {
        reason: String,
    },
    /// It failed and nothing was rolled back (auto rollback off, or nothing to go back to).
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// The orchestrator refused the service file (nothing was changed).
    #[error("the deployment was refused: {0}")]
    Refused(String),
    #[error("cannot reach the orchestrator API: {0}")]
    Unreachable(String),
    #[error("no outcome after {0} s")]
    Timeout(u64),
}

/// Submits a service file and waits for its deployment's outcome.
#[async_trait::async_trait]
pub trait Deployer: Send + Sync + 'static {
    async fn deploy(&self, service_file: &str, log: &LogSink)
        -> Result<DeployOutcome, DeployError>;
}

/// A [`Deployer`] speaking to pier's HTTP API.
pub struct HttpDeployer {
    base_url: String,
    client: reqwest::Client,
    /// Longest wait for a deployment to finish.
    pub timeout: Duration,
}

const POLL_WAIT: &str = "10s";
/// One request's limit (a blocking poll waits POLL_WAIT at most).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpDeployer {
    /// `base_url` like `http://127.0.0.1:8500`.
    pub fn new(base_url: impl Into<String>) -> HttpDeployer {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        HttpDeployer::with_client(base_url, client)
    }

    /// With the caller's client (the server's own TLS identity in a secure cluster).
    pub fn with_client(base_url: impl Into<String>, client: reqwest::Client) -> HttpDeployer {
        HttpDeployer {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            client,
            timeout: Duration::from_secs(15 * 60),
        }
    }

    async fn error_of(resp: reqwest::Response) -> String {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ApiError>(&body) {
            Ok(e) => e.error.message,
            Err(_) => format!("HTTP {status}: {}", body.trim()),
        }
    }

    /// Follows deployment `id` until it is terminal, logging its new events.
    async fn follow(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
        log: &LogSink,
    ) -> Result<DeploymentRecord, DeployError> {
        let mut index = 0u64;
        let mut events_seen = 0usize;
        let mut failures = 0u32;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(DeployError::Timeout(self.timeout.as_secs()));
            }
            let url = format!(
                "{}/api/v1/deployments/{id}?index={index}&wait={POLL_WAIT}",
                self.base_url
            );
            let resp = match self.client.get(&url).timeout(REQUEST_TIMEOUT).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) if r.status().is_server_error() && failures < 30 => {
                    // A leader election in progress: retry for a while.
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(r) => return Err(DeployError::Unreachable(Self::error_of(r).await)),
                Err(e) if failures < 30 => {
                    failures += 1;
                    tracing::debug!(error = %e, "deployment poll failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(DeployError::Unreachable(e.to_string())),
            };
            failures = 0;
            index = resp
                .headers()
                .get("x-pier-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(index);
            let dep: DeploymentRecord = resp
                .json()
                .await
                .map_err(|e| DeployError::Unreachable(format!("bad deployment body: {e}")))?;
            for ev in dep.events.iter().skip(events_seen) {
                log.line(format!("deploy: {}", ev.message));
            }
            events_seen = events_seen.max(dep.events.len());
            if dep.status.is_terminal() {
                return Ok(dep);
            }
        }
    }
}

#[async_trait::async_trait]
impl Deployer for HttpDeployer {
    async fn deploy(
        &self,
        service_file: &str,
        log: &LogSink,
    ) -> Result<DeployOutcome, DeployError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = self
            .client
            .post(format!("{}/api/v1/services", self.base_url))
            .json(&DeployRequest {
                file: service_file.to_string(),
                env_file: None,
            })
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| DeployError::Unreachable(e.to_string()))?;
        if resp.status().is_client_error() {
            return Err(DeployError::Refused(Self::error_of(resp).await));
        }
        if !resp.status().is_success() {
            return Err(DeployError::Unreachable(Self::error_of(resp).await));
        }
        let answer: DeployResponse = resp
            .json()
            .await
            .map_err(|e| DeployError::Unreachable(format!("bad deploy answer: {e}")))?;
        log.line(format!(
            "deploy: service {} revision {} ({})",
            answer.service, answer.revision, answer.outcome
        ));
        let Some(id) = answer.deployment else {
            return Ok(DeployOutcome::Succeeded);
        };
        log.line(format!("deploy: following deployment {id}"));
        let dep = self.follow(&id, deadline, log).await?;
        let reason = dep
            .reason
            .clone()
            .unwrap_or_else(|| format!("deployment {} {}", dep.id, dep.status.as_str()));
        // A failed deployment names the rollback it triggered: wait for it too, so the run
        // ends once the previous revision serves again.
        if let Some(rollback) = dep.rolled_back_by.clone() {
            log.line(format!("deploy: rolling back with deployment {rollback}"));
            let rb = self.follow(&rollback, deadline, log).await?;
            if rb.status != DeploymentStatus::Succeeded {
                log.line(format!(
                    "deploy: the rollback ended {}: {}",
                    rb.status.as_str(),
                    rb.reason.unwrap_or_default()
                ));
            }
            return Ok(DeployOutcome::RolledBack { reason });
        }
        Ok(match dep.status {
            DeploymentStatus::Succeeded => DeployOutcome::Succeeded,
            DeploymentStatus::RolledBack => DeployOutcome::RolledBack { reason },
            DeploymentStatus::Failed => DeployOutcome::Failed { reason },
            DeploymentStatus::Superseded => DeployOutcome::Failed {
                reason: format!(
                    "deployment {id} was superseded by a newer deployment of the service"
                ),
            },
            DeploymentStatus::InProgress => DeployOutcome::Failed {
                reason: "the deployment is still in progress".into(),
            },
        })
    }
}
