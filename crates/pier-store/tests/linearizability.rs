//! Random concurrent histories of put/get/cas/delete against 1- and 3-server clusters, checked
//! against a sequential register model per key.
//!
//! Every write (also a failed cas or a no-op delete) goes through the Raft log and reports its
//! log index, which is the order the state machine applied them in. The checker
//! 1. replays each key's writes in index order through the model and checks every cas outcome
//!    and every returned index;
//! 2. checks that index order respects real time (a write that finished before another started
//!    has the smaller index);
//! 3. finds for every read a position in that order where the model's state equals what the
//!    read saw, after every write that finished before the read started and before every write
//!    that started after it ended, and consistent with reads that came before it in real time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pier_store::{Consistency, Op, Store, Table, Txn};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Clone, Debug)]
enum Cmd {
    Get(u8),
    Put(u8),
    /// cas against the last index this client saw for the key (0 if none).
    CasSeen(u8),
    /// cas 0: create only if absent.
    CasAbsent(u8),
    Delete(u8),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let key = 0u8..3;
    prop_oneof![
        3 => key.clone().prop_map(Cmd::Get),
        2 => key.clone().prop_map(Cmd::Put),
        2 => key.clone().prop_map(Cmd::CasSeen),
        1 => key.clone().prop_map(Cmd::CasAbsent),
        1 => key.prop_map(Cmd::Delete),
    ]
}

fn histories() -> impl Strategy<Value = Vec<Vec<Cmd>>> {
    prop::collection::vec(prop::collection::vec(cmd(), 1..8), 2..5)
}

#[derive(Clone, Debug)]
enum Done {
    /// What the read saw: (value, modify_index) or absent.
    Read(Option<(String, u64)>),
    /// Write result: log index, applied, value written (None for delete), cas expected.
    Write {
        index: u64,
        applied: bool,
        value: Option<String>,
        cas: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct Event {
    key: u8,
    start: Instant,
    end: Instant,
    done: Done,
}

async fn run_client(store: Store, ns: String, client: usize, cmds: Vec<Cmd>) -> Vec<Event> {
    let mut seen: BTreeMap<u8, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (n, c) in cmds.into_iter().enumerate() {
        let value = format!("c{client}n{n}");
        let (key, txn, cas, val) = match c {
            Cmd::Get(k) => {
                let name = format!("{ns}/{k}");
                let start = Instant::now();
                let got = store
                    .read(Consistency::Consistent, |v| {
                        v.get(Table::KV, &name)
                            .map(|e| (String::from_utf8(e.value.clone()).unwrap(), e.modify_index))
                    })
                    .await
                    .unwrap();
                let end = Instant::now();
                if let Some((_, idx)) = &got {
                    seen.insert(k, *idx);
                }
                out.push(Event {
                    key: k,
                    start,
                    end,
                    done: Done::Read(got),
                });
                continue;
            }
            Cmd::Put(k) => (
                k,
                Op::put(Table::KV, format!("{ns}/{k}"), value.clone()),
                None,
                Some(value),
            ),
            Cmd::CasSeen(k) => {
                let cas = seen.get(&k).copied().unwrap_or(0);
                (
                    k,
                    Op::put_cas(Table::KV, format!("{ns}/{k}"), value.clone(), cas),
                    Some(cas),
                    Some(value),
                )
            }
            Cmd::CasAbsent(k) => (
                k,
                Op::put_cas(Table::KV, format!("{ns}/{k}"), value.clone(), 0),
                Some(0),
                Some(value),
            ),
            Cmd::Delete(k) => (k, Op::delete(Table::KV, format!("{ns}/{k}")), None, None),
        };
        let start = Instant::now();
        let r = store.write(Txn::single(txn)).await.unwrap();
        let end = Instant::now();
        if r.applied && val.is_some() {
            seen.insert(key, r.index);
        }
        out.push(Event {
            key,
            start,
            end,
            done: Done::Write {
                index: r.index,
                applied: r.applied,
                value: val,
                cas,
            },
        });
    }
    out
}

fn check_key(events: &[Event]) -> Result<(), String> {
    let mut writes: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.done, Done::Write { .. }))
        .collect();
    writes.sort_by_key(|e| match e.done {
        Done::Write { index, .. } => index,
        _ => 0,
    });
    let idx = |e: &Event| match e.done {
        Done::Write { index, .. } => index,
        _ => 0,
    };
    // Real time vs log order.
    for a in &writes {
        for b in &writes {
            if a.end < b.start && idx(a) >= idx(b) {
                return Err(format!(
                    "write {a:?} finished before {b:?} started but has a later index"
                ));
            }
        }
    }
    // Replay: states[j] = state after the first j writes.
    let mut state: Option<(String, u64)> = None;
    let mut states = vec![state.clone()];
    for w in &writes {
        let Done::Write {
            index,
            applied,
            value,
            cas,
        } = &w.done
        else {
            unreachable!()
        };
        let current = state.as_ref().map(|s| s.1).unwrap_or(0);
        let should_apply = cas.is_none_or(|c| c == current);
        if should_apply != *applied {
            return Err(format!(
                "cas outcome {applied} but model says {should_apply} for {w:?} (state {state:?})"
            ));
        }
        if *applied {
            state = value.as_ref().map(|v| (v.clone(), *index));
        }
        states.push(state.clone());
    }
    // Reads, in start order, each at a feasible position no earlier than real-time predecessors.
    let mut reads: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.done, Done::Read(_)))
        .collect();
    reads.sort_by_key(|e| e.start);
    let mut chosen: Vec<(Instant, usize)> = Vec::new();
    for r in reads {
        let Done::Read(seen) = &r.done else {
            unreachable!()
        };
        let lo_writes = writes
            .iter()
            .rposition(|w| w.end < r.start)
            .map(|p| p + 1)
            .unwrap_or(0);
        let hi_writes = writes
            .iter()
            .position(|w| w.start > r.end)
            .unwrap_or(writes.len());
        let lo_reads = chosen
            .iter()
            .filter(|(end, _)| *end < r.start)
            .map(|(_, j)| *j)
            .max()
            .unwrap_or(0);
        let lo = lo_writes.max(lo_reads);
        let Some(j) = (lo..=hi_writes).find(|j| states[*j] == *seen) else {
            return Err(format!(
                "read {r:?} saw {seen:?}, not a state in positions {lo}..={hi_writes}: {states:?}"
            ));
        };
        chosen.push((r.end, j));
    }
    Ok(())
}

fn check(events: Vec<Event>) -> Result<(), String> {
    let mut by_key: BTreeMap<u8, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key).or_default().push(e);
    }
    for (k, evs) in by_key {
        check_key(&evs).map_err(|e| format!("key {k}: {e}"))?;
    }
    Ok(())
}

fn run(nodes_count: usize, cases: u32) {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let nodes = rt.block_on(start_cluster(nodes_count, tmp.path(), |_| {}));
    let stores: Vec<Store> = nodes.iter().map(|n| n.store().clone()).collect();
    let case = AtomicUsize::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&histories(), |clients| {
            let ns = format!("case{}", case.fetch_add(1, Ordering::Relaxed));
            let events = rt.block_on(async {
                let handles: Vec<_> = clients
                    .into_iter()
                    .enumerate()
                    .map(|(i, cmds)| {
                        tokio::spawn(run_client(
                            stores[i % stores.len()].clone(),
                            ns.clone(),
                            i,
                            cmds,
                        ))
                    })
                    .collect();
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.await.unwrap());
                }
                all
            });
            check(events).map_err(TestCaseError::fail)
        })
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    drop(nodes);
}

#[test]
fn linearizable_on_one_server() {
    run(1, 64);
}

#[test]
fn linearizable_on_three_servers() {
    run(3, 48);
}

/// The checker itself must reject a stale read.
#[test]
fn checker_rejects_stale_read() {
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let events = vec![
        Event {
            key: 0,
            start: ms(0),
            end: ms(1),
            done: Done::Write {
                index: 5,
                applied: true,
                value: Some("a".into()),
                cas: None,
            },
        },
        Event {
            key: 0,
            start: ms(2),
            end: ms(3),
            done: Done::Write {
                index: 6,
                applied: true,
                value: Some("b".into()),
                cas: None,
            },
        },
        Event {
            key: 0,
            start: ms(4),
            end: ms(5),
            done: Done::Read(Some(("a".into(), 5))),
        },
    ];
    assert!(check(events.clone()).is_err());
    let mut ok = events;
    ok[2].done = Done::Read(Some(("b".into(), 6)));
    assert!(check(ok).is_ok());
}
