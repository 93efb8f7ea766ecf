//! Group commit on the leader: concurrent transactions are packed into one Raft entry, so one
//! log append, one fsync and one apply serve many writes (openraft 0.9 appends one entry per
//! `client_write`). Only transactions over disjoint keys share an entry, so a key changes at most
//! once per log index and `modify_index` keeps naming exactly one version.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::wire::{OpWire, Raft, Request, Response, TxnResultWire, TxnWire};

/// Entries in flight at once; while they commit, new writes gather into the next batch.
const MAX_IN_FLIGHT: usize = 2;
const MAX_BATCH_TXNS: usize = 512;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub(crate) enum BatchError {
    NotLeader,
    Stopped,
    Raft(String),
}

pub(crate) struct PendingWrite {
    txn: TxnWire,
    keys: Vec<(String, String)>,
    /// Touches a key range (DeletePrefix): goes alone.
    exclusive: bool,
    bytes: usize,
    reply: oneshot::Sender<Result<TxnResultWire, BatchError>>,
}

impl PendingWrite {
    pub fn new(
        txn: TxnWire,
    ) -> (
        PendingWrite,
        oneshot::Receiver<Result<TxnResultWire, BatchError>>,
    ) {
        let mut keys = Vec::with_capacity(txn.ops.len());
        let mut exclusive = false;
        let mut bytes = 0;
        for op in &txn.ops {
            match op {
                OpWire::Put {
                    table, key, value, ..
                } => {
                    bytes += key.len() + value.len();
                    keys.push((table.clone(), key.clone()));
                }
                OpWire::Delete { table, key, .. } | OpWire::Check { table, key, .. } => {
                    bytes += key.len();
                    keys.push((table.clone(), key.clone()));
                }
                OpWire::DeletePrefix { .. } => exclusive = true,
                OpWire::LeaderTerm { .. } => {}
            }
        }
        let (reply, rx) = oneshot::channel();
        (
            PendingWrite {
                txn,
                keys,
                exclusive,
                bytes,
                reply,
            },
            rx,
        )
    }
}

pub(crate) async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<PendingWrite>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut waiting: VecDeque<PendingWrite> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if waiting.is_empty() {
            match rx.recv().await {
                Some(w) => waiting.push_back(w),
                None => return,
            }
        }
        while let Ok(w) = rx.try_recv() {
            waiting.push_back(w);
        }
        let batch = take_batch(&mut waiting);
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(raft, batch).await;
            drop(slot);
        });
    }
}

/// Takes the next conflict-free batch in arrival order; the rest waits for the next one.
fn take_batch(waiting: &mut VecDeque<PendingWrite>) -> Vec<PendingWrite> {
    let mut batch: Vec<PendingWrite> = Vec::new();
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    let mut bytes = 0;
    let mut rest = VecDeque::new();
    while let Some(w) = waiting.pop_front() {
        let full = batch.len() >= MAX_BATCH_TXNS
            || (!batch.is_empty() && bytes + w.bytes > MAX_BATCH_BYTES);
        let alone = batch.first().is_some_and(|b| b.exclusive);
        let conflicts =
            (w.exclusive && !batch.is_empty()) || w.keys.iter().any(|k| claimed.contains(k));
        if full || alone || conflicts {
            rest.push_back(w);
            continue;
        }
        bytes += w.bytes;
        claimed.extend(w.keys.iter().cloned());
        batch.push(w);
    }
    *waiting = rest;
    batch
}

async fn commit(raft: Raft, batch: Vec<PendingWrite>) {
    let (txns, replies): (Vec<TxnWire>, Vec<_>) =
        batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
    let res = raft.client_write(Request::Batch(txns)).await;
    match res {
        Ok(resp) => match resp.data {
            Response::Batch(results) if results.len() == replies.len() => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            other => {
                let msg = format!("unexpected state machine response {other:?}");
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Raft(msg.clone())));
                }
            }
        },
        Err(e) => {
            let err = || match &e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => BatchError::NotLeader,
                RaftError::Fatal(Fatal::Stopped) => BatchError::Stopped,
                other => BatchError::Raft(other.to_string()),
            };
            for reply in replies {
                let _ = reply.send(Err(err()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> PendingWrite {
        PendingWrite::new(TxnWire {
            ops: vec![OpWire::Put {
                table: "kv".into(),
                key: key.into(),
                value: vec![],
                flags: 0,
                cas: None,
            }],
        })
        .0
    }

    #[test]
    fn batches_hold_disjoint_keys_in_order() {
        let mut q: VecDeque<PendingWrite> =
            ["a", "b", "a", "c", "b"].iter().map(|k| put(k)).collect();
        let keys = |b: &[PendingWrite]| b.iter().map(|w| w.keys[0].1.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&take_batch(&mut q)), ["a", "b", "c"]);
        assert_eq!(keys(&take_batch(&mut q)), ["a", "b"]);
        assert!(q.is_empty());
    }

    #[test]
    fn delete_prefix_goes_alone() {
        let dp = PendingWrite::new(TxnWire {
            ops: vec![OpWire::DeletePrefix {
                table: "kv".into(),
                prefix: "x".into(),
            }],
        })
        .0;
        let mut q: VecDeque<PendingWrite> = VecDeque::from(vec![put("a"), dp, put("b")]);
        assert_eq!(take_batch(&mut q).len(), 2);
        let b = take_batch(&mut q);
        assert_eq!(b.len(), 1);
        assert!(b[0].exclusive);
    }
}
