//! The agent's client of the server API: register, heartbeat, watch its tasks, report.
//!
//! The agent knows every server: the addresses it was started with, plus the members the
//! cluster reports (refreshed by [`ServerClient::refresh_members`]). It talks to one at a time
//! and moves to the next as soon as that one stops answering (connection refused, timeout,
//! a 5xx such as "no leader"): a heartbeat that fails is retried at once on the next server,
//! so a server's loss costs the node at most one heartbeat interval, far below the time after
//! which the cluster would consider the node down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_api::service::{AgentTasks, RegisterNode, TaskStatus};
use pier_api::status::MembersResponse;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the pier server at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the server sent a body this agent does not understand: {0}")]
    Decode(String),
    #[error("switched to another server ({0}) while waiting")]
    Switched(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }

    /// Whether the server itself is the problem (so another one should be tried).
    fn server_trouble(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::Decode(_) | ClientError::Switched(_) => false,
        }
    }
}

/// The servers the agent may talk to and the one it uses now.
struct ServerSet {
    /// Base URLs, without a trailing slash; never empty.
    list: Vec<String>,
    current: usize,
    /// Bumped on every switch, so a failure seen on an old server does not switch twice.
    generation: u64,
}

struct Shared {
    http: pier_net::HttpClient,
    /// Addresses given on the command line: always kept, whatever the cluster reports.
    seeds: Vec<String>,
    servers: Mutex<ServerSet>,
    switched: tokio::sync::watch::Sender<u64>,
    /// Time limit of a heartbeat: one heartbeat interval.
    heartbeat_timeout: Duration,
}

/// See [`ServerClient::blocking_read`].
#[derive(Debug)]
pub struct BlockingAnswer {
    /// `X-Consul-Index`: pass it back to wait for the next change.
    pub index: u64,
    /// None: 404 (an absent key, say).
    pub body: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct ServerClient {
    shared: Arc<Shared>,
}

/// "host:port" or a URL, to a base URL with `scheme` (the client's: https in a secure
/// cluster, whatever the address said) and without a trailing slash.
fn base_url(server: &str, scheme: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    let hostport = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("https://"))
        .unwrap_or(server);
    format!("{scheme}://{hostport}")
}

impl ServerClient {
    /// `servers`: one or more server API addresses, comma separated. With `tls` (a secure
    /// cluster), every call is HTTPS with the agent's certificate.
    pub fn new(
        servers: &str,
        heartbeat_interval: Duration,
        http: Option<pier_net::HttpClient>,
    ) -> Result<ServerClient, reqwest::Error> {
        let http = match http {
            Some(h) => h,
            None => pier_net::HttpClient::new(|b| b.connect_timeout(Duration::from_secs(1)), None)?,
        };
        let scheme = http.scheme();
        let mut seeds: Vec<String> = servers
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| base_url(s, scheme))
            .collect();
        seeds.dedup();
        if seeds.is_empty() {
            seeds.push(base_url("127.0.0.1:8500", scheme));
        }
        let (switched, _) = tokio::sync::watch::channel(0);
        Ok(ServerClient {
            shared: Arc::new(Shared {
                http,
                servers: Mutex::new(ServerSet {
                    list: seeds.clone(),
                    current: 0,
                    generation: 0,
                }),
                seeds,
                switched,
                heartbeat_timeout: heartbeat_interval.max(Duration::from_millis(200)),
            }),
        })
    }

    /// The client the agent calls servers with (its certificate in a secure cluster).
    pub fn http(&self) -> pier_net::HttpClient {
        self.shared.http.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServerSet> {
        self.shared
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The server in use and the generation it belongs to.
    fn current(&self) -> (String, u64) {
        let set = self.lock();
        (set.list[set.current].clone(), set.generation)
    }

    /// The server in use now (for logs and status).
    pub fn current_server(&self) -> String {
        self.current().0
    }

    /// Every server this agent knows.
    pub fn servers(&self) -> Vec<String> {
        self.lock().list.clone()
    }

    /// Moves to the next server, unless someone already did since `generation`.
    fn fail_over(&self, generation: u64, why: &ClientError) {
        let mut set = self.lock();
        if set.generation != generation || set.list.len() < 2 {
            return;
        }
        let from = set.list[set.current].clone();
        set.current = (set.current + 1) % set.list.len();
        set.generation += 1;
        let to = set.list[set.current].clone();
        let generation = set.generation;
        drop(set);
        tracing::warn!(%from, %to, error = %why, "server not answering; switching");
        self.shared.switched.send_replace(generation);
    }

    /// Replaces the known servers with the seeds plus `members`, keeping the one in use.
    fn set_servers(&self, members: Vec<String>) {
        let mut list = self.shared.seeds.clone();
        for m in members {
            if !list.contains(&m) {
                list.push(m);
            }
        }
        let mut set = self.lock();
        let in_use = set.list[set.current].clone();
        if list == set.list {
            return;
        }
        set.current = list.iter().position(|s| *s == in_use).unwrap_or(0);
        set.list = list;
        tracing::info!(servers = ?set.list, "known servers updated");
    }

    /// Asks the server in use for the cluster's members and remembers their API addresses.
    pub async fn refresh_members(&self) -> Result<(), ClientError> {
        let (base, _) = self.current();
        let resp = self
            .send_once(
                &base,
                self.shared
                    .http
                    .get()
                    .get(format!("{base}/api/v1/members"))
                    .timeout(Duration::from_secs(5)),
            )
            .await?;
        let members: MembersResponse = resp
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let addrs = members
            .members
            .into_iter()
            .filter(|m| !m.http_addr.is_empty())
            .map(|m| base_url(&m.http_addr, self.shared.http.scheme()))
            .collect();
        self.set_servers(addrs);
        Ok(())
    }

    async fn send_once(
        &self,
        base: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            addr: base.to_string(),
            detail: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Status { status, body })
    }

    /// Sends a request built for the server in use; on server trouble switches to the next
    /// server and, if `retry_elsewhere`, sends it once more there.
    async fn send(
        &self,
        retry_elsewhere: bool,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let (base, generation) = self.current();
        let http = self.shared.http.get();
        let first = self.send_once(&base, build(&http, &base)).await;
        match first {
            Err(e) if e.server_trouble() => {
                self.fail_over(generation, &e);
                let (next, _) = self.current();
                if !retry_elsewhere || next == base {
                    return Err(e);
                }
                let second = self.send_once(&next, build(&http, &next)).await;
                if let Err(e2) = &second {
                    if e2.server_trouble() {
                        self.fail_over(generation + 1, e2);
                    }
                }
                second
            }
            other => other,
        }
    }

    /// The registry addresses (`host:port`) the servers advertise.
    pub async fn registry_endpoints(&self) -> Result<Vec<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Endpoint {
            addr: String,
        }
        let resp = self
            .send(true, |http, base| {
                http.get(format!("{base}/api/v1/registry/endpoints"))
                    .timeout(Duration::from_secs(5))
            })
            .await?;
        let list: Vec<Endpoint> = resp
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(list.into_iter().map(|e| e.addr).collect())
    }

    pub async fn register(&self, node: &str, body: &RegisterNode) -> Result<(), ClientError> {
        self.send(true, |http, base| {
            http.put(format!("{base}/api/v1/nodes/{node}"))
                .json(body)
                .timeout(Duration::from_secs(10))
        })
        .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, node: &str) -> Result<(), ClientError> {
        let timeout = self.shared.heartbeat_timeout;
        self.send(true, |http, base| {
            http.put(format!("{base}/api/v1/nodes/{node}/alive"))
                .timeout(timeout)
        })
        .await?;
        Ok(())
    }

    /// Blocks until the node's tasks change past `index` or `wait_ms` passes. Returns early
    /// with [`ClientError::Switched`] when the agent moves to another server meanwhile.
    pub async fn tasks(
        &self,
        node: &str,
        index: Option<u64>,
        wait_ms: u64,
    ) -> Result<AgentTasks, ClientError> {
        let mut switched = self.shared.switched.subscribe();
        let (base, generation) = self.current();
        let mut url = format!("{base}/api/v1/nodes/{node}/tasks?wait={wait_ms}ms");
        if let Some(i) = index {
            url.push_str(&format!("&index={i}"));
        }
        let timeout = Duration::from_millis(wait_ms + wait_ms / 16 + 5_000);
        let http = self.shared.http.get();
        let request = self.send_once(&base, http.get(url).timeout(timeout));
        let resp = tokio::select! {
            resp = request => resp,
            _ = switched.wait_for(|g| *g != generation) => {
                return Err(ClientError::Switched(self.current_server()));
            }
        };
        let resp = resp.inspect_err(|e| {
            if e.server_trouble() {
                self.fail_over(generation, e);
            }
        })?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A Consul-style blocking read of `/v1/<segments…>?<query>` (the catalog's and KV's own
    /// blocking queries): answers once the result's index differs from `index`, or after
    /// `wait_ms`. A 404 (an absent key) is an answer without a body. Returns early with
    /// [`ClientError::Switched`] when the agent moves to another server meanwhile.
    pub async fn blocking_read(
        &self,
        segments: &[&str],
        query: &str,
        index: Option<u64>,
        wait_ms: u64,
    ) -> Result<BlockingAnswer, ClientError> {
        let mut switched = self.shared.switched.subscribe();
        let (base, generation) = self.current();
        let mut url = reqwest::Url::parse(&base).map_err(|e| ClientError::Unreachable {
            addr: base.clone(),
            detail: e.to_string(),
        })?;
        url.path_segments_mut()
            .map_err(|()| ClientError::Unreachable {
                addr: base.clone(),
                detail: "not a base URL".into(),
            })?
            .push("v1")
            .extend(segments);
        let mut q = format!("{query}&wait={wait_ms}ms");
        if let Some(i) = index {
            q.push_str(&format!("&index={i}"));
        }
        url.set_query(Some(&q));
        let timeout = Duration::from_millis(wait_ms + wait_ms / 16 + 5_000);
        let http = self.shared.http.get();
        let request = http.get(url).timeout(timeout).send();
        let resp = tokio::select! {
            resp = request => resp,
            _ = switched.wait_for(|g| *g != generation) => {
                return Err(ClientError::Switched(self.current_server()));
            }
        };
        let resp = resp.map_err(|e| ClientError::Unreachable {
            addr: base.clone(),
            detail: e.to_string(),
        });
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.fail_over(generation, &e);
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        match (status, index) {
            (200, Some(index)) => Ok(BlockingAnswer {
                index,
                body: Some(body.to_vec()),
            }),
            (404, Some(index)) => Ok(BlockingAnswer { index, body: None }),
            _ => {
                let e = ClientError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                if e.server_trouble() {
                    self.fail_over(generation, &e);
                }
                Err(e)
            }
        }
    }

    /// The values of the secrets task `task_id` uses (only this node's agent may read them).
    pub async fn task_secrets(
        &self,
        node: &str,
        task_id: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, ClientError> {
        use base64::Engine;
        let resp = self
            .send(true, |http, base| {
                http.get(format!(
                    "{base}/api/v1/nodes/{node}/tasks/{task_id}/secrets"
                ))
                .timeout(Duration::from_secs(10))
            })
            .await?;
        let body: pier_api::secret::TaskSecrets = resp
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut out = std::collections::BTreeMap::new();
        for (name, b64) in body.values_base64 {
            let value = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ClientError::Decode(format!("secret {name} is not base64")))?;
            out.insert(name, value);
        }
        Ok(out)
    }

    /// Reports a task's status; naming its node lets the server look the task up directly.
    pub async fn report(
        &self,
        node: &str,
        task_id: &str,
        status: &TaskStatus,
    ) -> Result<(), ClientError> {
        self.send(true, |http, base| {
            http.put(format!("{base}/api/v1/tasks/{task_id}/status?node={node}"))
                .json(status)
                .timeout(Duration::from_secs(5))
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_parsed_and_failover_rotates_once_per_failure() {
        let c = ServerClient::new(
            "10.0.0.1:8500, http://10.0.0.2:8500/,",
            Duration::from_millis(500),
            None,
        )
        .unwrap();
        assert_eq!(
            c.servers(),
            vec!["http://10.0.0.1:8500", "http://10.0.0.2:8500"]
        );
        let (first, generation) = c.current();
        let err = ClientError::Unreachable {
            addr: first.clone(),
            detail: "refused".into(),
        };
        c.fail_over(generation, &err);
        // A second report of the same failure (same generation) does not switch again.
        c.fail_over(generation, &err);
        assert_eq!(c.current_server(), "http://10.0.0.2:8500");
        c.set_servers(vec!["http://10.0.0.3:8500".into()]);
        assert_eq!(c.servers().len(), 3);
        assert_eq!(
            c.current_server(),
            "http://10.0.0.2:8500",
            "the server in use is kept"
        );
        assert!(!ClientError::Status {
            status: 404,
            body: String::new()
        }
        .server_trouble());
        assert!(ClientError::Status {
            status: 503,
            body: String::new()
        }
        .server_trouble());
    }
}
