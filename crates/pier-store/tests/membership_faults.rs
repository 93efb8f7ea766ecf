//! Failover with a long log, member identity on every peer call, and membership repair, on
//! real stores over loopback TCP (the network-partition cases run as real processes in
//! network namespaces: `crates/pier/tests/faults.rs`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use pier_store::{Consistency, StoreError};

/// Writes `n` entries one after another (each its own log entry) through `node`.
async fn fill_log(nodes: &[Node], prefix: &str, n: usize) {
    let started = Instant::now();
    for i in 0..n {
        if i % 500 == 0 {
            eprintln!("fill_log: {i} entries after {:?}", started.elapsed());
        }
        let leader = wait_leader_index(nodes, Duration::from_secs(5)).await;
        put(nodes[leader].store(), &format!("{prefix}/{i}"), "v").await;
    }
}

/// Time until a write through any live node is acknowledged, retrying every 20 ms.
async fn time_to_next_write(nodes: &[Node], key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        for n in nodes.iter().filter(|n| n.is_up()) {
            let w = n.store().write(pier_store::Txn::single(pier_store::Op::put(
                pier_store::Table::KV,
                key,
                b"x".to_vec(),
            )));
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), w).await {
                if r.applied {
                    return started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < limit,
            "no write acknowledged within {limit:?} of the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_converged(nodes: &[Node], key: &str, value: &str, timeout: Duration) {
    for n in nodes.iter().filter(|n| n.is_up()) {
        wait_value(n.store(), key, value, timeout).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_full_restart_with_a_long_log() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    // Snapshots far away: the whole log stays, and a new leader must read deep into it.
    let mut nodes = start_cluster(3, tmp.path(), |c| c.snapshot_every_logs = 100_000).await;
    fill_log(&nodes, "long", 3_000).await;

    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    nodes[leader].kill();
    let took = time_to_next_write(&nodes, "after-kill", Duration::from_secs(3)).await;
    eprintln!("leader killed at 3,000 entries: next write acknowledged after {took:?}");
    nodes[leader].restart().await;
    wait_cluster_ready(&nodes, 3, Duration::from_secs(10)).await;
    wait_converged(&nodes, "long/2999", "v", Duration::from_secs(5)).await;
    wait_converged(&nodes, "after-kill", "x", Duration::from_secs(5)).await;

    // Every server restarts at once: caches are empty, every read comes from disk.
    for n in nodes.iter_mut() {
        n.kill();
    }
    for n in nodes.iter_mut() {
        n.restart().await;
    }
    let took = time_to_next_write(&nodes, "after-restart", Duration::from_secs(10)).await;
    eprintln!("full restart at 3,000 entries: next write acknowledged after {took:?}");
    wait_cluster_ready(&nodes, 3, Duration::from_secs(10)).await;
    wait_converged(&nodes, "after-restart", "x", Duration::from_secs(5)).await;
    // And once more a leader change on the restarted cluster.
    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    nodes[leader].kill();
    time_to_next_write(&nodes, "after-second-kill", Duration::from_secs(3)).await;
    for n in &mut nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_for_another_node_id_are_refused() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |_| {}).await;
    let target = &nodes[1];
    let http = reqwest::Client::new();
    let term_before = target.store().status().term;
    // A forged vote for a huge term, meant for another id: refused before it reaches Raft.
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": term_before + 100, "node_id": 1}, "committed": false},
        "last_log_id": null
    });
    let url = format!("http://{}/raft/vote", target.addr());
    let wrong = http
        .post(&url)
        .header("x-pier-target-node", "424242")
        .json(&vote)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::MISDIRECTED_REQUEST);
    let unnamed = http.post(&url).json(&vote).send().await.unwrap();
    assert_eq!(unnamed.status(), reqwest::StatusCode::BAD_REQUEST);
    let append = http
        .post(format!("http://{}/raft/append", target.addr()))
        .header("x-pier-target-node", "424242")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(append.status(), reqwest::StatusCode::MISDIRECTED_REQUEST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        target.store().status().term,
        term_before,
        "a refused call changed the term"
    );
    // Discovery still answers without a target.
    let info = http
        .get(format!("http://{}/raft/info", target.addr()))
        .send()
        .await
        .unwrap();
    assert!(info.status().is_success());
    for n in &mut nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_keeps_a_quorum_and_a_removed_server_rejoins() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |_| {}).await;
    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (down, live) = (others[0], others[1]);
    nodes[down].kill();
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Removing the live follower would leave {leader, dead one}: no quorum answers.
    let refused = nodes[leader]
        .store()
        .remove_member(&nodes[live].name, false)
        .await;
    match refused {
        Err(StoreError::InvalidInput(m)) => assert!(m.contains("quorum"), "{m}"),
        other => panic!("removal below a quorum was not refused: {other:?}"),
    }
    // Removing the leader itself is refused too.
    assert!(matches!(
        nodes[live]
            .store()
            .remove_member(&nodes[leader].name, false)
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    // The dead one can go.
    nodes[leader]
        .store()
        .remove_member(&nodes[down].name, false)
        .await
        .unwrap();
    put(nodes[live].store(), "after-removal", "1").await;

    // The removed server comes back (same data, same id): it asks to join again by itself.
    nodes[down].restart().await;
    wait_cluster_ready(&nodes, 3, Duration::from_secs(20)).await;
    wait_value(
        nodes[down].store(),
        "after-removal",
        "1",
        Duration::from_secs(5),
    )
    .await;
    for n in &mut nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_is_not_counted_and_rejoins_after_removal() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |_| {}).await;
    put(nodes[0].store(), "before", "1").await;
    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    let wiped = (0..3).find(|i| *i != leader).unwrap();
    let third = (0..3).find(|i| *i != leader && *i != wiped).unwrap();
    let old_id = nodes[wiped].store().node_id();
    nodes[wiped].kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_dir_all(&nodes[wiped].dir).unwrap();
    // Same name, same address, empty disk: a new identity that the cluster refuses by name.
    nodes[wiped].restart().await;
    let new_id = nodes[wiped].store().node_id();
    assert_ne!(old_id, new_id);

    // The leader still lists the old id; the new process refuses calls meant for it, so with
    // the third server down the leader has no quorum and cannot commit.
    nodes[third].kill();
    let w = tokio::time::timeout(Duration::from_secs(3), async {
        nodes[leader]
            .store()
            .write(pier_store::Txn::single(pier_store::Op::put(
                pier_store::Table::KV,
                "needs-quorum",
                b"1".to_vec(),
            )))
            .await
    })
    .await;
    assert!(
        !matches!(w, Ok(Ok(ref r)) if r.applied),
        "a write was acknowledged with the wiped server counted as the old member: {w:?}"
    );
    nodes[third].restart().await;
    wait_leader_index(&nodes, Duration::from_secs(10)).await;

    // Once the old member is removed, the rebuilt server's own join attempts succeed.
    let asker = third;
    let name = nodes[wiped].name.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nodes[asker].store().remove_member(&name, false).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "removing the old member: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    wait_cluster_ready(&nodes, 3, Duration::from_secs(20)).await;
    let members = nodes[asker].store().status().members;
    assert!(members.iter().any(|m| m.id == new_id && m.voter));
    assert!(!members.iter().any(|m| m.id == old_id));
    wait_value(nodes[wiped].store(), "before", "1", Duration::from_secs(5)).await;
    assert_eq!(
        get(nodes[wiped].store(), Consistency::Consistent, "before")
            .await
            .as_deref(),
        Some("1")
    );
    for n in &mut nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_barrier_and_term_guard_fence_a_deposed_leader() {
    use pier_store::{Op, Table, Txn};
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |_| {}).await;
    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let term = nodes[leader].store().leader_barrier().await.unwrap();
    assert!(matches!(
        nodes[follower].store().leader_barrier().await,
        Err(StoreError::NoLeader(_))
    ));
    let guarded = |term: u64, key: &str| Txn {
        ops: vec![
            Op::leader_term(term),
            Op::put(Table::KV, key, b"1".to_vec()),
        ],
    };
    let ok = nodes[leader]
        .store()
        .write(guarded(term, "fenced/ok"))
        .await
        .unwrap();
    assert!(ok.applied);
    let stale = nodes[leader]
        .store()
        .write(guarded(term - 1, "fenced/stale"))
        .await
        .unwrap();
    assert!(!stale.applied && stale.failed_op == Some(0));

    // A new leader has a new term: writes guarded with the old one fail everywhere.
    nodes[leader].kill();
    let new_leader = loop {
        if let Some(i) = leader_index(&nodes) {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let new_term = nodes[new_leader].store().leader_barrier().await.unwrap();
    assert!(new_term > term);
    // Everything the old leader committed is applied once the barrier returns.
    assert_eq!(
        get(nodes[new_leader].store(), Consistency::Stale, "fenced/ok")
            .await
            .as_deref(),
        Some("1")
    );
    let other = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
    let fenced = nodes[other]
        .store()
        .write(guarded(term, "fenced/after"))
        .await
        .unwrap();
    assert!(
        !fenced.applied,
        "a write guarded by a deposed leader's term applied"
    );
    assert_eq!(
        get(
            nodes[other].store(),
            Consistency::Consistent,
            "fenced/after"
        )
        .await,
        None
    );
    for n in &mut nodes {
        n.shutdown().await;
    }
}
