//! Restart from the data directory, abrupt stops, snapshots on one node, corrupt data.

mod common;

use std::time::Duration;

use common::*;
use pier_store::{Consistency, Entry, Op, Store, StoreError, Table, Txn, WatchKey};

type Dump = Vec<(String, String, Entry)>;

async fn dump(store: &Store) -> (Dump, u64, u64) {
    store
        .read(Consistency::Stale, |v| {
            let mut out = Vec::new();
            for t in [Table::KV, Table::SERVICES] {
                for (k, e) in v.range_prefix(&t, "") {
                    out.push((t.to_string(), k.to_string(), e.clone()));
                }
            }
            let idx = v.index_of(&[WatchKey::prefix(Table::KV, "")]);
            (out, idx, v.table_index(Table::KV))
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_indexes_survive_graceful_restart() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("solo", tmp.path(), loopback0(), 1, vec![]);
    let mut node = Node::start(cfg).await;
    node.store()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..50 {
        put(node.store(), &format!("k/{i:02}"), &format!("v{i}")).await;
    }
    node.store()
        .write(Txn::single(Op::put(
            Table::SERVICES,
            "web/1",
            b"{}".to_vec(),
        )))
        .await
        .unwrap();
    // A delete leaves a tombstone: the prefix index must not go backwards across the restart.
    node.store()
        .write(Txn::single(Op::delete(Table::KV, "k/49")))
        .await
        .unwrap();
    let before = dump(node.store()).await;
    let applied = node.store().status().last_applied_index;
    node.shutdown().await;

    node.restart().await;
    node.store()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    let after = dump(node.store()).await;
    assert_eq!(before, after);
    assert!(node.store().status().last_applied_index >= applied);
    // And it still takes writes with higher indexes.
    let idx = put(node.store(), "k/new", "x").await;
    assert!(idx > applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_abrupt_stop_and_snapshots() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config("solo", tmp.path(), loopback0(), 1, vec![]);
    cfg.snapshot_every_logs = 40;
    let mut node = Node::start(cfg).await;
    node.store()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..300 {
        put(node.store(), &format!("k/{i:03}"), &format!("v{i}")).await;
    }
    let before = dump(node.store()).await;
    let st = node.store().status();
    assert!(st.snapshot_index > 0, "expected a snapshot: {st:?}");
    node.kill();

    node.restart().await;
    node.store()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    let after = dump(node.store()).await;
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1);
    assert!(tmp.path().join("snapshot.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_is_reported_with_its_path() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut node = Node::start(config("solo", tmp.path(), loopback0(), 1, vec![])).await;
        node.store()
            .wait_for_leader(Duration::from_secs(5))
            .await
            .unwrap();
        put(node.store(), "a", "1").await;
        node.shutdown().await;
    }
    let state = tmp.path().join("state.redb");
    std::fs::write(
        &state,
        b"this is not a redb file at all, just garbage bytes ....",
    )
    .unwrap();
    let err = match Store::open(config("solo", tmp.path(), loopback0(), 1, vec![])).await {
        Ok(_) => panic!("opened a corrupt store"),
        Err(e) => e,
    };
    match &err {
        StoreError::CorruptData { path, .. } => assert_eq!(path, &state),
        other => panic!("expected CorruptData, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&state.display().to_string()), "{msg}");
    assert!(msg.contains("move the directory away"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_directory_and_bad_identity_are_refused() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    match Store::open(config("solo", tmp.path(), loopback0(), 1, vec![])).await {
        Err(StoreError::CorruptData { path, detail }) => {
            assert_eq!(path, tmp.path());
            assert!(
                detail.contains("not a pier-store data directory"),
                "{detail}"
            );
        }
        Err(e) => panic!("expected CorruptData, got {e:?}"),
        Ok(_) => panic!("opened a foreign directory"),
    }

    let tmp2 = tempfile::tempdir().unwrap();
    std::fs::write(tmp2.path().join("node.json"), b"{garbage").unwrap();
    match Store::open(config("solo", tmp2.path(), loopback0(), 1, vec![])).await {
        Err(StoreError::CorruptData { path, .. }) => {
            assert_eq!(path, tmp2.path().join("node.json"))
        }
        Err(e) => panic!("expected CorruptData, got {e:?}"),
        Ok(_) => panic!("opened with a broken identity"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_new_addresses_updates_membership() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("solo", tmp.path(), loopback0(), 1, vec![]);
    let store = Store::open(cfg.clone()).await.unwrap();
    store.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    put(&store, "a", "1").await;
    let first_addr = store.raft_addr();
    store.shutdown().await.unwrap();
    drop(store);

    // Port 0 again: a new raft port; and a new HTTP address.
    let mut cfg2 = cfg;
    cfg2.http_advertise = "127.0.0.1:18500".into();
    let store = Store::open(cfg2).await.unwrap();
    store.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    let new_addr = store.raft_addr().to_string();
    assert_ne!(new_addr, first_addr.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = store.status();
        let me = st
            .members
            .iter()
            .find(|m| m.id == st.node_id)
            .unwrap()
            .clone();
        if me.raft_addr == new_addr && me.http_addr == "127.0.0.1:18500" {
            assert_eq!(st.leader.unwrap().http_addr, "127.0.0.1:18500");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "membership not updated: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&store, Consistency::Consistent, "a").await.as_deref(),
        Some("1")
    );
    store.shutdown().await.unwrap();
}
