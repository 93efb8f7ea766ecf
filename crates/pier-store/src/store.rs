//! `Store`: opens the data directory, runs Raft and the peer RPC server, serves reads, writes,
//! watches and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::batcher::{BatchError, PendingWrite};
use crate::error::StoreError;
use crate::liveness::{QuorumAcks, Timing};
use crate::log_store::LogStore;
use crate::model::{validate_txn, Consistency, Txn, TxnResult, WatchKey};
use crate::network::{CallError, NetworkFactory, PeerClient};
use crate::sm_store::{write_file_atomically, SmShared, SmStore};
use crate::state::StateView;
use crate::watch::{Watch, WatchRegistry};
use crate::wire::{
    InfoReply, LeaderReply, LogId, MemberWire, NodeId, NodeInfo, Raft, RemoveRequest, Request,
    Response, TxnResultWire, TxnWire,
};

/// How long `write` and consistent reads keep retrying across leader changes.
const LEADER_RETRY_FOR: Duration = Duration::from_secs(10);
/// Upper bound for one leader-side operation (commit of a write, read-index).
const LEADER_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a forwarded write, how long to wait for it to be applied here (read-your-writes).
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(2);
/// Tombstones older than about this are reaped by the leader.
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);
const RETRY_PAUSE: Duration = Duration::from_millis(30);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a membership change waits for an earlier one to finish.
const MEMBERSHIP_BUSY_WAIT: Duration = Duration::from_secs(10);
/// Connections the raft port serves at once (peers, forwarded calls, joins).
const RAFT_MAX_CONNECTIONS: usize = 512;

const NODE_FILE: &str = "node.json";
const LOG_FILE: &str = "raft-log.redb";
const STATE_FILE: &str = "state.redb";
const SNAPSHOT_FILE: &str = "snapshot.bin";
const NODE_FILE_FORMAT: &str = "pier-store/1";

/// Configuration of one server's store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Human name, unique in the cluster.
    pub node_name: String,
    /// Everything of this store lives under it.
    pub data_dir: PathBuf,
    /// Where the internal raft RPC server binds (port 0 allowed: the bound port is used).
    pub raft_listen: SocketAddr,
    /// Address peers dial; default = bound raft address.
    pub raft_advertise: Option<SocketAddr>,
    /// This server's public HTTP API address, kept in membership node info.
    pub http_advertise: String,
    /// 1 = form a one-member cluster at once.
    pub bootstrap_expect: usize,
    /// Raft addresses of other servers ("host:port").
    pub join: Vec<String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries, then purge the log.
    pub snapshot_every_logs: u64,
    /// mTLS on the raft port (None: plain HTTP, for `pier dev` and `--insecure`).
    pub tls: Option<StoreTls>,
    /// Routes served on the raft port next to the raft RPCs, without the server-identity
    /// check (a joining server asks for the CA and its certificate here).
    pub extra_routes: Option<axum::Router>,
}

/// TLS of the raft port: the listener's configuration (replaceable while it runs) and the
/// client configuration this server calls its peers with.
#[derive(Clone)]
pub struct StoreTls {
    pub server: pier_net::ServerTls,
    pub client: rustls::ClientConfig,
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreTls { .. }")
    }
}

impl StoreConfig {
    /// A one-node configuration with LAN-friendly timings, for `pier dev` and tests.
    pub fn single_node(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            raft_advertise: None,
            http_advertise: String::new(),
            bootstrap_expect: 1,
            join: Vec::new(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_logs: 10_000,
            tls: None,
            extra_routes: None,
        }
    }
}

/// A member of the cluster as membership records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
    /// False for a learner that is still catching up.
    pub voter: bool,
}

/// A point-in-time view of this server's Raft state.
#[derive(Clone, Debug)]
pub struct StoreStatus {
    pub node_name: String,
    pub node_id: u64,
    pub is_leader: bool,
    pub leader: Option<MemberInfo>,
    pub members: Vec<MemberInfo>,
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    pub commit_index: u64,
    /// Milliseconds since the leader was last heard from (0 on the leader, None if never).
    pub last_contact_ms: Option<u64>,
    /// Last log index covered by the current snapshot (0 = none).
    pub snapshot_index: u64,
    /// Log entries up to this index have been purged (0 = none).
    pub purged_index: u64,
}

/// What a read answer reports about leadership (Consul's `X-Consul-KnownLeader` and
/// `X-Consul-LastContact`): the part of [`StoreStatus`] that is cheap to take on every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderContact {
    /// A leader that is a member of the current configuration is known.
    pub known_leader: bool,
    pub is_leader: bool,
    /// Milliseconds since the leader was last heard from (0 on the leader, None if never).
    pub last_contact_ms: Option<u64>,
}

/// Handle to the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub raft: Raft,
    node_id: NodeId,
    node_name: String,
    raft_addr: SocketAddr,
    advertise: String,
    http_advertise: String,
    bootstrap_expect: usize,
    join: Vec<String>,
    sm: Arc<SmShared>,
    watches: Arc<WatchRegistry>,
    client: PeerClient,
    committed_index: Arc<AtomicU64>,
    started: Instant,
    /// Milliseconds since `started` of the last append/snapshot a leader sent and this server
    /// accepted; 0 = never.
    last_contact_at_ms: AtomicU64,
    timing: Timing,
    /// Followers' acknowledgements of this server's appends (the leader lease).
    acks: Arc<QuorumAcks>,
    /// A server restarted with a log grants no vote before this (see `liveness`).
    votes_refused_until: Option<Instant>,
    known_peers: Mutex<BTreeMap<NodeId, MemberWire>>,
    /// Raft addresses that called this server for another node id (it lost its state): the
    /// cluster it belonged to, to ask again.
    hinted_addrs: Mutex<BTreeSet<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    /// Dead once openraft and the log writer thread have closed the log file (see `shutdown`).
    /// Set once the raft log file is closed (see `LogDb`).
    log_release: Arc<std::sync::atomic::AtomicBool>,
    batch_tx: tokio::sync::mpsc::UnboundedSender<PendingWrite>,
}

enum LeaderIs {
    Me,
    Other(MemberWire),
    Unknown,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    format: String,
    node_id: u64,
    node_name: String,
}

fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mix in time and pid so two ids never collide in practice.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Reads or creates the node identity; refuses directories that are not ours.
fn load_identity(dir: &Path, node_name: &str) -> Result<u64, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let path = dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let nf: NodeFile = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::corrupt(&path, format!("unreadable node identity: {e}"))
            })?;
            if nf.format != NODE_FILE_FORMAT {
                return Err(StoreError::corrupt(
                    &path,
                    format!("unknown format {:?}", nf.format),
                ));
            }
            if nf.node_name != node_name {
                tracing::warn!(old = %nf.node_name, new = %node_name, "node name changed since this data directory was created");
            }
            Ok(nf.node_id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
            let foreign: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !foreign.is_empty() {
                return Err(StoreError::corrupt(
                    dir,
                    format!(
                        "the directory is not empty ({}) but has no {NODE_FILE}, so it is not a pier-store data directory",
                        foreign.join(", ")
                    ),
                ));
            }
            let nf = NodeFile {
                format: NODE_FILE_FORMAT.to_string(),
                node_id: random_node_id(),
                node_name: node_name.to_string(),
            };
            let bytes = serde_json::to_vec_pretty(&nf)
                .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?;
            write_file_atomically(&path, &[&bytes], "")?;
            Ok(nf.node_id)
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

fn raft_config(cfg: &StoreConfig) -> Result<Config, StoreError> {
    let every = cfg.snapshot_every_logs.max(1);
    let config = Config {
        cluster_name: "pier".to_string(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        install_snapshot_timeout: 30_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(every),
        // A short tail lets a briefly lagging follower catch up from the log.
        max_in_snapshot_log_to_keep: (every / 2).min(1000),
        // Elections are switched on by the pre-vote loop only while one could be won.
        enable_elect: false,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StoreError::InvalidInput(format!("raft timing configuration: {e}")))
}

impl Store {
    /// Opens or creates the data directory, starts Raft and the raft RPC server, and bootstraps
    /// or joins in the background. Returns once the node runs, not once a leader exists.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        if cfg.node_name.is_empty() {
            return Err(StoreError::InvalidInput(
                "node_name must not be empty".into(),
            ));
        }
        if cfg.raft_advertise.is_none() && cfg.raft_listen.ip().is_unspecified() {
            return Err(StoreError::InvalidInput(format!(
                "raft_listen {} is a wildcard address peers cannot dial; set raft_advertise to this server's reachable address",
                cfg.raft_listen
            )));
        }
        let config = raft_config(&cfg)?;
        let node_id = load_identity(&cfg.data_dir, &cfg.node_name)?;
        let committed_index = Arc::new(AtomicU64::new(0));
        let log = LogStore::open(cfg.data_dir.join(LOG_FILE), committed_index.clone())?;
        let log_release = log.release_handle();
        let watches = Arc::new(WatchRegistry::default());
        let sm = SmStore::open(
            cfg.data_dir.join(STATE_FILE),
            cfg.data_dir.join(SNAPSHOT_FILE),
            watches.clone(),
        )?;
        let sm_shared = sm.shared.clone();

        let listener = tokio::net::TcpListener::bind(cfg.raft_listen)
            .await
            .map_err(|e| StoreError::io(PathBuf::from(format!("tcp://{}", cfg.raft_listen)), e))?;
        let raft_addr = listener
            .local_addr()
            .map_err(|e| StoreError::io(PathBuf::from(format!("tcp://{}", cfg.raft_listen)), e))?;
        let advertise = cfg.raft_advertise.unwrap_or(raft_addr).to_string();

        let client = PeerClient::new(
            advertise.clone(),
            cfg.tls.as_ref().map(|t| t.client.clone()),
        )
        .map_err(|e| StoreError::Raft(format!("HTTP client: {e}")))?;
        let acks = Arc::new(QuorumAcks::default());
        let network = NetworkFactory {
            client: client.clone(),
            self_id: node_id,
            acks: acks.clone(),
        };
        let timing = Timing {
            heartbeat_ms: cfg.heartbeat_interval_ms,
            election_min_ms: cfg.election_timeout_min_ms,
            election_max_ms: cfg.election_timeout_max_ms,
        };
        let raft = Raft::new(node_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;

        let restarted_with_log = raft.metrics().borrow().last_log_index.is_some();
        let votes_refused_until = restarted_with_log
            .then(|| Instant::now() + Duration::from_millis(timing.election_max_ms));
        let (batch_tx, batch_rx) = tokio::sync::mpsc::unbounded_channel();
        let batcher = tokio::spawn(crate::batcher::run(raft.clone(), batch_rx));
        let inner = Arc::new(Inner {
            raft,
            node_id,
            node_name: cfg.node_name.clone(),
            raft_addr,
            advertise,
            http_advertise: cfg.http_advertise.clone(),
            bootstrap_expect: cfg.bootstrap_expect,
            join: cfg.join.clone(),
            sm: sm_shared,
            watches,
            client,
            committed_index,
            started: Instant::now(),
            last_contact_at_ms: AtomicU64::new(0),
            timing,
            acks,
            votes_refused_until,
            known_peers: Mutex::new(BTreeMap::new()),
            hinted_addrs: Mutex::new(BTreeSet::new()),
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            batch_tx,
            log_release,
        });

        let mut app = crate::server::router(inner.clone(), cfg.tls.is_some());
        if let Some(extra) = cfg.extra_routes.clone() {
            app = app.merge(extra);
        }
        let listener_config = match &cfg.tls {
            Some(tls) => pier_net::ListenerConfig::tls(tls.server.clone(), RAFT_MAX_CONNECTIONS),
            None => pier_net::ListenerConfig::plain(RAFT_MAX_CONNECTIONS),
        };
        let server = tokio::spawn(async move {
            if let Err(e) =
                pier_net::serve(listener, app, listener_config, std::future::pending()).await
            {
                tracing::error!(error = %e, "raft RPC server stopped");
            }
        });
        let boot = tokio::spawn(crate::bootstrap::run(Arc::downgrade(&inner)));
        let reaper = tokio::spawn(reap_loop(Arc::downgrade(&inner)));
        let prevote = tokio::spawn(crate::liveness::prevote_loop(Arc::downgrade(&inner)));
        inner
            .lock_tasks()
            .extend([server, boot, reaper, batcher, prevote]);
        tracing::info!(node_id, name = %cfg.node_name, raft_addr = %raft_addr, "store opened");
        Ok(Store { inner })
    }

    /// Replaces the certificate this server presents when it calls its peers (the listener's
    /// side is the [`StoreTls::server`] the caller keeps).
    pub fn set_peer_tls(&self, tls: rustls::ClientConfig) -> Result<(), StoreError> {
        self.inner
            .client
            .set_tls(tls)
            .map_err(|e| StoreError::Raft(format!("peer TLS client: {e}")))
    }

    /// The bound raft RPC address.
    pub fn raft_addr(&self) -> SocketAddr {
        self.inner.raft_addr
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Applies a transaction through Raft. On a follower it is forwarded to the leader; leader
    /// changes are retried for a bounded time.
    pub async fn write(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        validate_txn(&txn)?;
        self.inner
            .write_request(Request::Txn(TxnWire::from(txn)))
            .await
    }

    /// Runs `f` on the applied state after making it as fresh as `consistency` asks.
    pub async fn read<R>(
        &self,
        consistency: Consistency,
        f: impl FnOnce(&StateView<'_>) -> R,
    ) -> Result<R, StoreError> {
        self.inner.check_running()?;
        match consistency {
            Consistency::Stale => {}
            // Local only while the lease guarantees no other leader can have committed
            // anything; otherwise a read-index round like a consistent read.
            Consistency::Default if self.inner.lease_valid() => {
                self.inner.catch_up_to_sent_commit().await?
            }
            Consistency::Default | Consistency::Consistent => self.inner.linearize().await?,
        }
        let data = self.inner.sm.read();
        Ok(f(&StateView { data: &data }))
    }

    /// Subscribes to changes of `keys`. Subscribe before reading, then wait with
    /// [`Watch::changed`].
    pub fn watch(&self, keys: &[WatchKey]) -> Watch {
        self.inner.watches.subscribe(keys)
    }

    /// On the leader: returns once this server has applied everything any earlier leader
    /// committed (a read-index round, which covers the blank entry a new leader commits), with
    /// the term it leads in. Controllers call it before acting on a new leadership and guard
    /// their writes with [`Op::leader_term`] of that term. Fails on a follower.
    pub async fn leader_barrier(&self) -> Result<u64, StoreError> {
        let term_before = self.inner.leading_term().ok_or_else(not_leader_error)?;
        self.inner.linearize().await?;
        match self.inner.leading_term() {
            Some(term) if term == term_before => Ok(term),
            _ => Err(not_leader_error()),
        }
    }

    /// The term this server leads in, or None when it is not the leader.
    pub fn leading_term(&self) -> Option<u64> {
        self.inner.leading_term()
    }

    /// Waits until this server knows a leader (itself or another).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut rx = self.inner.raft.metrics();
        let wait = async {
            loop {
                if rx.borrow_and_update().current_leader.is_some() {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(StoreError::Shutdown);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            StoreError::NoLeader(format!(
                "no leader elected within {} ms",
                timeout.as_millis()
            ))
        })?
    }

    pub fn status(&self) -> StoreStatus {
        self.inner.status()
    }

    /// The leadership fields of [`Store::status`] without copying the membership: blocking
    /// queries answer thousands of watchers at once and each answer carries them.
    pub fn leader_contact(&self) -> LeaderContact {
        self.inner.leader_contact()
    }

    /// Adds a server to the cluster (as learner, then voter once caught up). Runs on the leader;
    /// forwarded there from a follower.
    pub async fn add_member(
        &self,
        id: u64,
        name: &str,
        raft_addr: &str,
        http_addr: &str,
    ) -> Result<(), StoreError> {
        let req = MemberWire {
            id,
            name: name.to_string(),
            raft_addr: raft_addr.to_string(),
            http_addr: http_addr.to_string(),
        };
        self.inner
            .leader_call(
                "/raft/join",
                &req,
                JOIN_TIMEOUT,
                LeaderOp::Join(req.clone()),
            )
            .await
    }

    /// Removes the server named `name` from the cluster. Refused when the voters left would
    /// not have a reachable quorum (or `name` is the leader), unless `force`.
    pub async fn remove_member(&self, name: &str, force: bool) -> Result<(), StoreError> {
        let req = RemoveRequest {
            name: name.to_string(),
            force,
        };
        self.inner
            .leader_call(
                "/raft/remove",
                &req,
                JOIN_TIMEOUT,
                LeaderOp::Remove(name.to_string(), force),
            )
            .await
    }

    /// Drops tombstones with a delete index <= `up_to_index` (the leader does this periodically).
    pub async fn reap_tombstones(&self, up_to_index: u64) -> Result<(), StoreError> {
        self.inner
            .write_request(Request::ReapTombstones { up_to_index })
            .await
            .map(|_| ())
    }

    /// Builds a snapshot now and purges the log behind it.
    pub async fn trigger_snapshot(&self) -> Result<(), StoreError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))
    }

    /// Resolves if Raft stops by itself (a storage error, a panic in its core): the server can
    /// no longer take part in the cluster and must exit loudly rather than linger half-alive.
    /// Never resolves after a [`Store::shutdown`].
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &rx.borrow_and_update().running_state {
                if !self.inner.stopped.load(Ordering::SeqCst) {
                    return format!("raft stopped: {fatal}");
                }
            }
            if rx.changed().await.is_err() {
                if self.inner.stopped.load(Ordering::SeqCst) {
                    return std::future::pending().await;
                }
                return "raft stopped: its core task ended (panicked)".to_string();
            }
        }
    }

    /// Stops Raft, the RPC server and background tasks, and fsyncs the state.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for t in self.inner.lock_tasks().drain(..) {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.inner.sm.flush()?;
        self.wait_log_released().await;
        tracing::info!(node = %self.inner.node_name, "store shut down");
        Ok(())
    }
}

impl Store {
    /// Raft's tasks drop their log readers as the runtime gets to them after `raft.shutdown()`,
    /// and the writer thread closes the file after its last sender is gone. A store reopened
    /// on the same directory (a restart in-process, or a new process while this one exits)
    /// would find the file still locked, so shutdown returns only once it is closed.
    async fn wait_log_released(&self) {
        const RELEASE_WAIT: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + RELEASE_WAIT;
        while !self.inner.log_release.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    node = %self.inner.node_name,
                    "the raft log file is still open {RELEASE_WAIT:?} after shutdown"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn reap_loop(inner: std::sync::Weak<Inner>) {
    let mut previous: Option<u64> = None;
    loop {
        tokio::time::sleep(TOMBSTONE_TTL).await;
        let Some(inner) = inner.upgrade() else { return };
        let applied = inner.sm.read().last_applied.map(|l| l.index).unwrap_or(0);
        if inner.is_leader() {
            if let Some(up_to) = previous {
                if let Err(e) = inner
                    .write_request(Request::ReapTombstones { up_to_index: up_to })
                    .await
                {
                    tracing::warn!(error = %e, "reaping tombstones");
                }
            }
        }
        previous = Some(applied);
    }
}

fn member(id: NodeId, n: &NodeInfo) -> MemberWire {
    MemberWire {
        id,
        name: n.name.clone(),
        raft_addr: n.raft_addr.clone(),
        http_addr: n.http_addr.clone(),
    }
}

impl Inner {
    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn self_member(&self) -> MemberWire {
        MemberWire {
            id: self.node_id,
            name: self.node_name.clone(),
            raft_addr: self.advertise.clone(),
            http_addr: self.http_advertise.clone(),
        }
    }

    pub fn bootstrap_expect(&self) -> usize {
        self.bootstrap_expect
    }

    pub fn join_addrs(&self) -> &[String] {
        &self.join
    }

    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    pub fn check_running(&self) -> Result<(), StoreError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(StoreError::Shutdown);
        }
        Ok(())
    }

    pub fn note_leader_contact(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_contact_at_ms.store(ms.max(1), Ordering::Relaxed);
    }

    pub fn note_peer(&self, peer: MemberWire) {
        if peer.id == self.node_id {
            return;
        }
        self.known_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.id, peer);
    }

    /// Remembers the raft address of a server that called this one for another node id.
    pub fn hint_peer_addr(&self, addr: &str) {
        if addr.is_empty() || addr == self.advertise {
            return;
        }
        let mut hints = self.hinted_addrs.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a handful of servers call a member; anything beyond is noise.
        if hints.len() < 16 {
            hints.insert(addr.to_string());
        }
    }

    pub fn hinted_addrs(&self) -> Vec<String> {
        self.hinted_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn known_peers(&self) -> Vec<MemberWire> {
        self.known_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.node_id) && m.state == ServerState::Leader
    }

    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader == Some(self.node_id) && m.state == ServerState::Leader)
            .then_some(m.current_term)
    }

    pub fn is_leader_now(&self) -> bool {
        self.is_leader()
    }

    /// Every member of the configuration this server follows (for finding the cluster again).
    pub fn membership_members(&self) -> Vec<MemberWire> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let members: Vec<MemberWire> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| member(*id, n))
            .collect();
        members
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// True during the first moments after a restart with a log (see `liveness`).
    pub fn votes_refused_now(&self) -> bool {
        self.votes_refused_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// How long since a leader's append or snapshot was last accepted here; None if never.
    pub fn leader_silence(&self) -> Option<Duration> {
        match self.last_contact_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(
                (self.started.elapsed().as_millis() as u64).saturating_sub(at),
            )),
        }
    }

    /// The last log id this server holds (for pre-vote comparisons).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.raft.data_metrics().borrow().last_log
    }

    pub fn member_raft_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.raft_addr.clone())
    }

    /// On a leader: how long since a quorum of every configuration last accepted its appends.
    /// None when this server is not the leader, or no quorum has answered yet in this term
    /// (a leader is elected by a quorum, so that is not silence).
    fn quorum_silence(&self) -> Option<Duration> {
        let (term, joint) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if !(m.current_leader == Some(self.node_id) && m.state == ServerState::Leader) {
                return None;
            }
            (
                m.current_term,
                m.membership_config.membership().get_joint_config().clone(),
            )
        };
        let now = Instant::now();
        self.acks
            .quorum_instant(self.node_id, term, &joint, now)
            .map(|at| now.saturating_duration_since(at))
    }

    /// A leader may serve reads locally while a quorum acknowledged it within the lease, and
    /// only once it has applied an entry of its own term: until its first entry (the blank one
    /// a new leader commits) is applied, entries an earlier leader committed may not be
    /// applied here yet, and a local read would miss them.
    pub fn lease_valid(&self) -> bool {
        let Some(term) = self.leading_term() else {
            return false;
        };
        let applied_term = self
            .sm
            .read()
            .last_applied
            .map(|l| l.leader_id.term)
            .unwrap_or(0);
        applied_term == term
            && self
                .quorum_silence()
                .is_some_and(|s| s < self.timing.lease())
    }

    /// A leader that has not heard from a quorum for an election timeout may be deposed
    /// already: it stops claiming to be a known leader and takes no new writes.
    fn leader_cut_off(&self) -> bool {
        self.quorum_silence()
            .is_some_and(|s| s > self.timing.silence_limit())
    }

    /// The leader to send work to now: `Unknown` also when the known leader has gone silent
    /// (a follower's leader, or this server cut off from its quorum), so callers wait for the
    /// next leader instead of queueing behind a dead one.
    fn usable_leader(&self) -> LeaderIs {
        match self.leader() {
            LeaderIs::Me if self.leader_cut_off() => LeaderIs::Unknown,
            LeaderIs::Other(_)
                if self
                    .leader_silence()
                    .is_some_and(|s| s > self.timing.silence_limit()) =>
            {
                LeaderIs::Unknown
            }
            other => other,
        }
    }

    /// Resolves once `leader` should no longer be waited on: this server's view of the leader
    /// changed, or that leader has been silent for longer than an election timeout (for this
    /// server as leader: its quorum has).
    async fn leader_lost(&self, leader: NodeId) {
        let mut rx = self.raft.metrics();
        let tick = Duration::from_millis(self.timing.heartbeat_ms.max(10));
        loop {
            if rx.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            let silent = if leader == self.node_id {
                self.leader_cut_off()
            } else {
                self.leader_silence()
                    .is_some_and(|s| s > self.timing.silence_limit())
            };
            if silent {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Sends `body` to the leader's `path`; gives up as soon as that leader is lost.
    async fn call_leader<B: Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        leader: &MemberWire,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, ForwardError> {
        let call = self
            .client
            .call(&leader.raft_addr, path, body, timeout, Some(leader.id));
        tokio::select! {
            res = call => res.map_err(ForwardError::Call),
            _ = self.leader_lost(leader.id) => Err(ForwardError::LeaderLost),
        }
    }

    fn leader(&self) -> LeaderIs {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(id) if id == self.node_id => {
                if m.state == ServerState::Leader {
                    LeaderIs::Me
                } else {
                    LeaderIs::Unknown
                }
            }
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(n) => LeaderIs::Other(member(id, n)),
                None => LeaderIs::Unknown,
            },
            None => LeaderIs::Unknown,
        }
    }

    fn leader_member(&self) -> Option<MemberWire> {
        match self.leader() {
            LeaderIs::Me => Some(self.self_member()),
            LeaderIs::Other(m) => Some(m),
            LeaderIs::Unknown => None,
        }
    }

    /// This server's node info as membership records it, once a leader is known (so the
    /// membership is current enough to compare against).
    pub fn recorded_self_info(&self) -> Option<NodeInfo> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&self.node_id)
            .cloned()
    }

    pub async fn add_self_to_membership(&self) -> Result<(), StoreError> {
        let me = self.self_member();
        self.leader_call("/raft/join", &me, JOIN_TIMEOUT, LeaderOp::Join(me.clone()))
            .await
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<(), StoreError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StoreError::Raft(e.to_string())),
        }
    }

    pub async fn info(&self) -> InfoReply {
        InfoReply {
            id: self.node_id,
            name: self.node_name.clone(),
            raft_addr: self.advertise.clone(),
            http_addr: self.http_advertise.clone(),
            initialized: self.is_initialized().await,
            leader: self.leader_member(),
            known: self.known_peers(),
            members: {
                let m = self.raft.metrics();
                let m = m.borrow();
                let ids: Vec<u64> = m
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect();
                ids
            },
        }
    }

    /// On a follower, time since its leader was heard from; on a leader, since a quorum
    /// acknowledged it (0 until the first acknowledgement of its term).
    fn last_contact_ms(&self, is_leader: bool) -> Option<u64> {
        if is_leader {
            return Some(
                self.quorum_silence()
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            );
        }
        self.leader_silence().map(|d| d.as_millis() as u64)
    }

    fn leader_contact(&self) -> LeaderContact {
        let (is_leader, member_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let is_leader =
                m.current_leader == Some(self.node_id) && m.state == ServerState::Leader;
            let member_leader = m.current_leader.is_some_and(|leader| {
                m.membership_config
                    .membership()
                    .nodes()
                    .any(|(id, _)| *id == leader)
            });
            (is_leader, member_leader)
        };
        let last_contact_ms = self.last_contact_ms(is_leader);
        // A leader nobody has heard from (or that has heard from no quorum) for an election
        // timeout may have been replaced: do not claim it.
        let fresh = last_contact_ms.is_none_or(|ms| ms <= self.timing.election_max_ms);
        LeaderContact {
            known_leader: member_leader && fresh,
            is_leader,
            last_contact_ms,
        }
    }

    fn status(&self) -> StoreStatus {
        // Copy what is needed and let go of the metrics before anything else borrows them
        // (a nested borrow can deadlock against openraft publishing new metrics).
        let metrics = self.raft.metrics().borrow().clone();
        let m = &metrics;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<MemberInfo> = membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                name: n.name.clone(),
                raft_addr: n.raft_addr.clone(),
                http_addr: n.http_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let is_leader = m.current_leader == Some(self.node_id) && m.state == ServerState::Leader;
        let leader = m
            .current_leader
            .and_then(|id| members.iter().find(|mi| mi.id == id).cloned());
        let last_contact_ms = self.last_contact_ms(is_leader);
        let last_applied_index = m.last_applied.map(|l| l.index).unwrap_or(0);
        StoreStatus {
            node_name: self.node_name.clone(),
            node_id: self.node_id,
            is_leader,
            leader,
            members,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index,
            commit_index: self
                .committed_index
                .load(Ordering::Relaxed)
                .max(last_applied_index),
            last_contact_ms,
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        }
    }

    /// Before a lease read: a follower may already serve every entry this leader told it is
    /// committed, so the leader's own applied state must be at least that far (otherwise a
    /// client could read a value on a follower and then an older one here).
    async fn catch_up_to_sent_commit(&self) -> Result<(), StoreError> {
        match self.acks.commit_sent() {
            Some(index) => self.wait_applied(index, LEADER_OP_TIMEOUT).await,
            None => Ok(()),
        }
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), StoreError> {
        if self.sm.read().last_applied.map(|l| l.index).unwrap_or(0) >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "store read")
            .await
            .map(|_| ())
            .map_err(|e| {
                StoreError::Timeout(format!(
                    "waiting for index {index} to be applied locally: {e}"
                ))
            })
    }

    /// Writes through Raft: locally on the leader, forwarded from a follower.
    ///
    /// A write is retried (on whichever server is leader then) only while it certainly has
    /// not happened: no leader, not the leader, connection refused. Once it may have reached
    /// a leader, a lost leader or a timeout is reported as "outcome unknown", at once rather
    /// than after the full timeout.
    pub async fn write_request(&self, req: Request) -> Result<TxnResult, StoreError> {
        let deadline = Instant::now() + LEADER_RETRY_FOR;
        let mut last_problem = String::from("no leader known");
        loop {
            self.check_running()?;
            match self.usable_leader() {
                LeaderIs::Me => match self.commit_local(req.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(LocalWriteError::NotLeader) => last_problem = "leadership moved".into(),
                    Err(LocalWriteError::Fail(e)) => return Err(e),
                },
                LeaderIs::Other(leader) => {
                    let Request::Txn(t) = &req else {
                        // Reaping is only issued by a leader for itself; batches only by the batcher.
                        return Err(StoreError::NoLeader("this server is not the leader".into()));
                    };
                    let res: Result<LeaderReply<TxnResultWire>, ForwardError> = self
                        .call_leader(&leader, "/raft/write", t, LEADER_OP_TIMEOUT)
                        .await;
                    match res {
                        Ok(LeaderReply::Ok(r)) => {
                            if let Err(e) = self.wait_applied(r.index, LOCAL_APPLY_WAIT).await {
                                tracing::debug!(error = %e, "forwarded write not yet applied locally");
                            }
                            return Ok(r.into());
                        }
                        Ok(LeaderReply::NotLeader { .. }) => {
                            last_problem = format!("{} is no longer leader", leader.name)
                        }
                        Ok(LeaderReply::Invalid(m)) => return Err(StoreError::InvalidInput(m)),
                        Ok(LeaderReply::Error(m)) => return Err(StoreError::Raft(m)),
                        Err(ForwardError::Call(CallError::Unreachable(e))) => last_problem = e,
                        Err(ForwardError::LeaderLost) => {
                            return Err(StoreError::Timeout(format!(
                                "write forwarded to leader {} got no answer before that leader was lost (replaced or silent for over {} ms); its outcome is unknown",
                                leader.name, self.timing.election_max_ms
                            )))
                        }
                        Err(ForwardError::Call(CallError::Timeout(e))) => {
                            return Err(StoreError::Timeout(format!(
                                "write forwarded to leader {} got no answer, its outcome is unknown: {e}",
                                leader.name
                            )))
                        }
                        Err(ForwardError::Call(CallError::Other(e))) => {
                            return Err(StoreError::Raft(format!(
                                "write forwarded to leader {} failed, its outcome is unknown: {e}",
                                leader.name
                            )))
                        }
                    }
                }
                LeaderIs::Unknown => {}
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoLeader(format!(
                    "write not accepted within {} s ({last_problem})",
                    LEADER_RETRY_FOR.as_secs()
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn commit_local(&self, req: Request) -> Result<TxnResult, LocalWriteError> {
        let req = match req {
            Request::Txn(txn) => return self.commit_batched(txn).await,
            other => other,
        };
        let commit = tokio::time::timeout(LEADER_OP_TIMEOUT, self.raft.client_write(req));
        let res = tokio::select! {
            res = commit => res,
            _ = self.leader_lost(self.node_id) => return Err(self.lost_while_committing()),
        };
        match res {
            Err(_) => Err(LocalWriteError::Fail(StoreError::Timeout(format!(
                "write not committed within {} s; its outcome is unknown (is a majority of servers up?)",
                LEADER_OP_TIMEOUT.as_secs()
            )))),
            Ok(Ok(resp)) => match resp.data {
                Response::Txn(r) => Ok(r.into()),
                Response::Batch(_) | Response::Done => Ok(TxnResult {
                    index: resp.log_id.index,
                    applied: true,
                    failed_op: None,
                }),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(LocalWriteError::NotLeader),
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(LocalWriteError::Fail(StoreError::Shutdown)),
            Ok(Err(e)) => Err(LocalWriteError::Fail(StoreError::Raft(e.to_string()))),
        }
    }

    async fn commit_batched(&self, txn: TxnWire) -> Result<TxnResult, LocalWriteError> {
        let (pending, rx) = PendingWrite::new(txn);
        if self.batch_tx.send(pending).is_err() {
            return Err(LocalWriteError::Fail(StoreError::Shutdown));
        }
        let commit = tokio::time::timeout(LEADER_OP_TIMEOUT, rx);
        let res = tokio::select! {
            res = commit => res,
            _ = self.leader_lost(self.node_id) => return Err(self.lost_while_committing()),
        };
        match res {
            Err(_) => Err(LocalWriteError::Fail(StoreError::Timeout(format!(
                "write not committed within {} s; its outcome is unknown (is a majority of servers up?)",
                LEADER_OP_TIMEOUT.as_secs()
            )))),
            Ok(Err(_)) => Err(LocalWriteError::Fail(StoreError::Shutdown)),
            Ok(Ok(Ok(r))) => Ok(r.into()),
            Ok(Ok(Err(BatchError::NotLeader))) => Err(LocalWriteError::NotLeader),
            Ok(Ok(Err(BatchError::Stopped))) => Err(LocalWriteError::Fail(StoreError::Shutdown)),
            Ok(Ok(Err(BatchError::Raft(e)))) => Err(LocalWriteError::Fail(StoreError::Raft(e))),
        }
    }

    /// A write was proposed here and then this server lost leadership or its quorum: the
    /// entry may still be committed by the next leader, or be dropped.
    fn lost_while_committing(&self) -> LocalWriteError {
        LocalWriteError::Fail(StoreError::Timeout(format!(
            "this server lost its leadership or its quorum (no answer for over {} ms) before the write committed; its outcome is unknown",
            self.timing.election_max_ms
        )))
    }

    /// Makes the local state at least as fresh as the leader's commit at call time.
    async fn linearize(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + LEADER_RETRY_FOR;
        let mut last_problem = String::from("no leader known");
        loop {
            self.check_running()?;
            match self.usable_leader() {
                LeaderIs::Me => {
                    let res = tokio::select! {
                        res = self.local_read_index() => res,
                        _ = self.leader_lost(self.node_id) => Err(LocalWriteError::NotLeader),
                    };
                    match res {
                        Ok(index) => return self.wait_applied(index, LEADER_OP_TIMEOUT).await,
                        Err(LocalWriteError::NotLeader) => {
                            last_problem = "leadership moved or quorum lost".into()
                        }
                        Err(LocalWriteError::Fail(e)) => return Err(e),
                    }
                }
                LeaderIs::Other(leader) => {
                    // Read-index changes nothing, so it is simply asked again of the next leader.
                    let res: Result<LeaderReply<u64>, ForwardError> = self
                        .call_leader(&leader, "/raft/read-index", &(), LEADER_OP_TIMEOUT)
                        .await;
                    match res {
                        Ok(LeaderReply::Ok(index)) => {
                            return self.wait_applied(index, LEADER_OP_TIMEOUT).await
                        }
                        Ok(LeaderReply::NotLeader { .. }) => {
                            last_problem = format!("{} is no longer leader", leader.name)
                        }
                        Ok(LeaderReply::Invalid(m)) => return Err(StoreError::InvalidInput(m)),
                        Ok(LeaderReply::Error(m)) => last_problem = m,
                        Err(ForwardError::LeaderLost) => {
                            last_problem = format!("leader {} was lost", leader.name)
                        }
                        Err(ForwardError::Call(e)) => last_problem = e.to_string(),
                    }
                }
                LeaderIs::Unknown => {}
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoLeader(format!(
                    "consistent read not possible within {} s ({last_problem})",
                    LEADER_RETRY_FOR.as_secs()
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Leader side of read-index: confirm leadership with a quorum, return the index to wait for.
    async fn local_read_index(&self) -> Result<u64, LocalWriteError> {
        match tokio::time::timeout(LEADER_OP_TIMEOUT, self.raft.get_read_log_id()).await {
            Err(_) => Err(LocalWriteError::Fail(StoreError::Timeout(
                "leadership not confirmed by a quorum in time".into(),
            ))),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(LocalWriteError::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(LocalWriteError::Fail(StoreError::NoLeader(format!(
                    "leader could not reach a quorum: {e}"
                ))))
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => {
                Err(LocalWriteError::Fail(StoreError::Shutdown))
            }
            Ok(Err(e)) => Err(LocalWriteError::Fail(StoreError::Raft(e.to_string()))),
        }
    }

    fn not_leader<T>(&self) -> LeaderReply<T> {
        LeaderReply::NotLeader {
            leader: self.leader_member(),
        }
    }

    pub async fn leader_write(&self, txn: TxnWire) -> LeaderReply<TxnResultWire> {
        // Forwarded input crossed the network: check it like a local write.
        let txn = match txn.into_txn().and_then(|t| validate_txn(&t).map(|_| t)) {
            Ok(t) => TxnWire::from(t),
            Err(e) => return LeaderReply::Invalid(e.to_string()),
        };
        if !self.is_leader() {
            return self.not_leader();
        }
        match self.commit_local(Request::Txn(txn)).await {
            Ok(r) => LeaderReply::Ok(TxnResultWire {
                index: r.index,
                applied: r.applied,
                failed_op: r.failed_op,
            }),
            Err(LocalWriteError::NotLeader) => self.not_leader(),
            Err(LocalWriteError::Fail(e)) => LeaderReply::Error(e.to_string()),
        }
    }

    pub async fn leader_read_index(&self) -> LeaderReply<u64> {
        if !self.is_leader() {
            return self.not_leader();
        }
        match self.local_read_index().await {
            Ok(i) => LeaderReply::Ok(i),
            Err(LocalWriteError::NotLeader) => self.not_leader(),
            Err(LocalWriteError::Fail(e)) => LeaderReply::Error(e.to_string()),
        }
    }

    pub async fn leader_join(&self, req: MemberWire) -> LeaderReply<()> {
        if req.name.is_empty() || req.raft_addr.is_empty() {
            return LeaderReply::Invalid("join needs a node name and a raft address".into());
        }
        if !self.is_leader() {
            return self.not_leader();
        }
        let (is_voter, is_learner, clash, addr_clash, recorded) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let ms = m.membership_config.membership();
            let recorded = ms.get_node(&req.id).cloned();
            let is_voter = ms.voter_ids().any(|id| id == req.id);
            let is_learner = ms.learner_ids().any(|id| id == req.id);
            let clash = ms
                .nodes()
                .find(|(id, n)| **id != req.id && n.name == req.name)
                .map(|(id, _)| *id);
            let addr_clash = ms
                .nodes()
                .find(|(id, n)| **id != req.id && n.raft_addr == req.raft_addr)
                .map(|(id, n)| (*id, n.name.clone()));
            (is_voter, is_learner, clash, addr_clash, recorded)
        };
        if let Some(other) = clash {
            return LeaderReply::Invalid(format!(
                "a member named {:?} already exists with id {other}; if that server was rebuilt, remove the old member first (`pier server remove {}`)",
                req.name, req.name
            ));
        }
        if let Some((other, other_name)) = addr_clash {
            return LeaderReply::Invalid(format!(
                "raft address {} already belongs to member {other_name:?} (id {other}); if that server was rebuilt under a new name, remove the old member first (`pier server remove {other_name}`)",
                req.raft_addr
            ));
        }
        let node = NodeInfo {
            name: req.name.clone(),
            raft_addr: req.raft_addr.clone(),
            http_addr: req.http_addr.clone(),
        };
        if is_voter {
            if recorded.as_ref() == Some(&node) {
                return LeaderReply::Ok(());
            }
            // Same server (same id), new addresses: replace its node info.
            tracing::info!(id = req.id, node = %node, "updating member addresses");
            return match self
                .change_membership_when_free(
                    ChangeMembers::SetNodes(BTreeMap::from([(req.id, node)])),
                    true,
                )
                .await
            {
                Ok(_) => LeaderReply::Ok(()),
                Err(e) => membership_err(e, self),
            };
        }
        if !is_learner {
            tracing::info!(id = req.id, name = %req.name, "adding learner");
            if let Err(e) = self.raft.add_learner(req.id, node, true).await {
                return membership_err(e, self);
            }
        }
        tracing::info!(id = req.id, name = %req.name, "promoting to voter");
        match self
            .change_membership_when_free(
                ChangeMembers::AddVoterIds(BTreeSet::from([req.id])),
                false,
            )
            .await
        {
            Ok(_) => LeaderReply::Ok(()),
            Err(e) => membership_err(e, self),
        }
    }

    /// `change_membership`, waiting (bounded) while an earlier change is still in its second
    /// step: a server that shows as voter may still be mid-change for a few heartbeats, and an
    /// operator acting on what `pier server members` shows must not get an error for that.
    async fn change_membership_when_free(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
        retain: bool,
    ) -> Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> {
        let deadline = Instant::now() + MEMBERSHIP_BUSY_WAIT;
        loop {
            match self.raft.change_membership(change.clone(), retain).await {
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    pub async fn leader_remove(&self, name: &str, force: bool) -> LeaderReply<()> {
        if !self.is_leader() {
            return self.not_leader();
        }
        let (id, is_voter, voters, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let ms = m.membership_config.membership();
            let id = ms.nodes().find(|(_, n)| n.name == name).map(|(id, _)| *id);
            let voters: BTreeSet<NodeId> = ms.voter_ids().collect();
            let is_voter = id.is_some_and(|id| voters.contains(&id));
            (id, is_voter, voters, m.current_term)
        };
        let Some(id) = id else {
            return LeaderReply::Invalid(format!("no member named {name:?}"));
        };
        if is_voter && !force {
            if let Err(why) = self.removal_keeps_quorum(id, &voters, term) {
                return LeaderReply::Invalid(why);
            }
        }
        let ids = BTreeSet::from([id]);
        if is_voter {
            if let Err(e) = self
                .change_membership_when_free(ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
            {
                return membership_err(e, self);
            }
        }
        // Drop it as a learner too, so the leader stops replicating to it.
        tracing::info!(id, name, "removing member");
        match self
            .change_membership_when_free(ChangeMembers::RemoveNodes(ids), false)
            .await
        {
            Ok(_) => LeaderReply::Ok(()),
            Err(e) => membership_err(e, self),
        }
    }

    /// Whether the voters left after removing `id` include a quorum that answers this leader
    /// now. Removing the leader itself is refused: stop it first and remove it from the next.
    fn removal_keeps_quorum(
        &self,
        id: NodeId,
        voters: &BTreeSet<NodeId>,
        term: u64,
    ) -> Result<(), String> {
        if id == self.node_id {
            return Err(
                "this server is the leader; stop it (or let leadership move) and remove it from another server, or pass --force".into(),
            );
        }
        let left: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        let answering = self
            .acks
            .recent(term, self.timing.silence_limit(), Instant::now());
        let live = left
            .iter()
            .filter(|v| **v == self.node_id || answering.contains(v))
            .count();
        let quorum = left.len() / 2 + 1;
        if live < quorum {
            return Err(format!(
                "removing it would leave {} voters of which only {live} answer the leader now, below the quorum of {quorum}: writes would stop; bring the others back first, or pass --force",
                left.len()
            ));
        }
        Ok(())
    }

    /// Runs `local` on the leader, or sends `body` to the leader's `path`; retries leader changes.
    async fn leader_call<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
        local: LeaderOp,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + LEADER_RETRY_FOR;
        let mut last_problem = String::from("no leader known");
        loop {
            self.check_running()?;
            let reply = match self.usable_leader() {
                LeaderIs::Me => Some(match &local {
                    LeaderOp::Join(m) => self.leader_join(m.clone()).await,
                    LeaderOp::Remove(name, force) => self.leader_remove(name, *force).await,
                }),
                LeaderIs::Other(l) => match self
                    .call_leader::<_, LeaderReply<()>>(&l, path, body, timeout)
                    .await
                {
                    Ok(r) => Some(r),
                    Err(ForwardError::LeaderLost) => {
                        last_problem = format!("leader {} was lost", l.name);
                        None
                    }
                    Err(ForwardError::Call(e)) => {
                        last_problem = e.to_string();
                        None
                    }
                },
                LeaderIs::Unknown => None,
            };
            match reply {
                Some(LeaderReply::Ok(())) => return Ok(()),
                Some(LeaderReply::Invalid(m)) => return Err(StoreError::InvalidInput(m)),
                Some(LeaderReply::Error(m)) => return Err(StoreError::Raft(m)),
                Some(LeaderReply::NotLeader { .. }) => last_problem = "leadership moved".into(),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoLeader(last_problem));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

fn not_leader_error() -> StoreError {
    StoreError::NoLeader("this server is not the raft leader".into())
}

fn membership_err(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    inner: &Inner,
) -> LeaderReply<()> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => inner.not_leader(),
        other => LeaderReply::Error(other.to_string()),
    }
}

enum LeaderOp {
    Join(MemberWire),
    Remove(String, bool),
}

enum LocalWriteError {
    NotLeader,
    Fail(StoreError),
}

/// Why a call to the leader got no reply.
enum ForwardError {
    Call(CallError),
    /// The leader was replaced or went silent while the call was in flight.
    LeaderLost,
}
