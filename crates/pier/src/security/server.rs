//! A server's security, from its first start on:
//!
//! * **First server of a new cluster** (no `--join`, no `--token`): makes the CA, a server and
//!   an agent join secret, its own certificate, and (once its store runs) the first
//!   management token; prints the tokens and keeps them in `DATA_DIR/tls/`.
//! * **Joining server** (`--join ADDR --token PIER1.<ca hash>.<secret>`): downloads the CA,
//!   checks it against the token, gets its certificate. It receives the CA key later from the
//!   store, sealed with a key derived from the server secret (which it has from the token), so
//!   a copy of the store without the secret does not reveal it.
//! * **Servers started together** (`--bootstrap-expect N --join ... --token PIER1..<secret>`,
//!   a secret made with `pier token generate`): the server with the lowest raft address makes
//!   the CA; the others fetch it, checking the proof that it knows the same secret.
//! * **Restart**: everything is read back from `DATA_DIR/tls/`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use pier_security::acl::{Policy, TokenRecord};
use pier_security::ca::{ClusterCa, NodeCert, NodeIdentity, Role};
use pier_security::seal::SealKey;
use pier_security::tls::{client_config, server_config, ClientCerts};
use pier_security::token::{generate_secret, JoinToken};
use pier_store::{Consistency, Op, Store, Table, Txn};

use super::authz::{ACL_ACCESSORS, ACL_TOKENS};
use super::files::{self, TlsDir};
use super::join::{self, JoinService};

/// What the store keeps for every server (sealed values need the server secret).
pub const SECURITY: Table = Table::from_static("security");
const KEY_BUNDLE: &str = "ca/bundle";
const KEY_CA_KEY: &str = "ca/key";
const KEY_AGENT_SECRET: &str = "agent_secret";
const KEY_CLUSTER_KEY: &str = "cluster_key";
const KEY_ACL_BOOTSTRAPPED: &str = "acl/bootstrapped";
pub(crate) const SEAL_PURPOSE: &str = "pier/server-secret/v1";

pub struct ServerSecurityOptions {
    pub data_dir: std::path::PathBuf,
    pub node_name: String,
    pub token: Option<String>,
    /// Raft addresses of the other servers.
    pub join: Vec<String>,
    /// This server's advertised raft address ("ip:port").
    pub raft_advertise: String,
    /// IPs / names the server is reached at (certificate SANs).
    pub addresses: Vec<String>,
    /// Lifetime of the certificates this server issues (its own included).
    pub cert_lifetime: Duration,
}

pub struct ServerSecurity {
    pub dir: TlsDir,
    pub identity: NodeIdentity,
    pub node: ArcSwap<NodeCert>,
    pub join: Arc<JoinService>,
    pub raft_tls: pier_net::ServerTls,
    pub api_tls: pier_net::ServerTls,
    pub addresses: Vec<String>,
    /// This start made the cluster (first server): it also makes the first management token.
    pub created_cluster: bool,
    pub cert_lifetime: Duration,
}

impl ServerSecurity {
    /// How this server calls other pier processes: trusting the CA, presenting its own
    /// certificate.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let node = self.node.load();
        let bundle = self.join.bundle.load();
        Ok(client_config(
            &[bundle.as_str()],
            Some((&node.cert_pem, &node.key_pem)),
        )?)
    }

    fn seal_key(&self) -> SealKey {
        SealKey::derive(&self.join.server_secret, SEAL_PURPOSE)
    }
}

fn tls_configs(
    bundle: &str,
    node: &NodeCert,
) -> anyhow::Result<(pier_net::ServerTls, pier_net::ServerTls)> {
    // Join routes share both ports with authenticated ones: a client without a certificate
    // completes the handshake, a certificate from any other CA does not, and every route but
    // the join ones refuses callers without a cluster certificate.
    let raft = server_config(
        &[bundle],
        &node.cert_pem,
        &node.key_pem,
        ClientCerts::Optional,
        &[b"http/1.1"],
    )?;
    let api = server_config(
        &[bundle],
        &node.cert_pem,
        &node.key_pem,
        ClientCerts::Optional,
        &[b"h2", b"http/1.1"],
    )?;
    Ok((pier_net::server_tls(raft), pier_net::server_tls(api)))
}

/// Everything for the TLS listeners and clients of this server, made or loaded.
pub async fn prepare(opts: &ServerSecurityOptions) -> anyhow::Result<ServerSecurity> {
    let dir = TlsDir::new(&opts.data_dir);
    let identity = NodeIdentity::new(Role::Server, opts.node_name.clone())?;
    let token = opts
        .token
        .as_deref()
        .map(JoinToken::parse)
        .transpose()
        .context("--token")?;
    let created_cluster = if dir.exists(files::NODE_CERT) {
        false
    } else {
        obtain(&dir, opts, &identity, token.as_ref()).await?
    };
    let node = NodeCert {
        cert_pem: dir.read(files::NODE_CERT)?,
        key_pem: dir.read(files::NODE_KEY)?,
    };
    let bundle = dir.read(files::CA_CERT)?;
    let ca = match dir.read_opt(files::CA_KEY)? {
        // A stop between writing a rotated CA's key and its bundle leaves them apart; the
        // sync loop takes both from the store again.
        Some(key) => ClusterCa::from_pem(&bundle, &key)
            .inspect_err(
                |e| tracing::warn!(error = %e, "CA key and bundle disagree; waiting for the store"),
            )
            .ok(),
        None => None,
    };
    let server_token = JoinToken::parse(&dir.read(files::SERVER_TOKEN)?)?;
    let agent_secret = dir
        .read_opt(files::AGENT_TOKEN)?
        .map(|t| JoinToken::parse(&t).map(|t| t.secret))
        .transpose()?;
    let (raft_tls, api_tls) = tls_configs(&bundle, &node)?;
    let join = Arc::new(JoinService {
        ca: ArcSwap::from_pointee(ca),
        bundle: ArcSwap::from_pointee(bundle),
        server_secret: server_token.secret.clone(),
        agent_secret: ArcSwap::from_pointee(agent_secret),
        store: std::sync::OnceLock::new(),
        validity: opts.cert_lifetime,
    });
    Ok(ServerSecurity {
        dir,
        identity,
        node: ArcSwap::from_pointee(node),
        join,
        raft_tls,
        api_tls,
        addresses: opts.addresses.clone(),
        created_cluster,
        cert_lifetime: opts.cert_lifetime,
    })
}

/// First start: make or fetch the material. Returns whether this server made the cluster.
async fn obtain(
    dir: &TlsDir,
    opts: &ServerSecurityOptions,
    identity: &NodeIdentity,
    token: Option<&JoinToken>,
) -> anyhow::Result<bool> {
    match token {
        None if opts.join.is_empty() => {
            create_cluster(dir, opts, identity, &generate_secret())?;
            Ok(true)
        }
        None => anyhow::bail!(
            "joining a secure cluster needs --token: the server join token the first server printed (also in its DATA_DIR/tls/server.token), or one made with `pier token create --role server`"
        ),
        Some(t) if t.ca_hash.is_none() && lowest_is_me(opts) => {
            create_cluster(dir, opts, identity, &t.secret)?;
            Ok(true)
        }
        Some(t) => {
            // Joining (or waiting for the bootstrapping server to make the CA).
            let addrs = match t.ca_hash {
                Some(_) => opts.join.clone(),
                None => vec![lowest(opts)],
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            let (node, bundle) = loop {
                match join::join(&addrs, t, identity, &opts.addresses).await {
                    Ok(done) => break done,
                    Err(e) if e.downcast_ref::<join::JoinRefused>().is_some() => {
                        return Err(e.context("the cluster refused this server"));
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::info!(error = %format!("{e:#}"), "cannot join yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.context("joining the cluster")),
                }
            };
            dir.write(files::CA_CERT, &bundle, 0o644)?;
            dir.write(files::NODE_KEY, &node.key_pem, 0o600)?;
            dir.write(files::SERVER_TOKEN, &JoinToken::new(Some(pier_security::ca::fingerprint_pem(&bundle)?), t.secret.clone()).to_string(), 0o600)?;
            // Written last: its presence means the rest is complete.
            dir.write(files::NODE_CERT, &node.cert_pem, 0o644)?;
            tracing::info!("joined the secure cluster; certificate in {}", dir.path(files::NODE_CERT).display());
            Ok(false)
        }
    }
}

fn lowest(opts: &ServerSecurityOptions) -> String {
    let mut all: Vec<String> = opts.join.clone();
    all.push(opts.raft_advertise.clone());
    all.sort_by_key(|a| (a.parse::<std::net::SocketAddr>().ok(), a.clone()));
    all.into_iter().next().unwrap_or_default()
}

fn lowest_is_me(opts: &ServerSecurityOptions) -> bool {
    lowest(opts) == opts.raft_advertise
}

fn create_cluster(
    dir: &TlsDir,
    opts: &ServerSecurityOptions,
    identity: &NodeIdentity,
    server_secret: &str,
) -> anyhow::Result<()> {
    let now = pier_api::time::now_secs();
    let ca = ClusterCa::generate(now)?;
    let node = ca.issue(identity, &opts.addresses, opts.cert_lifetime, now)?;
    let fp = ca.fingerprint();
    let server_token = JoinToken::new(Some(fp.clone()), server_secret.to_string());
    let agent_token = JoinToken::new(Some(fp), generate_secret());
    dir.write(files::CA_CERT, ca.cert_pem(), 0o644)?;
    dir.write(files::CA_KEY, ca.key_pem(), 0o600)?;
    dir.write(files::SERVER_TOKEN, &server_token.to_string(), 0o600)?;
    dir.write(files::AGENT_TOKEN, &agent_token.to_string(), 0o600)?;
    dir.write(files::NODE_KEY, &node.key_pem, 0o600)?;
    dir.write(files::NODE_CERT, &node.cert_pem, 0o644)?;
    tracing::info!(
        "created a new secure cluster.\n  server join token: {server_token}\n  agent join token:  {agent_token}\n  (both also in {}; the CA certificate clients trust is {})",
        dir.path("").display(),
        dir.path(files::CA_CERT).display()
    );
    Ok(())
}

async fn read(store: &Store, key: &str) -> anyhow::Result<Option<String>> {
    let key = key.to_string();
    Ok(store
        .read(Consistency::Default, move |v| {
            v.get(&SECURITY, &key)
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        })
        .await?)
}

/// Keeps this server and the store in step, for the life of the server: publishes what this
/// server holds and the store lacks (CA, sealed keys, the first management token), and takes
/// from the store what this server lacks (the CA key and the agent secret after a join).
pub async fn sync_loop(sec: Arc<ServerSecurity>, store: Store, internal: pier_net::HttpClient) {
    let _ = sec.join.store.set(store.clone());
    loop {
        if let Err(e) = sync_once(&sec, &store, &internal).await {
            tracing::debug!(error = %format!("{e:#}"), "security state not in step yet");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn sync_once(
    sec: &ServerSecurity,
    store: &Store,
    internal: &pier_net::HttpClient,
) -> anyhow::Result<()> {
    let seal = sec.seal_key();
    let ca = sec.join.ca.load_full();
    let rotated = super::rotation::apply(sec, store, internal).await?;
    if rotated {
        // The rotation record holds the CA (and its key) of this moment.
    } else if let Some(ca) = ca.as_ref() {
        if read(store, KEY_CA_KEY).await?.is_none() {
            let mut ops = vec![
                Op::put_cas(
                    SECURITY,
                    KEY_BUNDLE,
                    sec.join.bundle.load().as_bytes().to_vec(),
                    0,
                ),
                Op::put_cas(
                    SECURITY,
                    KEY_CA_KEY,
                    seal.seal(ca.key_pem().as_bytes(), KEY_CA_KEY).into_bytes(),
                    0,
                ),
                Op::put_cas(
                    SECURITY,
                    KEY_CLUSTER_KEY,
                    seal.seal(SealKey::random().to_hex().as_bytes(), KEY_CLUSTER_KEY)
                        .into_bytes(),
                    0,
                ),
            ];
            if let Some(agent) = sec.join.agent_secret.load().as_ref() {
                ops.push(Op::put_cas(
                    SECURITY,
                    KEY_AGENT_SECRET,
                    seal.seal(agent.as_bytes(), KEY_AGENT_SECRET).into_bytes(),
                    0,
                ));
            }
            store.write(Txn { ops }).await?;
        }
    } else if let Some(sealed) = read(store, KEY_CA_KEY).await? {
        let key = String::from_utf8(seal.open(&sealed, KEY_CA_KEY)?)?;
        let bundle = sec.join.bundle.load_full();
        let ca = ClusterCa::from_pem(&bundle, &key)?;
        sec.dir.write(files::CA_KEY, &key, 0o600)?;
        sec.join.ca.store(Arc::new(Some(ca)));
        tracing::info!(
            "received the CA key: this server can now sign certificates for joining nodes"
        );
    }
    if sec.join.agent_secret.load().is_none() {
        if let Some(sealed) = read(store, KEY_AGENT_SECRET).await? {
            let secret = String::from_utf8(seal.open(&sealed, KEY_AGENT_SECRET)?)?;
            let fp = pier_security::ca::fingerprint_pem(&sec.join.bundle.load())?;
            sec.dir.write(
                files::AGENT_TOKEN,
                &JoinToken::new(Some(fp), secret.clone()).to_string(),
                0o600,
            )?;
            sec.join.agent_secret.store(Arc::new(Some(secret)));
        }
    }
    if sec.created_cluster && !sec.dir.exists(files::MANAGEMENT_TOKEN) {
        make_first_management_token(sec, store).await?;
    }
    Ok(())
}

/// The first management token, made once by the server that made the cluster.
async fn make_first_management_token(sec: &ServerSecurity, store: &Store) -> anyhow::Result<()> {
    if read(store, KEY_ACL_BOOTSTRAPPED).await?.is_some() {
        return Ok(());
    }
    let (secret, record) = TokenRecord::create(
        "first management token (made at cluster creation)",
        vec![Policy::Management],
        None,
        pier_api::time::now_ms(),
    );
    let txn = Txn {
        ops: vec![
            Op::put_cas(
                SECURITY,
                KEY_ACL_BOOTSTRAPPED,
                record.accessor.clone().into_bytes(),
                0,
            ),
            Op::put(
                ACL_TOKENS,
                record.secret_hash.clone(),
                serde_json::to_vec(&record)?,
            ),
            Op::put(
                ACL_ACCESSORS,
                record.accessor.clone(),
                record.secret_hash.clone().into_bytes(),
            ),
        ],
    };
    if !store.write(txn).await?.applied {
        return Ok(());
    }
    sec.dir.write(files::MANAGEMENT_TOKEN, &secret, 0o600)?;
    tracing::info!(
        "management API token: {secret}\n  (also in {}; export PIER_TOKEN=... to use the CLI)",
        sec.dir.path(files::MANAGEMENT_TOKEN).display()
    );
    Ok(())
}

/// Renews this server's certificate once two thirds of its life have passed, or at once when
/// the CA that signs now did not sign it (a CA rotation), issued by its own CA key or by
/// another server through `/pier/v1/renew`, and puts it in use on both
/// listeners and every client: nothing restarts, no connection drops.
pub async fn renew_loop(sec: Arc<ServerSecurity>, store: Store, internal: pier_net::HttpClient) {
    loop {
        let node = sec.node.load_full();
        let due = pier_security::ca::renew_after(&node.cert_pem).unwrap_or(0);
        let now = pier_api::time::now_secs();
        // Level-triggered: a certificate not signed by the CA that signs now (the first of
        // the bundle; it changes in a CA rotation) is renewed whatever its age.
        let current = pier_security::ca::issued_by(&node.cert_pem, &sec.join.bundle.load());
        if now < due && current {
            tokio::time::sleep(Duration::from_secs((due - now).min(2))).await;
            continue;
        }
        match renew_once(&sec, &store, &node).await {
            Ok(renewed) => match install(&sec, &store, &internal, renewed) {
                Ok(()) => {
                    tracing::info!("server certificate renewed");
                    let node = sec.node.load();
                    if !pier_security::ca::issued_by(&node.cert_pem, &sec.join.bundle.load()) {
                        // Renewed through a server that has not switched to the new CA yet.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "renewed certificate not put in use")
                }
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

async fn renew_once(
    sec: &ServerSecurity,
    store: &Store,
    node: &NodeCert,
) -> anyhow::Result<NodeCert> {
    if let Some(ca) = sec.join.ca.load().as_ref() {
        return Ok(ca.issue(
            &sec.identity,
            &sec.addresses,
            sec.cert_lifetime,
            pier_api::time::now_secs(),
        )?);
    }
    let bundle = sec.join.bundle.load_full();
    let mut last = anyhow::anyhow!("no other server to renew through");
    for m in store
        .status()
        .members
        .iter()
        .filter(|m| m.name != sec.identity.name)
    {
        match join::renew(&m.raft_addr, &bundle, node, &sec.addresses).await {
            Ok((renewed, _)) => return Ok(renewed),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub(crate) fn install(
    sec: &ServerSecurity,
    store: &Store,
    internal: &pier_net::HttpClient,
    renewed: NodeCert,
) -> anyhow::Result<()> {
    let bundle = sec.join.bundle.load_full();
    let (raft, api) = tls_configs(&bundle, &renewed)?;
    sec.dir.write(files::NODE_KEY, &renewed.key_pem, 0o600)?;
    sec.dir.write(files::NODE_CERT, &renewed.cert_pem, 0o644)?;
    sec.raft_tls.store(raft.load_full());
    sec.api_tls.store(api.load_full());
    let client = client_config(
        &[bundle.as_str()],
        Some((&renewed.cert_pem, &renewed.key_pem)),
    )?;
    store.set_peer_tls(client.clone())?;
    internal.set_tls(client)?;
    sec.node.store(Arc::new(renewed));
    Ok(())
}
