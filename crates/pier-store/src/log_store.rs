//! The Raft log and vote in one redb file. Every append is fsynced before openraft hears it is
//! flushed; one redb transaction per append batch.

use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

pub(crate) fn sto_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl Display) -> StorageError<u64> {
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

pub(crate) struct LogStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Last committed index reported by openraft, for `Store::status`.
    committed_index: Arc<AtomicU64>,
}

#[derive(Clone)]
pub(crate) struct LogReader {
    db: Arc<Database>,
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
                        return Err(StoreError::corrupt(&path, format!("undecodable {key} record")));
                    }
                }
            }
            drop(meta);
            txn.commit().map_err(|e| corrupt(&e))?;
        }
        let store = LogStore {
            db: Arc::new(db),
            path,
            committed_index,
        };
        if let Some(c) = store.read_meta::<Option<LogId>>(KEY_COMMITTED).ok().flatten().flatten() {
            store.committed_index.store(c.index, Ordering::Relaxed);
        }
        Ok(store)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<u64>> {
        read_meta(&self.db, key)
    }

    async fn write<F>(&self, subject: ErrorSubject<u64>, durable: bool, f: F) -> Result<(), StorageError<u64>>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), String> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(|e| e.to_string())?;
            f(&txn)?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sto_err(subject, ErrorVerb::Write, format!("{}: {e}", path.display()))),
            Err(e) => Err(sto_err(subject, ErrorVerb::Write, e)),
        }
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError<u64>> {
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

fn read_range<RB: RangeBounds<u64>>(db: &Database, range: RB) -> Result<Vec<RaftEntry>, StorageError<u64>> {
    let e = |e: &dyn Display| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(s) => Bound::Included(*s),
        Bound::Excluded(s) => Bound::Excluded(*s),
        Bound::Unbounded => Bound::Unbounded,
    };
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let table = txn.open_table(LOG).map_err(|x| e(&x))?;
    let mut out = Vec::new();
    let iter = table
        .range::<u64>((Bound::Included(start), end))
        .map_err(|x| e(&x))?;
    for item in iter {
        let (_, v) = item.map_err(|x| e(&x))?;
        out.push(decode_entry(v.value())?);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<u64>> {
        read_range(&self.db, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<u64>> {
        read_range(&self.db, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged: Option<LogId> = self.read_meta::<Option<LogId>>(KEY_PURGED)?.flatten();
        let e = |e: &dyn Display| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last = {
            let txn = self.db.begin_read().map_err(|x| e(&x))?;
            let table = txn.open_table(LOG).map_err(|x| e(&x))?;
            let last = match table.last().map_err(|x| e(&x))? {
                Some((_, v)) => Some(decode_entry(v.value())?.log_id),
                None => None,
            };
            last
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { db: self.db.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let bytes = serde_json::to_vec(vote).map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.write(ErrorSubject::Vote, true, move |txn| {
            let mut t = txn.open_table(META).map_err(|e| e.to_string())?;
            t.insert(KEY_VOTE, bytes.as_slice()).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        if let Some(c) = committed {
            self.committed_index.store(c.index, Ordering::Relaxed);
        }
        let bytes = serde_json::to_vec(&committed).map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // Not fsynced on its own: the next append makes it durable, and losing it only means
        // replaying a little more on restart.
        self.write(ErrorSubject::Store, false, move |txn| {
            let mut t = txn.open_table(META).map_err(|e| e.to_string())?;
            t.insert(KEY_COMMITTED, bytes.as_slice()).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let res = self
            .write(ErrorSubject::Logs, true, move |txn| {
                let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice()).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let from = log_id.index;
        self.write(ErrorSubject::Logs, true, move |txn| {
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in::<u64, _>(from.., |_, _| false).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let upto = log_id.index;
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        // Not fsynced: if lost, the purged entries come back, which is harmless.
        self.write(ErrorSubject::Logs, false, move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(KEY_PURGED, bytes.as_slice()).map_err(|e| e.to_string())?;
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in::<u64, _>(..=upto, |_, _| false).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }
}
