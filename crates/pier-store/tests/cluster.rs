//! Three servers on loopback: forwarding, consistent reads everywhere, abrupt leader loss,
//! catch-up after restart, including catch-up by snapshot after the others purged their logs.

mod common;

use std::time::Duration;

use common::*;
use pier_store::{Consistency, Op, StoreError, Table, Txn, WatchKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_fail_over_and_catch_up() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |c| c.snapshot_every_logs = 50).await;
    let leader = wait_leader_index(&nodes, Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;

    // Status names the leader's HTTP address everywhere.
    for n in &nodes {
        let st = n.store().status();
        let l = st.leader.expect("leader known");
        assert_eq!(l.http_addr, format!("{}.http:8500", nodes[leader].name));
        assert_eq!(st.members.len(), 3);
        assert!(st.last_contact_ms.is_some());
        // The cheap leadership view that blocking-query answers report agrees with it.
        let lc = n.store().leader_contact();
        assert!(lc.known_leader);
        assert_eq!(lc.is_leader, st.is_leader);
        assert!(lc.last_contact_ms.is_some());
    }

    // Writes through a follower are forwarded; visible on the leader and, consistently, everywhere.
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("f/{i}"), format!("v{i}"));
        put(nodes[follower].store(), &k, &v).await;
        acked.push((k, v));
    }
    for (k, v) in &acked {
        assert_eq!(
            get(nodes[leader].store(), Consistency::Stale, k)
                .await
                .as_deref(),
            Some(v.as_str())
        );
    }
    for n in &nodes {
        for (k, v) in &acked {
            assert_eq!(
                get(n.store(), Consistency::Consistent, k).await.as_deref(),
                Some(v.as_str())
            );
            assert_eq!(
                get(n.store(), Consistency::Default, k).await.as_deref(),
                Some(v.as_str())
            );
        }
    }

    // A watcher on a follower wakes for a write made elsewhere.
    let mut w = nodes[follower]
        .store()
        .watch(&[WatchKey::key(Table::KV, "watched")]);
    put(nodes[leader].store(), "watched", "1").await;
    assert!(w.changed(Duration::from_secs(2)).await);

    // Kill the leader abruptly while writes are in flight from the followers.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let writers: Vec<_> = survivors
        .iter()
        .map(|&i| {
            let s = nodes[i].store().clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                for j in 0..60 {
                    let (k, v) = (format!("w{i}/{j}"), format!("x{j}"));
                    match s
                        .write(Txn::single(Op::put(Table::KV, &k, v.clone().into_bytes())))
                        .await
                    {
                        Ok(r) if r.applied => ok.push((k, v)),
                        Ok(r) => panic!("unguarded write not applied: {r:?}"),
                        // Outcome unknown while the leader dies: not acknowledged, not checked.
                        Err(StoreError::Timeout(_))
                        | Err(StoreError::Raft(_))
                        | Err(StoreError::NoLeader(_)) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                ok
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let old_leader_id = nodes[leader].store().status().node_id;
    nodes[leader].kill();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let new_leader = wait_leader_index(&nodes, Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    assert_ne!(nodes[new_leader].store().status().node_id, old_leader_id);
    for i in 0..10 {
        let (k, v) = (format!("after/{i}"), format!("a{i}"));
        put(nodes[survivors[i % 2]].store(), &k, &v).await;
        acked.push((k, v));
    }
    // No acknowledged write is lost.
    for &i in &survivors {
        for (k, v) in &acked {
            assert_eq!(
                get(nodes[i].store(), Consistency::Consistent, k)
                    .await
                    .as_deref(),
                Some(v.as_str()),
                "{k} lost on {}",
                nodes[i].name
            );
        }
    }

    // The old leader comes back from its data directory and catches up.
    nodes[leader].restart().await;
    wait_cluster_ready(&nodes, 3, Duration::from_secs(20)).await;
    for (k, v) in &acked {
        wait_value(nodes[leader].store(), k, v, Duration::from_secs(10)).await;
    }

    // Catch-up by snapshot: a follower is down while the others write, snapshot and purge.
    let cur_leader = wait_leader_index(&nodes, Duration::from_secs(10)).await;
    let down = (cur_leader + 1) % 3;
    // Its whole log must fall behind the purge point, so only a snapshot can bring it back.
    let down_applied = nodes[down].store().status().last_log_index;
    nodes[down].kill();
    let up: Vec<usize> = (0..3).filter(|i| *i != down).collect();
    for i in 0..200 {
        let (k, v) = (format!("s/{i:03}"), format!("y{i}"));
        put(nodes[up[i % 2]].store(), &k, &v).await;
        acked.push((k, v));
    }
    // Deletes must travel in the snapshot too.
    nodes[cur_leader]
        .store()
        .write(Txn::single(Op::delete(Table::KV, "f/0")))
        .await
        .unwrap();
    acked.retain(|(k, _)| k != "f/0");
    for &i in &up {
        nodes[i].store().trigger_snapshot().await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let purged: Vec<u64> = up
            .iter()
            .map(|&i| nodes[i].store().status().purged_index)
            .collect();
        if purged.iter().all(|p| *p > down_applied) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs not purged: {purged:?} vs {down_applied}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[down].restart().await;
    wait_cluster_ready(&nodes, 3, Duration::from_secs(20)).await;
    for (k, v) in &acked {
        wait_value(nodes[down].store(), k, v, Duration::from_secs(15)).await;
    }
    assert_eq!(
        get(nodes[down].store(), Consistency::Stale, "f/0").await,
        None
    );
    // Metrics trail the install a little.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = nodes[down].store().status();
        if st.snapshot_index > down_applied {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected an installed snapshot beyond {down_applied}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in &mut nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_server_joins_and_member_is_removed() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(3, tmp.path(), |_| {}).await;
    for i in 0..5 {
        put(nodes[0].store(), &format!("pre/{i}"), "v").await;
    }
    // A fourth server pointed at any member joins the running cluster.
    let cfg = config(
        "s3",
        &tmp.path().join("s3"),
        loopback0(),
        3,
        vec![nodes[1].addr()],
    );
    nodes.push(Node::start(cfg).await);
    wait_cluster_ready(&nodes, 4, Duration::from_secs(20)).await;
    wait_value(nodes[3].store(), "pre/4", "v", Duration::from_secs(5)).await;
    put(nodes[3].store(), "from-new", "1").await;
    assert_eq!(
        get(nodes[0].store(), Consistency::Consistent, "from-new")
            .await
            .as_deref(),
        Some("1")
    );

    // Remove it again (asked on a follower: forwarded to the leader).
    let leader = wait_leader_index(&nodes, Duration::from_secs(5)).await;
    let asker = (0..3).find(|i| *i != leader).unwrap();
    nodes[asker]
        .store()
        .remove_member("s3", false)
        .await
        .unwrap();
    nodes[3].shutdown().await;
    nodes.pop();
    wait_cluster_ready(&nodes, 3, Duration::from_secs(10)).await;
    put(nodes[asker].store(), "after-remove", "1").await;
    assert!(matches!(
        nodes[asker].store().remove_member("nobody", false).await,
        Err(StoreError::InvalidInput(_))
    ));
    for n in &mut nodes {
        n.shutdown().await;
    }
}
