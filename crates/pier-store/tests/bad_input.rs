//! Writes with bad keys, values or table names are refused whole, with a clear message.

mod common;

use std::time::Duration;

use common::*;
use pier_store::{Consistency, Op, StoreError, Table, Txn, MAX_KEY_BYTES, MAX_VALUE_BYTES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_written() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(config("solo", tmp.path(), loopback0(), 1, vec![])).await;
    let store = node.store();
    store.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    let idx0 = put(store, "ok", "1").await;

    let good = || Op::put(Table::KV, "good", b"v".to_vec());
    let cases: Vec<(Txn, &str)> = vec![
        (
            Txn::single(Op::put(Table::KV, "big", vec![0u8; MAX_VALUE_BYTES + 1])),
            "limit is",
        ),
        (
            Txn::single(Op::put(Table::KV, "", b"v".to_vec())),
            "empty key",
        ),
        (
            Txn::single(Op::put(Table::KV, "a/../b", b"v".to_vec())),
            "'..'",
        ),
        (Txn::single(Op::put(Table::KV, "..", b"v".to_vec())), "'..'"),
        (
            Txn::single(Op::put(Table::KV, "a\0b", b"v".to_vec())),
            "NUL",
        ),
        (
            Txn::single(Op::put(
                Table::KV,
                "k".repeat(MAX_KEY_BYTES + 1),
                b"v".to_vec(),
            )),
            "limit is",
        ),
        (
            Txn::single(Op::put(Table::from_static("Bad Table"), "k", b"v".to_vec())),
            "table name",
        ),
        (Txn::single(Op::delete(Table::KV, "x/../y")), "'..'"),
        (Txn::new(), "no operations"),
        // One bad op spoils the whole transaction.
        (
            Txn::new()
                .with(good())
                .with(Op::put(Table::KV, "", b"v".to_vec())),
            "empty key",
        ),
    ];
    for (txn, needle) in cases {
        match store.write(txn.clone()).await {
            Err(StoreError::InvalidInput(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("{txn:?}: expected InvalidInput, got {other:?}"),
        }
    }
    // Limits themselves are fine.
    store
        .write(Txn::single(Op::put(
            Table::KV,
            "k".repeat(MAX_KEY_BYTES),
            vec![7u8; MAX_VALUE_BYTES],
        )))
        .await
        .unwrap();
    store
        .write(Txn::single(Op::put(Table::KV, "a..b/c..", b"v".to_vec())))
        .await
        .unwrap();
    assert!(Table::new("Bad Table").is_err());

    let (good_present, idx_after, applied) = store
        .read(Consistency::Consistent, |v| {
            (
                v.get(Table::KV, "good").is_some(),
                v.table_index(Table::KV),
                v.applied_index(),
            )
        })
        .await
        .unwrap();
    assert!(!good_present, "a rejected transaction wrote something");
    // Only the two valid writes above reached the log.
    assert_eq!(idx_after, idx0 + 2);
    assert_eq!(applied, idx0 + 2);
}

#[tokio::test]
async fn bad_configuration_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let wildcard = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let cfg = config("solo", tmp.path(), wildcard, 1, vec![]);
    match pier_store::Store::open(cfg).await {
        Err(StoreError::InvalidInput(m)) => assert!(m.contains("raft_advertise"), "{m}"),
        Err(e) => panic!("expected InvalidInput, got {e:?}"),
        Ok(_) => panic!("opened with an undialable address"),
    }
    let mut cfg = config("solo", tmp.path(), loopback0(), 1, vec![]);
    cfg.election_timeout_min_ms = 50;
    match pier_store::Store::open(cfg).await {
        Err(StoreError::InvalidInput(m)) => assert!(m.contains("timing"), "{m}"),
        Err(e) => panic!("expected InvalidInput, got {e:?}"),
        Ok(_) => panic!("opened with an election timeout below the heartbeat"),
    }
    // Nothing was created.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
