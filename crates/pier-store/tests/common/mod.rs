//! Test helpers: stores on real loopback TCP, each server in its own runtime so a test can kill
//! one abruptly (drop its runtime without any graceful shutdown).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pier_store::{Consistency, Op, Store, StoreConfig, Table, Txn};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn config(
    name: &str,
    dir: &Path,
    listen: SocketAddr,
    expect: usize,
    join: Vec<String>,
) -> StoreConfig {
    StoreConfig {
        node_name: name.to_string(),
        data_dir: dir.to_path_buf(),
        raft_listen: listen,
        raft_advertise: None,
        http_advertise: format!("{name}.http:8500"),
        bootstrap_expect: expect,
        join,
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        snapshot_every_logs: 10_000,
        tls: None,
        extra_routes: None,
    }
}

pub fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One server with its own runtime.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub cfg: StoreConfig,
    rt: Option<tokio::runtime::Runtime>,
    store: Option<Store>,
}

impl Node {
    pub async fn start(mut cfg: StoreConfig) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = rt.spawn(Store::open(cfg.clone())).await.unwrap().unwrap();
        // Restarts must come back on the same address: membership records it.
        cfg.raft_listen = store.raft_addr();
        Node {
            name: cfg.node_name.clone(),
            dir: cfg.data_dir.clone(),
            cfg,
            rt: Some(rt),
            store: Some(store),
        }
    }

    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("node is down")
    }

    pub fn is_up(&self) -> bool {
        self.store.is_some()
    }

    pub fn addr(&self) -> String {
        self.cfg.raft_listen.to_string()
    }

    /// Abrupt stop: every task of this server is dropped mid-flight, nothing is flushed.
    pub fn kill(&mut self) {
        self.store = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub async fn restart(&mut self) {
        assert!(self.store.is_none());
        // Blocking threads of the killed runtime may still hold the database briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            match rt.spawn(Store::open(self.cfg.clone())).await.unwrap() {
                Ok(store) => {
                    self.rt = Some(rt);
                    self.store = Some(store);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart of {} not yet possible: {e}", self.name);
                    rt.shutdown_background();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restart of {} failed: {e}", self.name),
            }
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(s) = self.store.take() {
            s.shutdown().await.unwrap();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` servers that form one cluster (each joins the first; discovery does the rest).
pub async fn start_cluster(n: usize, base: &Path, tweak: impl Fn(&mut StoreConfig)) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let name = format!("s{i}");
        let dir = base.join(&name);
        let join = nodes.first().map(|f| vec![f.addr()]).unwrap_or_default();
        let mut cfg = config(&name, &dir, loopback0(), n, join);
        tweak(&mut cfg);
        nodes.push(Node::start(cfg).await);
    }
    wait_cluster_ready(&nodes, n, Duration::from_secs(20)).await;
    nodes
}

/// Waits until every running node sees the same leader and `members` voters.
pub async fn wait_cluster_ready(nodes: &[Node], members: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses: Vec<_> = nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.store().status())
            .collect();
        let leader = statuses[0].leader.as_ref().map(|l| l.id);
        if leader.is_some()
            && statuses.iter().all(|s| {
                s.leader.as_ref().map(|l| l.id) == leader
                    && s.members.iter().filter(|m| m.voter).count() == members
            })
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster not ready: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn leader_index(nodes: &[Node]) -> Option<usize> {
    nodes
        .iter()
        .position(|n| n.is_up() && n.store().status().is_leader)
}

pub async fn wait_leader_index(nodes: &[Node], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = leader_index(nodes) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn put(store: &Store, key: &str, value: &str) -> u64 {
    let r = store
        .write(Txn::single(Op::put(
            Table::KV,
            key,
            value.as_bytes().to_vec(),
        )))
        .await
        .unwrap();
    assert!(r.applied);
    r.index
}

pub async fn get(store: &Store, c: Consistency, key: &str) -> Option<String> {
    store
        .read(c, |v| {
            v.get(Table::KV, key)
                .map(|e| String::from_utf8(e.value.clone()).unwrap())
        })
        .await
        .unwrap()
}

/// Polls a stale read until `key` has `value` on `store`.
pub async fn wait_value(store: &Store, key: &str, value: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if get(store, Consistency::Stale, key).await.as_deref() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became {value} (status {:?})",
            store.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
