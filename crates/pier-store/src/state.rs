//! The in-memory state machine: tables, tombstones, indexes, and how a command changes them.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::model::{Entry, WatchKey};
use crate::wire::{LogId, OpWire, StoredMembership, TxnResultWire, TxnWire};

#[derive(Clone, Debug, Default)]
pub(crate) struct TableData {
    pub entries: BTreeMap<String, Entry>,
    /// key -> index of the delete that removed it.
    pub tombstones: BTreeMap<String, u64>,
    /// Highest delete index among reaped tombstones: covers every key and prefix of the table.
    pub reaped_index: u64,
    /// Highest index of any change to the table.
    pub max_index: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SmData {
    pub tables: BTreeMap<String, TableData>,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// What one applied command changed, for persistence and for waking watchers.
#[derive(Debug)]
pub(crate) enum Change {
    Put { table: String, key: String },
    Delete { table: String, key: String },
    ReapTombstones { table: String, keys: Vec<String> },
}

impl Change {
    pub fn table(&self) -> &str {
        match self {
            Change::Put { table, .. }
            | Change::Delete { table, .. }
            | Change::ReapTombstones { table, .. } => table,
        }
    }
}

/// Keys from `prefix` on, in order, while they start with `prefix`.
pub(crate) fn prefix_range<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

impl SmData {
    fn current_index(&self, table: &str, key: &str) -> u64 {
        self.tables
            .get(table)
            .and_then(|t| t.entries.get(key))
            .map(|e| e.modify_index)
            .unwrap_or(0)
    }

    /// Applies a transaction at log index `index`. Guards are checked first against the state
    /// before the transaction, so a failed guard leaves everything untouched.
    pub fn apply_txn(
        &mut self,
        index: u64,
        term: u64,
        txn: TxnWire,
        changes: &mut Vec<Change>,
    ) -> TxnResultWire {
        for (i, op) in txn.ops.iter().enumerate() {
            let ok = match op {
                OpWire::Put {
                    table,
                    key,
                    cas: Some(cas),
                    ..
                }
                | OpWire::Delete {
                    table,
                    key,
                    cas: Some(cas),
                } => self.current_index(table, key) == *cas,
                OpWire::Check {
                    table,
                    key,
                    modify_index,
                } => self.current_index(table, key) == *modify_index,
                OpWire::LeaderTerm { term: expected } => *expected == term,
                _ => true,
            };
            if !ok {
                return TxnResultWire {
                    index,
                    applied: false,
                    failed_op: Some(i),
                };
            }
        }
        for op in txn.ops {
            match op {
                OpWire::Put {
                    table,
                    key,
                    value,
                    flags,
                    ..
                } => {
                    let t = self.tables.entry(table.clone()).or_default();
                    t.max_index = t.max_index.max(index);
                    t.tombstones.remove(&key);
                    match t.entries.get_mut(&key) {
                        Some(e) => {
                            e.value = value;
                            e.flags = flags;
                            e.modify_index = index;
                        }
                        None => {
                            t.entries.insert(
                                key.clone(),
                                Entry {
                                    value,
                                    flags,
                                    create_index: index,
                                    modify_index: index,
                                },
                            );
                        }
                    }
                    changes.push(Change::Put { table, key });
                }
                OpWire::Delete { table, key, .. } => {
                    if let Some(t) = self.tables.get_mut(&table) {
                        if t.entries.remove(&key).is_some() {
                            t.tombstones.insert(key.clone(), index);
                            t.max_index = t.max_index.max(index);
                            changes.push(Change::Delete { table, key });
                        }
                    }
                }
                OpWire::DeletePrefix { table, prefix } => {
                    if let Some(t) = self.tables.get_mut(&table) {
                        let keys: Vec<String> = prefix_range(&t.entries, &prefix)
                            .map(|(k, _)| k.clone())
                            .collect();
                        if !keys.is_empty() {
                            t.max_index = t.max_index.max(index);
                        }
                        for key in keys {
                            t.entries.remove(&key);
                            t.tombstones.insert(key.clone(), index);
                            changes.push(Change::Delete {
                                table: table.clone(),
                                key,
                            });
                        }
                    }
                }
                OpWire::Check { .. } | OpWire::LeaderTerm { .. } => {}
            }
        }
        TxnResultWire {
            index,
            applied: true,
            failed_op: None,
        }
    }

    pub fn reap_tombstones(&mut self, up_to_index: u64, changes: &mut Vec<Change>) {
        for (name, t) in self.tables.iter_mut() {
            let keys: Vec<String> = t
                .tombstones
                .iter()
                .filter(|(_, idx)| **idx <= up_to_index)
                .map(|(k, _)| k.clone())
                .collect();
            if keys.is_empty() {
                continue;
            }
            for k in &keys {
                if let Some(idx) = t.tombstones.remove(k) {
                    t.reaped_index = t.reaped_index.max(idx);
                }
            }
            changes.push(Change::ReapTombstones {
                table: name.clone(),
                keys,
            });
        }
    }
}

/// Read access to the applied state, handed to `Store::read` closures.
pub struct StateView<'a> {
    pub(crate) data: &'a SmData,
}

impl<'a> StateView<'a> {
    pub fn get(&self, table: impl AsRef<str>, key: &str) -> Option<&'a Entry> {
        self.data.tables.get(table.as_ref())?.entries.get(key)
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub fn range_prefix(&self, table: impl AsRef<str>, prefix: &str) -> PrefixIter<'a> {
        let range = self.data.tables.get(table.as_ref()).map(|t| {
            t.entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        });
        PrefixIter {
            range,
            prefix: prefix.to_string(),
        }
    }

    /// Live entries with a key at or after `from`, in key order (with `range_prefix`, what a
    /// time-ordered table needs to read "everything since").
    pub fn range_from(
        &self,
        table: impl AsRef<str>,
        from: &str,
    ) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let from = from.to_string();
        self.data
            .tables
            .get(table.as_ref())
            .into_iter()
            .flat_map(move |t| {
                t.entries
                    .range::<str, _>((Bound::Included(from.as_str()), Bound::Unbounded))
                    .map(|(k, e)| (k.as_str(), e))
            })
    }

    /// The index of a result covering `keys`: the highest modify index of the live entries and
    /// tombstones covered (and the table's reaped mark), at least 1. Writes to other keys do not
    /// change it; deletes do not lower it.
    pub fn index_of(&self, keys: &[WatchKey]) -> u64 {
        let mut max = 0;
        for wk in keys {
            let idx = match wk {
                WatchKey::Key { table, key } => self
                    .data
                    .tables
                    .get(table.as_str())
                    .map(|t| {
                        let live = t.entries.get(key).map(|e| e.modify_index).unwrap_or(0);
                        let dead = t.tombstones.get(key).copied().unwrap_or(0);
                        live.max(dead).max(t.reaped_index)
                    })
                    .unwrap_or(0),
                WatchKey::Prefix { table, prefix } => self
                    .data
                    .tables
                    .get(table.as_str())
                    .map(|t| {
                        let live = prefix_range(&t.entries, prefix)
                            .map(|(_, e)| e.modify_index)
                            .max()
                            .unwrap_or(0);
                        let dead = prefix_range(&t.tombstones, prefix)
                            .map(|(_, i)| *i)
                            .max()
                            .unwrap_or(0);
                        live.max(dead).max(t.reaped_index)
                    })
                    .unwrap_or(0),
            };
            max = max.max(idx);
        }
        max.max(1)
    }

    /// Highest index of any change to the table, at least 1.
    pub fn table_index(&self, table: impl AsRef<str>) -> u64 {
        self.data
            .tables
            .get(table.as_ref())
            .map(|t| t.max_index.max(t.reaped_index))
            .unwrap_or(0)
            .max(1)
    }

    /// Raft index of the last entry applied to this state.
    pub fn applied_index(&self) -> u64 {
        self.data.last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Names of the tables that hold or held data.
    pub fn tables(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.data.tables.keys().map(|k| k.as_str())
    }
}

/// Iterator over the live entries under a prefix, in key order.
pub struct PrefixIter<'a> {
    range: Option<std::collections::btree_map::Range<'a, String, Entry>>,
    prefix: String,
}

impl<'a> Iterator for PrefixIter<'a> {
    type Item = (&'a str, &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        let range = self.range.as_mut()?;
        match range.next() {
            Some((k, e)) if k.starts_with(self.prefix.as_str()) => Some((k.as_str(), e)),
            _ => {
                self.range = None;
                None
            }
        }
    }
}

/// A snapshot's payload: the whole state machine.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub tables: Vec<SnapshotTable>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotTable {
    pub name: String,
    pub reaped_index: u64,
    pub max_index: u64,
    pub entries: Vec<SnapshotEntry>,
    pub tombstones: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotEntry {
    pub key: String,
    #[serde(with = "crate::wire::b64")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl SnapshotState {
    pub fn from_data(data: &SmData) -> SnapshotState {
        SnapshotState {
            last_applied: data.last_applied,
            membership: data.membership.clone(),
            tables: data
                .tables
                .iter()
                .map(|(name, t)| SnapshotTable {
                    name: name.clone(),
                    reaped_index: t.reaped_index,
                    max_index: t.max_index,
                    entries: t
                        .entries
                        .iter()
                        .map(|(k, e)| SnapshotEntry {
                            key: k.clone(),
                            value: e.value.clone(),
                            flags: e.flags,
                            create_index: e.create_index,
                            modify_index: e.modify_index,
                        })
                        .collect(),
                    tombstones: t.tombstones.iter().map(|(k, i)| (k.clone(), *i)).collect(),
                })
                .collect(),
        }
    }

    pub fn into_data(self) -> SmData {
        let mut tables = BTreeMap::new();
        for t in self.tables {
            tables.insert(
                t.name,
                TableData {
                    entries: t
                        .entries
                        .into_iter()
                        .map(|e| {
                            (
                                e.key,
                                Entry {
                                    value: e.value,
                                    flags: e.flags,
                                    create_index: e.create_index,
                                    modify_index: e.modify_index,
                                },
                            )
                        })
                        .collect(),
                    tombstones: t.tombstones.into_iter().collect(),
                    reaped_index: t.reaped_index,
                    max_index: t.max_index,
                },
            );
        }
        SmData {
            tables,
            last_applied: self.last_applied,
            membership: self.membership,
        }
    }
}
