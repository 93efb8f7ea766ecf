//! The state machine: in-memory tables for reads, persisted to redb in the same batch as the
//! applied index and membership; snapshots as one atomically replaced file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
    StorageError,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::log_store::{open_db, sto_err};
use crate::model::Entry;
use crate::state::{Change, SmData, SnapshotState, TableData};
use crate::watch::WatchRegistry;
use crate::wire::{
    LogId, RaftEntry, Request, Response, SnapshotMeta, StoredMembership, TypeConfig,
};

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
const TOMBSTONES: TableDefinition<(&str, &str), u64> = TableDefinition::new("tombstones");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const TABLE_META_PREFIX: &str = "table/";

const SNAPSHOT_MAGIC: &[u8] = b"pier-store-snapshot-v1\n";

/// Applies are committed without fsync (the log is the durable record); an fsynced commit at
/// least this often bounds how much a restart after a crash replays.
const DURABLE_EVERY: Duration = Duration::from_millis(1000);
const DURABLE_EVERY_ENTRIES: u64 = 10_000;

#[derive(Serialize, Deserialize)]
struct TableMeta {
    reaped_index: u64,
    max_index: u64,
}

struct DurableClock {
    last: Instant,
    entries_since: u64,
}

pub(crate) struct SmShared {
    data: RwLock<SmData>,
    pub watches: Arc<WatchRegistry>,
    db: Arc<Database>,
    db_path: PathBuf,
    snapshot_path: PathBuf,
    snapshot_seq: AtomicU64,
    /// Serialises snapshot file replacement; holds the last_log_id of the file on disk.
    snapshot_file: Mutex<Option<LogId>>,
    durable: Mutex<DurableClock>,
}

impl SmShared {
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        // Poisoning would need a panic inside apply; the data is then still the last consistent
        // state we wrote, so reading it is no worse than refusing.
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every applied change durable (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: impl Display) -> StoreError {
        StoreError::io(&self.db_path, std::io::Error::other(e.to_string()))
    }
}

#[derive(Clone)]
pub(crate) struct SmStore {
    pub shared: Arc<SmShared>,
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + e.value.len());
    out.extend_from_slice(&e.flags.to_be_bytes());
    out.extend_from_slice(&e.create_index.to_be_bytes());
    out.extend_from_slice(&e.modify_index.to_be_bytes());
    out.extend_from_slice(&e.value);
    out
}

fn decode_entry(b: &[u8]) -> Option<Entry> {
    if b.len() < 24 {
        return None;
    }
    let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    Some(Entry {
        flags: u(0),
        create_index: u(8),
        modify_index: u(16),
        value: b[24..].to_vec(),
    })
}

/// Final state of one key after a batch: encoded entry (None = absent), tombstone index.
type KeyWrite = (Option<Vec<u8>>, Option<u64>);

/// Everything one apply batch writes to redb, resolved to final values.
#[derive(Default)]
struct PersistBatch {
    keys: BTreeMap<(String, String), KeyWrite>,
    tables: BTreeMap<String, Vec<u8>>,
    last_applied: Vec<u8>,
    membership: Vec<u8>,
}

impl PersistBatch {
    fn build(data: &SmData, changes: &[Change]) -> Result<PersistBatch, serde_json::Error> {
        let mut batch = PersistBatch::default();
        let mut touched_tables = BTreeSet::new();
        let mut resolve = |table: &str, key: &str, t: Option<&TableData>| {
            let entry = t.and_then(|t| t.entries.get(key)).map(encode_entry);
            let tomb = t.and_then(|t| t.tombstones.get(key)).copied();
            batch
                .keys
                .insert((table.to_string(), key.to_string()), (entry, tomb));
        };
        for c in changes {
            let table = c.table();
            touched_tables.insert(table.to_string());
            let t = data.tables.get(table);
            match c {
                Change::Put { key, .. } | Change::Delete { key, .. } => resolve(table, key, t),
                Change::ReapTombstones { keys, .. } => {
                    for key in keys {
                        resolve(table, key, t);
                    }
                }
            }
        }
        for name in touched_tables {
            if let Some(t) = data.tables.get(&name) {
                let meta = TableMeta {
                    reaped_index: t.reaped_index,
                    max_index: t.max_index,
                };
                batch.tables.insert(name, serde_json::to_vec(&meta)?);
            }
        }
        batch.last_applied = serde_json::to_vec(&data.last_applied)?;
        batch.membership = serde_json::to_vec(&data.membership)?;
        Ok(batch)
    }

    fn write(&self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut tombs = txn.open_table(TOMBSTONES)?;
        let mut meta = txn.open_table(META)?;
        for ((table, key), (entry, tomb)) in &self.keys {
            let k = (table.as_str(), key.as_str());
            match entry {
                Some(bytes) => {
                    entries.insert(k, bytes.as_slice())?;
                }
                None => {
                    entries.remove(k)?;
                }
            }
            match tomb {
                Some(i) => {
                    tombs.insert(k, *i)?;
                }
                None => {
                    tombs.remove(k)?;
                }
            }
        }
        for (name, bytes) in &self.tables {
            meta.insert(
                format!("{TABLE_META_PREFIX}{name}").as_str(),
                bytes.as_slice(),
            )?;
        }
        meta.insert(KEY_APPLIED, self.last_applied.as_slice())?;
        meta.insert(KEY_MEMBERSHIP, self.membership.as_slice())?;
        Ok(())
    }
}

fn write_full_state(db: &Database, data: &SmData) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        txn.delete_table(ENTRIES).map_err(|e| e.to_string())?;
        txn.delete_table(TOMBSTONES).map_err(|e| e.to_string())?;
        txn.delete_table(META).map_err(|e| e.to_string())?;
        let mut entries = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        let mut tombs = txn.open_table(TOMBSTONES).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for (name, t) in &data.tables {
            for (k, e) in &t.entries {
                entries
                    .insert((name.as_str(), k.as_str()), encode_entry(e).as_slice())
                    .map_err(|e| e.to_string())?;
            }
            for (k, i) in &t.tombstones {
                tombs
                    .insert((name.as_str(), k.as_str()), *i)
                    .map_err(|e| e.to_string())?;
            }
            let tm = serde_json::to_vec(&TableMeta {
                reaped_index: t.reaped_index,
                max_index: t.max_index,
            })
            .map_err(|e| e.to_string())?;
            meta.insert(format!("{TABLE_META_PREFIX}{name}").as_str(), tm.as_slice())
                .map_err(|e| e.to_string())?;
        }
        let la = serde_json::to_vec(&data.last_applied).map_err(|e| e.to_string())?;
        meta.insert(KEY_APPLIED, la.as_slice())
            .map_err(|e| e.to_string())?;
        let m = serde_json::to_vec(&data.membership).map_err(|e| e.to_string())?;
        meta.insert(KEY_MEMBERSHIP, m.as_slice())
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

fn load_db(db: &Database, path: &Path) -> Result<SmData, StoreError> {
    let corrupt = |e: &dyn Display| StoreError::corrupt(path, e.to_string());
    // Create tables on first start so reads below find them.
    {
        let txn = db.begin_write().map_err(|e| corrupt(&e))?;
        txn.open_table(ENTRIES).map_err(|e| corrupt(&e))?;
        txn.open_table(TOMBSTONES).map_err(|e| corrupt(&e))?;
        txn.open_table(META).map_err(|e| corrupt(&e))?;
        txn.commit().map_err(|e| corrupt(&e))?;
    }
    let txn = db.begin_read().map_err(|e| corrupt(&e))?;
    let mut data = SmData::default();
    let meta = txn.open_table(META).map_err(|e| corrupt(&e))?;
    for item in meta.iter().map_err(|e| corrupt(&e))? {
        let (k, v) = item.map_err(|e| corrupt(&e))?;
        let k = k.value();
        if k == KEY_APPLIED {
            data.last_applied = serde_json::from_slice(v.value()).map_err(|e| corrupt(&e))?;
        } else if k == KEY_MEMBERSHIP {
            data.membership = serde_json::from_slice(v.value()).map_err(|e| corrupt(&e))?;
        } else if let Some(name) = k.strip_prefix(TABLE_META_PREFIX) {
            let tm: TableMeta = serde_json::from_slice(v.value()).map_err(|e| corrupt(&e))?;
            let t = data.tables.entry(name.to_string()).or_default();
            t.reaped_index = tm.reaped_index;
            t.max_index = tm.max_index;
        }
    }
    let entries = txn.open_table(ENTRIES).map_err(|e| corrupt(&e))?;
    for item in entries.iter().map_err(|e| corrupt(&e))? {
        let (k, v) = item.map_err(|e| corrupt(&e))?;
        let (table, key) = k.value();
        let entry = decode_entry(v.value())
            .ok_or_else(|| corrupt(&format!("short entry record {table}/{key}")))?;
        data.tables
            .entry(table.to_string())
            .or_default()
            .entries
            .insert(key.to_string(), entry);
    }
    let tombs = txn.open_table(TOMBSTONES).map_err(|e| corrupt(&e))?;
    for item in tombs.iter().map_err(|e| corrupt(&e))? {
        let (k, v) = item.map_err(|e| corrupt(&e))?;
        let (table, key) = k.value();
        data.tables
            .entry(table.to_string())
            .or_default()
            .tombstones
            .insert(key.to_string(), v.value());
    }
    Ok(data)
}

/// Snapshot file: magic line, meta as one JSON line, then the payload (JSON `SnapshotState`).
fn read_snapshot_file(path: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| StoreError::corrupt(path, "snapshot file has no pier-store header"))?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| StoreError::corrupt(path, "snapshot file has no meta line"))?;
    let meta: SnapshotMeta = serde_json::from_slice(&rest[..nl])
        .map_err(|e| StoreError::corrupt(path, format!("snapshot meta: {e}")))?;
    Ok(Some((meta, rest[nl + 1..].to_vec())))
}

pub(crate) fn write_file_atomically(
    path: &Path,
    parts: &[&[u8]],
    tmp_suffix: &str,
) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp{tmp_suffix}"));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // The rename itself must survive a crash.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| StoreError::io(path, e))
}

impl SmStore {
    pub fn open(
        db_path: PathBuf,
        snapshot_path: PathBuf,
        watches: Arc<WatchRegistry>,
    ) -> Result<SmStore, StoreError> {
        let db = open_db(&db_path)?;
        let mut data = load_db(&db, &db_path)?;
        let mut snapshot_last = None;
        if let Some((meta, payload)) = read_snapshot_file(&snapshot_path)? {
            snapshot_last = meta.last_log_id;
            if meta.last_log_id > data.last_applied {
                // The state database lost un-fsynced applies that the log no longer holds:
                // start from the snapshot, the log replays the rest.
                tracing::info!(
                    snapshot = ?meta.last_log_id,
                    db = ?data.last_applied,
                    "state database is behind the snapshot; loading the snapshot"
                );
                let state: SnapshotState = serde_json::from_slice(&payload).map_err(|e| {
                    StoreError::corrupt(&snapshot_path, format!("snapshot payload: {e}"))
                })?;
                data = state.into_data();
                data.last_applied = meta.last_log_id;
                write_full_state(&db, &data)
                    .map_err(|e| StoreError::io(&db_path, std::io::Error::other(e)))?;
            }
        }
        Ok(SmStore {
            shared: Arc::new(SmShared {
                data: RwLock::new(data),
                watches,
                db: Arc::new(db),
                db_path,
                snapshot_path,
                snapshot_seq: AtomicU64::new(0),
                snapshot_file: Mutex::new(snapshot_last),
                durable: Mutex::new(DurableClock {
                    last: Instant::now(),
                    entries_since: 0,
                }),
            }),
        })
    }

    fn save_snapshot_file(&self, meta: &SnapshotMeta, payload: &[u8]) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut current = shared
            .snapshot_file
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *current > meta.last_log_id {
            return Ok(());
        }
        let meta_line = serde_json::to_vec(meta).map_err(|e| StoreError::Raft(e.to_string()))?;
        write_file_atomically(
            &shared.snapshot_path,
            &[SNAPSHOT_MAGIC, &meta_line, b"\n", payload],
            "",
        )?;
        *current = meta.last_log_id;
        Ok(())
    }

    fn next_snapshot_id(&self, last: Option<LogId>) -> String {
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        }
    }
}

pub(crate) struct SnapBuilder {
    store: SmStore,
    state: SnapshotState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let err = |e: &dyn Display| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let payload = serde_json::to_vec(&self.state).map_err(|e| err(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: self.store.next_snapshot_id(self.state.last_applied),
        };
        let store = self.store.clone();
        let (meta, payload) = tokio::task::spawn_blocking(move || {
            store
                .save_snapshot_file(&meta, &payload)
                .map(|_| (meta, payload))
        })
        .await
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = payload.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(payload)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SnapBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let data = self.shared.read();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        let mut last = None;
        let batch = {
            let mut data = self.shared.write();
            for entry in entries {
                let index = entry.log_id.index;
                let term = entry.log_id.leader_id.term;
                data.last_applied = Some(entry.log_id);
                last = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(Request::Txn(txn)) => {
                        Response::Txn(data.apply_txn(index, term, txn, &mut changes))
                    }
                    EntryPayload::Normal(Request::Batch(txns)) => Response::Batch(
                        txns.into_iter()
                            .map(|t| data.apply_txn(index, term, t, &mut changes))
                            .collect(),
                    ),
                    EntryPayload::Normal(Request::ReapTombstones { up_to_index }) => {
                        data.reap_tombstones(up_to_index, &mut changes);
                        Response::Done
                    }
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Done
                    }
                };
                responses.push(resp);
            }
            PersistBatch::build(&data, &changes)
        };
        let Some(last) = last else {
            return Ok(responses);
        };
        self.shared.watches.notify(&changes);
        let batch = batch.map_err(|e| sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        let durable = {
            let mut clock = self
                .shared
                .durable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            clock.entries_since += responses.len() as u64;
            if clock.last.elapsed() >= DURABLE_EVERY || clock.entries_since >= DURABLE_EVERY_ENTRIES
            {
                clock.last = Instant::now();
                clock.entries_since = 0;
                true
            } else {
                false
            }
        };
        let db = self.shared.db.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(|e| e.to_string())?;
            batch.write(&txn).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(responses),
            Ok(Err(e)) => Err(sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, e)),
            Err(e) => Err(sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, e)),
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapBuilder {
        let state = SnapshotState::from_data(&self.shared.read());
        SnapBuilder {
            store: self.clone(),
            state,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let err = |e: &dyn Display| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let payload = snapshot.into_inner();
        let state: SnapshotState = serde_json::from_slice(&payload).map_err(|e| err(&e))?;
        let mut data = state.into_data();
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let db = self.shared.db.clone();
        let store = self.clone();
        let meta2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> Result<SmData, String> {
            write_full_state(&db, &data)?;
            store
                .save_snapshot_file(&meta2, &payload)
                .map_err(|e| e.to_string())?;
            Ok(data)
        })
        .await
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
        *self.shared.write() = data;
        self.shared.watches.notify_all();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let path = self.shared.snapshot_path.clone();
        let res = tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(res.map(|(meta, payload)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(payload)),
        }))
    }
}
