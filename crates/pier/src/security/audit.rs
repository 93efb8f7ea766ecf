//! The audit log: every mutating API call and every refusal (who, what, when, outcome),
//! appended to the store so that every server shows the same log (`pier audit`).
//!
//! Requests hand their line to a bounded queue and never wait for the store: a writer task
//! batches the queue into one transaction every 200 ms. If the store is down long enough for
//! the queue to fill, lines are dropped and counted (`pier_audit_dropped_total`), never the
//! requests. The leader deletes lines older than the retention.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pier_api::security::AuditEntry;
use pier_store::{Consistency, Op, Store, Table, Txn};
use tokio::sync::mpsc;

pub const AUDIT: Table = Table::from_static("audit");
const QUEUE: usize = 4096;
const BATCH_EVERY: Duration = Duration::from_millis(200);
const MAX_BATCH: usize = 256;
/// Lines kept this long.
pub const RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEntry>,
    pub dropped: Arc<AtomicU64>,
}

impl AuditSink {
    pub fn record(&self, entry: AuditEntry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Keys sort by time: `<at_ms, 13 digits>-<server>-<sequence>`.
fn key(e: &AuditEntry, seq: u64) -> String {
    format!("{:013}-{}-{seq:08}", e.at_ms, e.server)
}

/// Starts the writer (and, on the leader, the pruner); returns the sink requests use.
pub fn start(store: Store) -> (AuditSink, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sink = AuditSink {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let writer = tokio::spawn(write_loop(store.clone(), rx));
    let pruner = tokio::spawn(prune_loop(store));
    (sink, vec![writer, pruner])
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<AuditEntry>) {
    let mut seq = 0u64;
    let mut batch: Vec<AuditEntry> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        tokio::time::sleep(BATCH_EVERY).await;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut ops = Vec::with_capacity(batch.len());
        for e in batch.drain(..) {
            seq += 1;
            match serde_json::to_vec(&e) {
                Ok(bytes) => ops.push(Op::put(AUDIT, key(&e, seq), bytes)),
                Err(err) => tracing::warn!(error = %err, "audit line not encodable"),
            }
        }
        if ops.is_empty() {
            continue;
        }
        if let Err(err) = store.write(Txn { ops }).await {
            tracing::warn!(error = %err, "audit lines not written");
        }
    }
}

async fn prune_loop(store: Store) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        if !store.status().is_leader {
            continue;
        }
        let cutoff = format!(
            "{:013}",
            pier_api::time::now_ms().saturating_sub(RETENTION_MS)
        );
        let old: Vec<String> = match store
            .read(Consistency::Default, |v| {
                v.range_prefix(&AUDIT, "")
                    .take_while(|(k, _)| *k < cutoff.as_str())
                    .take(1000)
                    .map(|(k, _)| k.to_string())
                    .collect()
            })
            .await
        {
            Ok(keys) => keys,
            Err(_) => continue,
        };
        if old.is_empty() {
            continue;
        }
        let ops = old.into_iter().map(|k| Op::delete(AUDIT, k)).collect();
        if let Err(err) = store.write(Txn { ops }).await {
            tracing::warn!(error = %err, "old audit lines not pruned");
        }
    }
}

/// Lines at or after `since_ms`, oldest first, at most `limit`; with the index of the table.
pub async fn list(
    store: &Store,
    since_ms: u64,
    limit: usize,
) -> Result<(u64, Vec<AuditEntry>), pier_store::StoreError> {
    let from = format!("{since_ms:013}");
    store
        .read(Consistency::Default, |v| {
            let index = v.table_index(&AUDIT);
            let lines = v
                .range_from(&AUDIT, &from)
                .take(limit)
                .filter_map(|(_, e)| serde_json::from_slice(&e.value).ok())
                .collect();
            (index, lines)
        })
        .await
}
