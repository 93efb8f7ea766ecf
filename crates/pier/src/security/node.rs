//! The TLS material of an agent or a standalone gateway: made once by joining with a token
//! (`pier agent --server ADDR --token PIER1...`), then read back from `DATA_DIR/tls/` at every
//! start. Without a token and without material, the process runs plain (for `--insecure`
//! clusters and `pier dev --no-agent`).

use anyhow::Context;
use pier_security::ca::{NodeCert, NodeIdentity, Role};
use pier_security::token::JoinToken;

use super::files::{self, TlsDir};

/// A node's CA bundle and certificate.
pub struct NodeMaterial {
    pub bundle: String,
    pub node: NodeCert,
}

impl NodeMaterial {
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        Ok(pier_security::tls::client_config(
            &[&self.bundle],
            Some((&self.node.cert_pem, &self.node.key_pem)),
        )?)
    }

    /// A listener that asks for (but does not require) client certificates; routes decide.
    pub fn listener(&self) -> anyhow::Result<pier_net::ServerTls> {
        Ok(pier_net::server_tls(pier_security::tls::server_config(
            &[&self.bundle],
            &self.node.cert_pem,
            &self.node.key_pem,
            pier_security::tls::ClientCerts::Optional,
            &[b"http/1.1"],
        )?))
    }
}

/// Loads the material in `data_dir`, or joins with `token` through `servers` (API addresses,
/// comma separated) to make it. None: no token and nothing on disk (plain HTTP).
pub async fn prepare(
    data_dir: &std::path::Path,
    role: Role,
    name: &str,
    servers: &str,
    token: Option<&str>,
    addresses: &[String],
) -> anyhow::Result<Option<NodeMaterial>> {
    let dir = TlsDir::new(data_dir);
    if !dir.exists(files::NODE_CERT) {
        let Some(token) = token else {
            if servers.contains("https://") {
                anyhow::bail!("joining a secure cluster needs --token (the agent join token its first server printed, in DATA_DIR/tls/agent.token there, or one from `pier token create --role {role}`)");
            }
            return Ok(None);
        };
        let token = JoinToken::parse(token).context("--token")?;
        let who = NodeIdentity::new(role, name)?;
        let addrs: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let (node, bundle) = super::join::join(&addrs, &token, &who, addresses)
            .await
            .context("joining the cluster")?;
        dir.write(files::CA_CERT, &bundle, 0o644)?;
        dir.write(files::NODE_KEY, &node.key_pem, 0o600)?;
        dir.write(files::NODE_CERT, &node.cert_pem, 0o644)?;
        tracing::info!(node = %who, "joined the secure cluster; certificate in {}", dir.path(files::NODE_CERT).display());
    }
    let node = NodeCert {
        cert_pem: dir.read(files::NODE_CERT)?,
        key_pem: dir.read(files::NODE_KEY)?,
    };
    let id = pier_security::ca::identity_of_pem(&node.cert_pem)?;
    if id.role != role || id.name != name {
        anyhow::bail!(
            "{} holds the certificate of {id}, not {role} {name}; use another --data-dir or the name it was made for",
            dir.path(files::NODE_CERT).display()
        );
    }
    Ok(Some(NodeMaterial {
        bundle: dir.read(files::CA_CERT)?,
        node,
    }))
}

/// How often a node asks a server for the CA bundle: a CA rotation's trust phase (at least
/// 15 s) outlasts it, so every node trusts the new CA before any server presents it.
const CA_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the node's trust and certificate current, without a restart or a dropped connection
/// (in `client`, and in `listener` for a node that serves mTLS: agents, not gateways):
/// every [`CA_POLL`] it asks a server for the CA bundle (adopting a changed one: a CA
/// rotation), and it renews its certificate once two thirds of its life have passed or when
/// the CA that signs now (the first of the bundle) did not sign it.
pub async fn renew_loop(
    mut material: NodeMaterial,
    data_dir: std::path::PathBuf,
    servers: String,
    addresses: Vec<String>,
    client: pier_net::HttpClient,
    listener: Option<pier_net::ServerTls>,
) {
    let dir = TlsDir::new(&data_dir);
    let in_use = |m: &NodeMaterial| -> anyhow::Result<()> {
        client.set_tls(m.client_config()?)?;
        if let Some(listener) = &listener {
            listener.store(m.listener()?.load_full());
        }
        dir.write(files::CA_CERT, &m.bundle, 0o644)?;
        dir.write(files::NODE_KEY, &m.node.key_pem, 0o600)?;
        dir.write(files::NODE_CERT, &m.node.cert_pem, 0o644)
    };
    loop {
        match fetch_bundle(&material, &servers).await {
            Ok(bundle) if bundle != material.bundle => {
                let changed = NodeMaterial {
                    bundle,
                    node: material.node.clone(),
                };
                match in_use(&changed) {
                    Ok(()) => {
                        tracing::info!(
                            trusted = ?pier_security::ca::fingerprints_pem(&changed.bundle),
                            "trust bundle changed (CA rotation)"
                        );
                        material = changed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "new trust bundle not put in use")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot ask for the CA bundle"),
        }
        let due = pier_security::ca::renew_after(&material.node.cert_pem).unwrap_or(0);
        let now = pier_api::time::now_secs();
        let current = pier_security::ca::issued_by(&material.node.cert_pem, &material.bundle);
        if now < due && current {
            tokio::time::sleep(std::time::Duration::from_secs(due - now).min(CA_POLL)).await;
            continue;
        }
        match renew_once(&material, &servers, &addresses).await {
            Ok(renewed) => match in_use(&renewed) {
                Ok(()) => {
                    tracing::info!(
                        expires =
                            pier_security::ca::not_after_unix(&renewed.node.cert_pem).unwrap_or(0),
                        "certificate renewed"
                    );
                    material = renewed;
                    if !pier_security::ca::issued_by(&material.node.cert_pem, &material.bundle) {
                        // The server that answered has not switched to the new CA yet.
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "renewed certificate not put in use")
                }
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in 10 s");
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    }
}

/// The bundle of the first of `servers` that answers.
async fn fetch_bundle(material: &NodeMaterial, servers: &str) -> anyhow::Result<String> {
    let mut last = anyhow::anyhow!("no server to ask");
    for addr in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match super::join::fetch_bundle(addr, material.client_config()?).await {
            Ok(bundle) => return Ok(bundle),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn renew_once(
    material: &NodeMaterial,
    servers: &str,
    addresses: &[String],
) -> anyhow::Result<NodeMaterial> {
    let mut last = anyhow::anyhow!("no server to renew through");
    for addr in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match super::join::renew(addr, &material.bundle, &material.node, addresses).await {
            Ok((node, bundle)) => return Ok(NodeMaterial { bundle, node }),
            Err(e) => last = e,
        }
    }
    Err(last)
}
