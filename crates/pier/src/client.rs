//! HTTP client for CLI commands: talks to `PIER_ADDR` and turns error bodies
//! into messages that say what went wrong and what to do next.

use anyhow::{anyhow, Context};
use pier_api::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client that sends `token` with every request (`Authorization: Bearer`) and, for an
    /// https address, trusts `ca_cert` (a secure cluster's CA) or else the system roots.
    pub fn with_auth(
        addr: &str,
        token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let base = addr.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("PIER_ADDR must start with http:// or https:// (got {addr:?})");
        }
        let mut builder =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(3));
        if let Some(path) = ca_cert {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let tls = pier_security::tls::client_config(&[&pem], None)
                .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        if let Some(token) = token {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("PIER_TOKEN holds characters a header cannot carry")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client { base, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        decode(resp).await
    }

    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let resp = self.send(self.http.put(self.url(path)).body(body)).await?;
        decode(resp).await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        decode(resp).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        decode(resp).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach pier at {}: {e}\nIs `pier dev` (or a server) running? Set PIER_ADDR to point elsewhere.",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })
    }
}

/// Reads a JSON body on success; on failure prefers the server's own message.
pub async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
    let status = resp.status();
    let bytes = resp.bytes().await.context("reading the response body")?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the server sent a body this CLI does not understand ({} bytes)",
                bytes.len()
            )
        });
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(err) => Err(anyhow!("{} (HTTP {})", err.error.message, status.as_u16())),
        Err(_) => Err(anyhow!(
            "HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes).trim()
        )),
    }
}

/// Prints `value` as pretty JSON on stdout (the `--json` form of every list).
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    println!("{text}");
    Ok(())
}
