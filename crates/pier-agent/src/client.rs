//! The agent's client of the server API: register, heartbeat, watch its tasks, report.

use std::time::Duration;

use pier_api::service::{AgentTasks, RegisterNode, TaskStatus};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the pier server at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the server sent a body this agent does not understand: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }
}

#[derive(Clone)]
pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

impl ServerClient {
    pub fn new(server: &str) -> ServerClient {
        let base = if server.starts_with("http://") || server.starts_with("https://") {
            server.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", server.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        ServerClient { base, http }
    }

    async fn check(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = resp.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            detail: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Status { status, body })
    }

    pub async fn register(&self, node: &str, body: &RegisterNode) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/nodes/{node}", self.base);
        self.check(
            self.http
                .put(url)
                .json(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await,
        )
        .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, node: &str) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/nodes/{node}/alive", self.base);
        self.check(
            self.http
                .put(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await,
        )
        .await?;
        Ok(())
    }

    /// Blocks until the node's tasks change past `index` or `wait_ms` passes.
    pub async fn tasks(
        &self,
        node: &str,
        index: Option<u64>,
        wait_ms: u64,
    ) -> Result<AgentTasks, ClientError> {
        let mut url = format!("{}/api/v1/nodes/{node}/tasks?wait={wait_ms}ms", self.base);
        if let Some(i) = index {
            url.push_str(&format!("&index={i}"));
        }
        let timeout = Duration::from_millis(wait_ms + wait_ms / 16 + 5_000);
        let resp = self
            .check(self.http.get(url).timeout(timeout).send().await)
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn report(&self, task_id: &str, status: &TaskStatus) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/tasks/{task_id}/status", self.base);
        self.check(
            self.http
                .put(url)
                .json(status)
                .timeout(Duration::from_secs(5))
                .send()
                .await,
        )
        .await?;
        Ok(())
    }
}
