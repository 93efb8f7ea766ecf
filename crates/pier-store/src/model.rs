//! The data model callers see: tables, entries, transactions, watch keys.

use std::borrow::Cow;
use std::fmt;

use crate::error::StoreError;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Longest table name accepted, in bytes.
pub const MAX_TABLE_NAME_BYTES: usize = 64;

/// The name of a table. Open-ended: any name of `[a-z0-9_.-]`, at most 64 bytes, is a table.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table(Cow<'static, str>);

impl Table {
    pub const KV: Table = Table::from_static("kv");
    pub const NODES: Table = Table::from_static("nodes");
    /// Catalog service instances.
    pub const SERVICES: Table = Table::from_static("services");
    pub const CHECKS: Table = Table::from_static("checks");
    pub const REVISIONS: Table = Table::from_static("revisions");
    pub const DEPLOYMENTS: Table = Table::from_static("deployments");
    pub const TASKS: Table = Table::from_static("tasks");
    pub const PIPELINES: Table = Table::from_static("pipelines");
    pub const PIPELINE_RUNS: Table = Table::from_static("pipeline_runs");
    pub const META: Table = Table::from_static("meta");

    /// A table name known at compile time; checked when it is used in a write.
    pub const fn from_static(name: &'static str) -> Table {
        Table(Cow::Borrowed(name))
    }

    /// A table name from runtime input, checked now.
    pub fn new(name: impl Into<String>) -> Result<Table, StoreError> {
        let name = name.into();
        validate_table_name(&name)?;
        Ok(Table(Cow::Owned(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Table {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({})", self.0)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored value with its Raft indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub flags: u64,
    /// Raft log index of the write that created the entry.
    pub create_index: u64,
    /// Raft log index of the write that last changed the entry.
    pub modify_index: u64,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value`. `cas: Some(0)` = only if absent; `Some(i)` = only if the entry's
    /// modify_index is `i`.
    Put {
        table: Table,
        key: String,
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    },
    /// Remove the key. `cas: Some(i)` = only if its modify_index is `i` (0 = absent).
    Delete {
        table: Table,
        key: String,
        cas: Option<u64>,
    },
    /// Remove every key starting with `prefix` (the empty prefix empties the table).
    DeletePrefix { table: Table, prefix: String },
    /// Guard: the key's modify_index must be `modify_index` (0 = the key must be absent).
    Check {
        table: Table,
        key: String,
        modify_index: u64,
    },
    /// Guard: the entry must be committed in raft term `term`. A leader's controllers put it
    /// in every write, with the term their [`crate::Store::leader_barrier`] returned, so a
    /// write proposed by a deposed leader (or forwarded after it lost leadership) fails rather
    /// than act on what that leader read.
    LeaderTerm { term: u64 },
}

impl Op {
    pub fn put(table: Table, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            table,
            key: key.into(),
            value: value.into(),
            flags: 0,
            cas: None,
        }
    }

    pub fn put_cas(
        table: Table,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        cas: u64,
    ) -> Op {
        Op::Put {
            table,
            key: key.into(),
            value: value.into(),
            flags: 0,
            cas: Some(cas),
        }
    }

    pub fn delete(table: Table, key: impl Into<String>) -> Op {
        Op::Delete {
            table,
            key: key.into(),
            cas: None,
        }
    }

    pub fn delete_prefix(table: Table, prefix: impl Into<String>) -> Op {
        Op::DeletePrefix {
            table,
            prefix: prefix.into(),
        }
    }

    /// The write applies only if committed in raft term `term` (see [`Op::LeaderTerm`]).
    pub fn leader_term(term: u64) -> Op {
        Op::LeaderTerm { term }
    }

    pub fn check(table: Table, key: impl Into<String>, modify_index: u64) -> Op {
        Op::Check {
            table,
            key: key.into(),
            modify_index,
        }
    }
}

/// Operations applied atomically in one Raft log entry. Guards (`cas`, `Check`) are evaluated
/// against the state before the transaction; if any fails, nothing is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn single(op: Op) -> Txn {
        Txn { ops: vec![op] }
    }

    /// Builder style: `Txn::new().with(op1).with(op2)`.
    pub fn with(mut self, op: Op) -> Txn {
        self.ops.push(op);
        self
    }
}

/// The outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Raft log index of the entry that carried the transaction.
    pub index: u64,
    /// False when a guard failed; then nothing was applied.
    pub applied: bool,
    /// Position in `ops` of the first guard that failed.
    pub failed_op: Option<usize>,
}

/// What a watch or an index query covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WatchKey {
    Key { table: Table, key: String },
    Prefix { table: Table, prefix: String },
}

impl WatchKey {
    pub fn key(table: Table, key: impl Into<String>) -> WatchKey {
        WatchKey::Key {
            table,
            key: key.into(),
        }
    }

    pub fn prefix(table: Table, prefix: impl Into<String>) -> WatchKey {
        WatchKey::Prefix {
            table,
            prefix: prefix.into(),
        }
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Local state of whichever server serves the read; may lag.
    Stale,
    /// Leader-local read (like Consul's default); on a follower the same as `Consistent`.
    #[default]
    Default,
    /// Linearizable: read-index confirmed by a quorum, then wait until applied locally.
    Consistent,
}

pub(crate) fn validate_table_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > MAX_TABLE_NAME_BYTES {
        return Err(StoreError::InvalidInput(format!(
            "table name must be 1..={MAX_TABLE_NAME_BYTES} bytes, got {} bytes",
            name.len()
        )));
    }
    if !name.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
    }) {
        return Err(StoreError::InvalidInput(format!(
            "table name {name:?} may only contain a-z, 0-9, '_', '-' and '.'"
        )));
    }
    Ok(())
}

pub(crate) fn validate_key(table: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "empty key in table {table}"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidInput(format!(
            "key in table {table} is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(StoreError::InvalidInput(format!(
            "key {key:?} in table {table} contains a NUL byte"
        )));
    }
    if key.split('/').any(|segment| segment == "..") {
        return Err(StoreError::InvalidInput(format!(
            "key {key:?} in table {table} contains a '..' path segment"
        )));
    }
    Ok(())
}

fn validate_prefix(table: &str, prefix: &str) -> Result<(), StoreError> {
    // The empty prefix is allowed (whole table); otherwise the key rules apply.
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(table, prefix)
}

pub(crate) fn validate_txn(txn: &Txn) -> Result<(), StoreError> {
    if txn.ops.is_empty() {
        return Err(StoreError::InvalidInput(
            "transaction has no operations".to_string(),
        ));
    }
    for op in &txn.ops {
        match op {
            Op::Put {
                table, key, value, ..
            } => {
                validate_table_name(table.as_str())?;
                validate_key(table.as_str(), key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::InvalidInput(format!(
                        "value for {table}/{key} is {} bytes, the limit is {MAX_VALUE_BYTES}",
                        value.len()
                    )));
                }
            }
            Op::Delete { table, key, .. } | Op::Check { table, key, .. } => {
                validate_table_name(table.as_str())?;
                validate_key(table.as_str(), key)?;
            }
            Op::DeletePrefix { table, prefix } => {
                validate_table_name(table.as_str())?;
                validate_prefix(table.as_str(), prefix)?;
            }
            Op::LeaderTerm { .. } => {}
        }
    }
    Ok(())
}
