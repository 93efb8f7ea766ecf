// openraft's trait methods return its `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]
//! The Raft log and vote in one redb file. Every append is fsynced before openraft hears it is
//! flushed; one redb transaction per append batch.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;
use crate::wire::{LogId, RaftEntry, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

pub(crate) fn sto_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl Display,
) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

/// Opens a redb file, mapping "not a database / damaged" to `CorruptData` naming the file.
pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    match Database::create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if !matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            Err(StoreError::io(path, e))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "database is already open (another store in this process or another process uses this data directory)",
            ),
        }),
        Err(e) => Err(StoreError::corrupt(path, e.to_string())),
    }
}

/// The log's redb file, telling when it is really closed. redb releases the file in its
/// `Drop`, which runs only after the last `Arc`'s strong count has already reached 0, so the
/// count alone lets a store reopened on the same directory race the close (seen as "database
/// is already open" in a loaded test run). `closed` is set once the drop has finished.
pub(crate) struct LogDb {
    db: Option<Database>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::ops::Deref for LogDb {
    type Target = Database;
    fn deref(&self) -> &Database {
        // Only `drop` takes it out.
        self.db
            .as_ref()
            .expect("the log database is open until LogDb is dropped")
    }
}

impl Drop for LogDb {
    fn drop(&mut self) {
        drop(self.db.take());
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// Entries kept in memory behind the last persisted one, so replication mostly reads memory.
const CACHE_KEEP: u64 = 1024;

/// The tail of the log in memory: everything not yet persisted plus a short persisted tail.
/// Entries below the first cached index are all persisted.
#[derive(Default)]
struct LogCache {
    entries: BTreeMap<u64, RaftEntry>,
    persisted_upto: u64,
}

enum LogCmd {
    Append {
        entries: Vec<RaftEntry>,
        callback: LogFlushed<TypeConfig>,
    },
    /// A write that must be durable before `done` fires (vote, truncate).
    Durable {
        op: DurableOp,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Bookkeeping that may ride on the next durable commit (committed index, purge).
    Lazy { op: LazyOp },
}

enum DurableOp {
    Vote(Vec<u8>),
    Truncate(u64),
}

enum LazyOp {
    Committed(Vec<u8>),
    Purge { upto: u64, record: Vec<u8> },
}

pub(crate) struct LogStore {
    db: Arc<LogDb>,
    path: PathBuf,
    cache: Arc<Mutex<LogCache>>,
    tx: std::sync::mpsc::Sender<LogCmd>,
    last_purged: Option<LogId>,
    /// Last committed index reported by openraft, for `Store::status`.
    committed_index: Arc<AtomicU64>,
}

#[derive(Clone)]
pub(crate) struct LogReader {
    db: Arc<LogDb>,
    cache: Arc<Mutex<LogCache>>,
}

fn lock_cache(cache: &Mutex<LogCache>) -> std::sync::MutexGuard<'_, LogCache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    pub fn open(path: PathBuf, committed_index: Arc<AtomicU64>) -> Result<LogStore, StoreError> {
        let db = open_db(&path)?;
        // Create the tables and check they decode, so a foreign redb file fails here, not later.
        let corrupt = |e: &dyn Display| StoreError::corrupt(&path, e.to_string());
        {
            let txn = db.begin_write().map_err(|e| corrupt(&e))?;
            txn.open_table(LOG).map_err(|e| corrupt(&e))?;
            let meta = txn.open_table(META).map_err(|e| corrupt(&e))?;
            for key in [KEY_VOTE, KEY_COMMITTED, KEY_PURGED] {
                if let Some(v) = meta.get(key).map_err(|e| corrupt(&e))? {
                    let ok = match key {
                        KEY_VOTE => serde_json::from_slice::<Vote>(v.value()).is_ok(),
                        _ => serde_json::from_slice::<Option<LogId>>(v.value()).is_ok(),
                    };
                    if !ok {
                        return Err(StoreError::corrupt(
                            &path,
                            format!("undecodable {key} record"),
                        ));
                    }
                }
            }
            drop(meta);
            txn.commit().map_err(|e| corrupt(&e))?;
        }
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = Arc::new(LogDb {
            db: Some(db),
            closed,
        });
        let last_purged = read_meta::<Option<LogId>>(&db, KEY_PURGED)
            .map_err(|e| corrupt(&e))?
            .flatten();
        if let Some(c) = read_meta::<Option<LogId>>(&db, KEY_COMMITTED)
            .map_err(|e| corrupt(&e))?
            .flatten()
        {
            committed_index.store(c.index, Ordering::Relaxed);
        }
        let cache = Arc::new(Mutex::new(LogCache::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        let writer_cache = cache.clone();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("pier-store-log".into())
            .spawn(move || writer_loop(writer_db, writer_path, writer_cache, rx))
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(LogStore {
            db,
            path,
            cache,
            tx,
            last_purged,
            committed_index,
        })
    }

    /// A flag set once every user of the log file (openraft's core, its replication tasks'
    /// readers and the writer thread) has let it go and the file is closed, i.e. once it can
    /// be opened again. `Store::shutdown` waits on it.
    pub fn release_handle(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.db.closed.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<u64>> {
        read_meta(&self.db, key)
    }

    fn send(&self, cmd: LogCmd) -> Result<(), StorageError<u64>> {
        self.tx.send(cmd).map_err(|_| {
            sto_err(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                format!("{}: log writer thread is gone", self.path.display()),
            )
        })
    }

    async fn durable(
        &self,
        subject: ErrorSubject<u64>,
        op: DurableOp,
    ) -> Result<(), StorageError<u64>> {
        let (done, rx) = oneshot::channel();
        self.send(LogCmd::Durable { op, done })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sto_err(
                subject,
                ErrorVerb::Write,
                format!("{}: {e}", self.path.display()),
            )),
            Err(_) => Err(sto_err(
                subject,
                ErrorVerb::Write,
                "log writer thread is gone",
            )),
        }
    }
}

/// Single writer of the log file: drains every queued command into one redb transaction, one
/// fsync for the lot, then reports completion in order. This is where appends get batched:
/// openraft hands us one entry per client write.
fn writer_loop(
    db: Arc<LogDb>,
    path: PathBuf,
    cache: Arc<Mutex<LogCache>>,
    rx: std::sync::mpsc::Receiver<LogCmd>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        let durable = batch.iter().any(|c| !matches!(c, LogCmd::Lazy { .. }));
        let started = std::time::Instant::now();
        let mut max_appended = 0;
        let res = (|| -> Result<(), String> {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(|e| e.to_string())?;
            {
                let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                for cmd in &batch {
                    match cmd {
                        LogCmd::Append { entries, .. } => {
                            for e in entries {
                                let bytes = serde_json::to_vec(e).map_err(|e| e.to_string())?;
                                log.insert(e.log_id.index, bytes.as_slice())
                                    .map_err(|e| e.to_string())?;
                                max_appended = max_appended.max(e.log_id.index);
                            }
                        }
                        LogCmd::Durable {
                            op: DurableOp::Vote(bytes),
                            ..
                        } => {
                            meta.insert(KEY_VOTE, bytes.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        LogCmd::Durable {
                            op: DurableOp::Truncate(from),
                            ..
                        } => {
                            log.retain_in::<u64, _>(*from.., |_, _| false)
                                .map_err(|e| e.to_string())?;
                        }
                        LogCmd::Lazy {
                            op: LazyOp::Committed(bytes),
                        } => {
                            meta.insert(KEY_COMMITTED, bytes.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        LogCmd::Lazy {
                            op: LazyOp::Purge { upto, record },
                        } => {
                            meta.insert(KEY_PURGED, record.as_slice())
                                .map_err(|e| e.to_string())?;
                            log.retain_in::<u64, _>(..=*upto, |_, _| false)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        tracing::trace!(
            commands = batch.len(),
            durable,
            commit_us = started.elapsed().as_micros() as u64,
            "log batch written"
        );
        if let Err(e) = &res {
            tracing::error!(path = %path.display(), error = %e, "writing the raft log failed");
        }
        if res.is_ok() && max_appended > 0 {
            let mut c = lock_cache(&cache);
            c.persisted_upto = c.persisted_upto.max(max_appended);
            let keep_from = c.persisted_upto.saturating_sub(CACHE_KEEP);
            while let Some((&i, _)) = c.entries.first_key_value() {
                if i >= keep_from {
                    break;
                }
                c.entries.pop_first();
            }
        }
        for cmd in batch {
            match cmd {
                LogCmd::Append { callback, .. } => {
                    callback.log_io_completed(res.clone().map_err(std::io::Error::other));
                }
                LogCmd::Durable { done, .. } => {
                    let _ = done.send(res.clone());
                }
                LogCmd::Lazy { .. } => {}
            }
        }
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StorageError<u64>> {
    let e = |e: &dyn Display| sto_err(ErrorSubject::Store, ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let table = txn.open_table(META).map_err(|x| e(&x))?;
    match table.get(key).map_err(|x| e(&x))? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(|x| e(&x))?)),
        None => Ok(None),
    }
}

fn decode_entry(bytes: &[u8]) -> Result<RaftEntry, StorageError<u64>> {
    serde_json::from_slice(bytes).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))
}

/// Entries with `start <= index < end_excl` from redb.
fn read_db_range(
    db: &Database,
    start: u64,
    end_excl: u64,
) -> Result<Vec<RaftEntry>, StorageError<u64>> {
    let e = |e: &dyn Display| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let table = txn.open_table(LOG).map_err(|x| e(&x))?;
    let mut out = Vec::new();
    let iter = table.range::<u64>(start..end_excl).map_err(|x| e(&x))?;
    for item in iter {
        let (_, v) = item.map_err(|x| e(&x))?;
        out.push(decode_entry(v.value())?);
    }
    Ok(out)
}

/// Reads from the in-memory tail where possible; everything below it is persisted in redb.
///
/// The range may lie wholly below the cache (a new leader probing a lagging follower, or any
/// read after a restart emptied the cache), straddle it, or lie inside it. An empty or inverted
/// range yields no entries, never a panic: openraft's replication task would die with it.
fn read_range<RB: RangeBounds<u64>>(
    db: &Database,
    cache: &Mutex<LogCache>,
    range: RB,
) -> Result<Vec<RaftEntry>, StorageError<u64>> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    // The first index past the range (exclusive end), saturating at u64::MAX.
    let end_excl = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    if start >= end_excl {
        return Ok(Vec::new());
    }
    let (cached, cache_lo) = {
        let c = lock_cache(cache);
        let lo = c
            .entries
            .first_key_value()
            .map(|(i, _)| *i)
            .unwrap_or(u64::MAX);
        let from = start.max(lo);
        let cached: Vec<RaftEntry> = if from < end_excl {
            c.entries
                .range(from..end_excl)
                .map(|(_, e)| e.clone())
                .collect()
        } else {
            Vec::new()
        };
        (cached, lo)
    };
    if start >= cache_lo {
        return Ok(cached);
    }
    // Entries below the cache are all persisted (the cache only ever drops persisted entries).
    let mut out = read_db_range(db, start, end_excl.min(cache_lo))?;
    debug_assert!(out
        .windows(2)
        .all(|w| w[0].log_id.index + 1 == w[1].log_id.index));
    out.extend(cached);
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<u64>> {
        read_range(&self.db, &self.cache, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<u64>> {
        read_range(&self.db, &self.cache, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let cached_last = lock_cache(&self.cache)
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last = match cached_last {
            Some(l) => Some(l),
            None => {
                let e = |e: &dyn Display| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
                let txn = self.db.begin_read().map_err(|x| e(&x))?;
                let table = txn.open_table(LOG).map_err(|x| e(&x))?;
                let last = match table.last().map_err(|x| e(&x))? {
                    Some((_, v)) => Some(decode_entry(v.value())?.log_id),
                    None => None,
                };
                last
            }
        };
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            db: self.db.clone(),
            cache: self.cache.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.durable(ErrorSubject::Vote, DurableOp::Vote(bytes))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        if let Some(c) = committed {
            self.committed_index.store(c.index, Ordering::Relaxed);
        }
        let bytes = serde_json::to_vec(&committed)
            .map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // Rides on the next fsynced append; losing it only means replaying a little more.
        self.send(LogCmd::Lazy {
            op: LazyOp::Committed(bytes),
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        {
            // Readable from now on; durable when the callback fires.
            let mut c = lock_cache(&self.cache);
            for e in &entries {
                c.entries.insert(e.log_id.index, e.clone());
            }
        }
        self.send(LogCmd::Append { entries, callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let from = log_id.index;
        {
            let mut c = lock_cache(&self.cache);
            let _ = c.entries.split_off(&from);
            c.persisted_upto = c.persisted_upto.min(from.saturating_sub(1));
        }
        self.durable(ErrorSubject::Logs, DurableOp::Truncate(from))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let upto = log_id.index;
        let record = serde_json::to_vec(&Some(log_id))
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        {
            let mut c = lock_cache(&self.cache);
            let rest = c.entries.split_off(&(upto + 1));
            c.entries = rest;
        }
        self.last_purged = Some(log_id);
        // Not fsynced on its own: if lost, the purged entries come back, which is harmless.
        self.send(LogCmd::Lazy {
            op: LazyOp::Purge { upto, record },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> RaftEntry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A log of 1..=3000 in redb, with 2001..=3000 also in the cache (or nothing cached).
    fn log_with_cache(dir: &Path, cached_from: Option<u64>) -> (Database, Mutex<LogCache>) {
        let db = open_db(&dir.join("log.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for i in 1..=3000u64 {
                let bytes = serde_json::to_vec(&entry(i)).unwrap();
                log.insert(i, bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let mut cache = LogCache::default();
        if let Some(from) = cached_from {
            for i in from..=3000 {
                cache.entries.insert(i, entry(i));
            }
            cache.persisted_upto = 3000;
        }
        (db, Mutex::new(cache))
    }

    fn indexes(v: &[RaftEntry]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn reads_below_inside_and_across_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (db, cache) = log_with_cache(dir.path(), Some(2001));
        // Wholly below the cache: this panicked before (range start > end in the cache).
        assert_eq!(
            indexes(&read_range(&db, &cache, 1300..1310).unwrap()),
            (1300..1310).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&read_range(&db, &cache, 5..=7).unwrap()),
            vec![5, 6, 7]
        );
        // Across the cache boundary.
        assert_eq!(
            indexes(&read_range(&db, &cache, 1995..2005).unwrap()),
            (1995..2005).collect::<Vec<_>>()
        );
        // Inside the cache, and open-ended.
        assert_eq!(
            indexes(&read_range(&db, &cache, 2990..).unwrap()),
            (2990..=3000).collect::<Vec<_>>()
        );
        // Empty and inverted ranges give nothing.
        assert!(read_range(&db, &cache, 10..10).unwrap().is_empty());
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = read_range(&db, &cache, 20..10).unwrap();
        assert!(inverted.is_empty());
        assert!(read_range(&db, &cache, 3001..).unwrap().is_empty());
    }

    #[test]
    fn reads_with_an_empty_cache_come_from_disk() {
        // After a restart the cache is empty: every read is served by redb.
        let dir = tempfile::tempdir().unwrap();
        let (db, cache) = log_with_cache(dir.path(), None);
        assert_eq!(
            indexes(&read_range(&db, &cache, 1500..1503).unwrap()),
            vec![1500, 1501, 1502]
        );
        assert_eq!(read_range(&db, &cache, ..).unwrap().len(), 3000);
    }
}
