//! A run's log in the store: the writer that turns a [`LogSink`](crate::log_sink::LogSink)'s
//! lines into appended chunks, and the reader (whole or following) behind `pier pipeline logs`.

use std::time::Duration;

use pier_store::{Consistency, Op, Store, Txn, WatchKey};
use tokio::sync::mpsc;

use crate::error::PipelineError;
use crate::records::{get_run, log_key, log_prefix, run_key, LOGS, RUNS};

/// Lines arriving within this window go into one chunk (one store write).
const CHUNK_WINDOW: Duration = Duration::from_millis(150);
/// A chunk never grows beyond this.
const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Drains `rx` into chunks of run `number` until every sender is dropped, then returns the
/// number of chunks written. Store failures are logged and the lines dropped: a log must
/// never fail a run.
pub async fn write_log(
    store: Store,
    name: String,
    number: u64,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> u64 {
    let mut seq = 0u64;
    let mut pending: Option<String> = None;
    loop {
        let mut chunk = match pending.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(first) => first,
                None => break,
            },
        };
        let deadline = tokio::time::Instant::now() + CHUNK_WINDOW;
        let mut closed = false;
        while chunk.len() < MAX_CHUNK_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => chunk.push_str(&more),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if chunk.len() > MAX_CHUNK_BYTES {
            let mut cut = MAX_CHUNK_BYTES;
            while !chunk.is_char_boundary(cut) {
                cut -= 1;
            }
            pending = Some(chunk.split_off(cut));
        }
        let op = Op::put(LOGS, log_key(&name, number, seq), chunk.into_bytes());
        match store.write(Txn::single(op)).await {
            Ok(_) => seq += 1,
            Err(e) => {
                tracing::warn!(pipeline = %name, run = number, error = %e, "dropping a log chunk")
            }
        }
        if closed && pending.is_none() {
            break;
        }
    }
    seq
}

/// Log chunks of a run from chunk `from_seq` on: (next seq to ask for, text).
pub async fn read_log(
    store: &Store,
    name: &str,
    number: u64,
    from_seq: u64,
    consistency: Consistency,
) -> Result<(u64, String), PipelineError> {
    let prefix = log_prefix(name, number);
    let (next, text) = store
        .read(consistency, |v| {
            let mut next = from_seq;
            let mut text = String::new();
            for (key, entry) in v.range_prefix(LOGS, &prefix) {
                let seq: u64 = key[prefix.len()..].parse().unwrap_or(0);
                if seq < from_seq {
                    continue;
                }
                text.push_str(&String::from_utf8_lossy(&entry.value));
                next = seq + 1;
            }
            (next, text)
        })
        .await?;
    Ok((next, text))
}

/// Follows a run's log: calls `emit` with each new piece of text until the run is finished
/// and everything is out (or `emit` returns false: the reader went away).
pub async fn follow_log(
    store: &Store,
    name: &str,
    number: u64,
    mut emit: impl FnMut(String) -> bool,
) -> Result<(), PipelineError> {
    let keys = [
        WatchKey::prefix(LOGS, log_prefix(name, number)),
        WatchKey::key(RUNS, run_key(name, number)),
    ];
    let mut watch = store.watch(&keys);
    let mut next = 0u64;
    loop {
        // The state first: a run that is finished has flushed its whole log before.
        let run = get_run(store, name, number, Consistency::Stale)
            .await?
            .ok_or_else(|| PipelineError::RunNotFound(name.to_string(), number))?;
        let (n, text) = read_log(store, name, number, next, Consistency::Stale).await?;
        next = n;
        if !text.is_empty() && !emit(text) {
            return Ok(());
        }
        if run.value.status.is_terminal() {
            return Ok(());
        }
        watch.changed(Duration::from_secs(15)).await;
    }
}
