//! Watches and result indexes: precise wake-ups, no wake-ups for unrelated writes, indexes that
//! never go backwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pier_store::{Consistency, Op, Store, Table, Txn, WatchKey};

async fn single() -> (tempfile::TempDir, Node) {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(config("solo", tmp.path(), loopback0(), 1, vec![])).await;
    node.store()
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    (tmp, node)
}

async fn index_of(store: &Store, keys: &[WatchKey]) -> u64 {
    store
        .read(Consistency::Stale, |v| v.index_of(keys))
        .await
        .unwrap()
}

/// Spawns a blocking-query style waiter; returns when it woke (or None on timeout).
fn waiter(
    store: &Store,
    keys: Vec<WatchKey>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Option<Instant>> {
    let mut w = store.watch(&keys);
    tokio::spawn(async move {
        if w.changed(timeout).await {
            Some(Instant::now())
        } else {
            None
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_watch_wakes_promptly_and_only_for_its_key() {
    let (_tmp, node) = single().await;
    let s = node.store();
    put(s, "a", "0").await;
    put(s, "b", "0").await;
    s.write(Txn::single(Op::put(Table::NODES, "a", b"n".to_vec())))
        .await
        .unwrap();

    let key_a = vec![WatchKey::key(Table::KV, "a")];
    let idx_a = index_of(s, &key_a).await;

    // Unrelated writes: same table other key, other table same key.
    let w = waiter(s, key_a.clone(), Duration::from_millis(400));
    put(s, "b", "1").await;
    put(s, "ab", "1").await;
    s.write(Txn::single(Op::put(Table::NODES, "a", b"n2".to_vec())))
        .await
        .unwrap();
    s.write(Txn::single(Op::delete(Table::KV, "b")))
        .await
        .unwrap();
    assert_eq!(w.await.unwrap(), None, "woke for an unrelated write");
    assert_eq!(
        index_of(s, &key_a).await,
        idx_a,
        "unrelated writes changed the index"
    );

    // The key itself: prompt.
    let w = waiter(s, key_a.clone(), Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    let idx = put(s, "a", "1").await;
    let woke = w.await.unwrap().expect("not woken");
    let latency = woke.saturating_duration_since(t0);
    assert!(
        latency < Duration::from_millis(100),
        "wake took {latency:?}"
    );
    assert_eq!(index_of(s, &key_a).await, idx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_read_misses_nothing() {
    let (_tmp, node) = single().await;
    let s = node.store();
    let keys = vec![WatchKey::key(Table::KV, "x")];
    // Subscribe, read, then a write happens before we wait: changed() must return at once.
    let mut w = s.watch(&keys);
    let seen = index_of(s, &keys).await;
    let idx = put(s, "x", "1").await;
    let t0 = Instant::now();
    assert!(w.changed(Duration::from_secs(5)).await);
    assert!(t0.elapsed() < Duration::from_millis(50));
    assert!(index_of(s, &keys).await == idx && idx > seen);
    // Consumed: the next wait times out.
    assert!(!w.changed(Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_watch_and_index_rules() {
    let (_tmp, node) = single().await;
    let s = node.store();
    let web = vec![WatchKey::prefix(Table::SERVICES, "web/")];
    let svc = |k: &str| Txn::single(Op::put(Table::SERVICES, k, b"{}".to_vec()));
    s.write(svc("web/1")).await.unwrap();
    let i2 = s.write(svc("web/2")).await.unwrap().index;
    s.write(svc("api/1")).await.unwrap();
    assert_eq!(index_of(s, &web).await, i2);

    // Not under the prefix: no wake, index unchanged.
    let w = waiter(s, web.clone(), Duration::from_millis(300));
    s.write(svc("webx/1")).await.unwrap();
    s.write(svc("api/2")).await.unwrap();
    s.write(svc("we")).await.unwrap();
    s.write(Txn::single(Op::put(Table::KV, "web/1", b"v".to_vec())))
        .await
        .unwrap();
    assert_eq!(w.await.unwrap(), None);
    assert_eq!(index_of(s, &web).await, i2);

    // Under the prefix: wake.
    let w = waiter(s, web.clone(), Duration::from_secs(5));
    let t0 = Instant::now();
    let i3 = s.write(svc("web/3")).await.unwrap().index;
    let woke = w.await.unwrap().expect("prefix watcher not woken");
    assert!(woke.saturating_duration_since(t0) < Duration::from_millis(100));
    assert_eq!(index_of(s, &web).await, i3);

    // Delete the newest entry: the index goes up (tombstone), never back to i2.
    let w = waiter(s, web.clone(), Duration::from_secs(5));
    let d = s
        .write(Txn::single(Op::delete(Table::SERVICES, "web/3")))
        .await
        .unwrap()
        .index;
    assert!(w.await.unwrap().is_some());
    assert_eq!(index_of(s, &web).await, d);
    // Delete everything under the prefix: still not backwards.
    let d2 = s
        .write(Txn::single(Op::delete_prefix(Table::SERVICES, "web/")))
        .await
        .unwrap()
        .index;
    assert_eq!(index_of(s, &web).await, d2);
    let key_idx = index_of(s, &[WatchKey::key(Table::SERVICES, "web/1")]).await;
    assert_eq!(key_idx, d2);
    // Reaping the tombstones keeps the index from going backwards (reaped mark covers them).
    s.reap_tombstones(d2).await.unwrap();
    assert!(index_of(s, &web).await >= d2);
    assert!(index_of(s, &[WatchKey::key(Table::SERVICES, "web/3")]).await >= d);
    // A never-written key in a fresh table has index 1, never 0.
    assert_eq!(
        index_of(s, &[WatchKey::key(Table::from_static("fresh"), "nope")]).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_of_one_prefix_all_wake() {
    let (_tmp, node) = single().await;
    let s = node.store();
    let keys = vec![WatchKey::prefix(Table::SERVICES, "web/")];
    let waiters: Vec<_> = (0..2000)
        .map(|_| waiter(s, keys.clone(), Duration::from_secs(10)))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write(Txn::single(Op::put(
        Table::SERVICES,
        "web/9",
        b"{}".to_vec(),
    )))
    .await
    .unwrap();
    for w in waiters {
        assert!(w.await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_and_check_guards() {
    let (_tmp, node) = single().await;
    let s = node.store();
    let r = s
        .write(Txn::single(Op::put_cas(Table::KV, "c", b"1".to_vec(), 0)))
        .await
        .unwrap();
    assert!(r.applied);
    let again = s
        .write(Txn::single(Op::put_cas(Table::KV, "c", b"2".to_vec(), 0)))
        .await
        .unwrap();
    assert!(!again.applied);
    assert_eq!(again.failed_op, Some(0));
    let ok = s
        .write(Txn::single(Op::put_cas(
            Table::KV,
            "c",
            b"3".to_vec(),
            r.index,
        )))
        .await
        .unwrap();
    assert!(ok.applied);
    // A failed guard anywhere applies nothing.
    let t = Txn::new()
        .with(Op::put(Table::KV, "d", b"x".to_vec()))
        .with(Op::check(Table::KV, "c", r.index));
    let res = s.write(t).await.unwrap();
    assert_eq!((res.applied, res.failed_op), (false, Some(1)));
    let (c, d, created) = s
        .read(Consistency::Consistent, |v| {
            let c = v.get(Table::KV, "c").unwrap();
            (
                c.value.clone(),
                v.get(Table::KV, "d").is_some(),
                c.create_index,
            )
        })
        .await
        .unwrap();
    assert_eq!(c, b"3");
    assert!(!d);
    assert_eq!(created, r.index);
}
