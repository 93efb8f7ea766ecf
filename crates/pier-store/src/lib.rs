//! pier-store: the replicated state store, the single source of truth for cluster state.
//!
//! # Design
//!
//! * **Consensus** is openraft 0.9 (storage-v2 traits). One server is a one-member Raft
//!   cluster; `pier dev` and a five-server cluster run the same code path.
//! * **Log** (`raft-log.redb`): entries keyed by index, plus vote, committed and last-purged
//!   records. `append` puts the entries into an in-memory tail (readable at once) and queues
//!   them to one writer thread, which drains everything queued into a single redb transaction
//!   committed with `Durability::Immediate` (fsync) and only then fires openraft's flush
//!   callbacks, in order. Votes and truncations go through the same queue and are awaited, so
//!   all log I/O stays ordered. Committed index and purges ride along unfsynced (losing them
//!   only means replaying or keeping a little more).
//! * **State machine** (`state.redb` + memory): all tables live in memory (`BTreeMap`s) for
//!   reads; each apply batch is written to redb in one transaction together with
//!   `last_applied` and the membership. Those commits are not fsynced individually (the log is
//!   the durable record); an fsynced commit happens at least once a second and at shutdown.
//!   After a crash the state machine comes back at some earlier consistent applied index and
//!   openraft replays the log from there (committed index is saved). If the state database is
//!   behind the snapshot (the log before the snapshot may be purged), the snapshot is loaded
//!   first.
//! * **Snapshots** (`snapshot.bin`): built from a copy of the in-memory state (tables,
//!   tombstones, reaped marks, last applied, membership), written atomically (temp, fsync,
//!   rename, fsync dir), then openraft purges the log keeping a short tail. A follower that is
//!   too far behind receives the whole snapshot in one RPC; installing it replaces the state
//!   and wakes every watcher.
//! * **Peer RPC** is HTTP/JSON on `raft_listen` (axum server, reqwest client with connect and
//!   request timeouts): `/raft/append`, `/raft/vote`, `/raft/snapshot`, `/raft/write`
//!   (forwarded writes), `/raft/read-index`, `/raft/join`, `/raft/remove`, `/raft/info`.
//!   Values travel base64-encoded.
//! * **Identity**: `node.json` holds a random u64 node id made on first start. Membership
//!   carries `{name, raft_addr, http_addr}` so any server can name the leader's API address.
//! * **Formation**: `bootstrap_expect == 1` with no `join` initializes at once. Otherwise a
//!   server polls `join` peers (and peers it learns of, in both directions) via `/raft/info`;
//!   if any reports an initialized cluster it asks the leader to add it (learner, then voter);
//!   else once `bootstrap_expect` servers know each other the one with the lowest raft address
//!   initializes with all of them. A server with Raft state never bootstraps again.
//!
//! # Invariants
//!
//! * Group commit: the leader packs concurrent transactions over *disjoint* keys into one log
//!   entry (one append, one fsync, one apply for many writes). Each key changes at most once
//!   per entry, so `modify_index` still names exactly one version of a key; transactions that
//!   share a key, and any `DeletePrefix`, go into separate entries.
//! * A transaction is applied atomically within one log entry; guards (`cas`, `Check`) are evaluated against the state
//!   before it; if one fails nothing is applied.
//! * `Entry::create_index`/`modify_index` are the log index of the creating/last changing write.
//! * The index of a result (`StateView::index_of`) is the max over the live entries *and*
//!   tombstones it covers and the table's `reaped_index`, at least 1: writes to other keys
//!   never change it, deletes never lower it. Tombstones are reaped by a leader-issued log
//!   command (`ReapTombstones`) for deletes older than about five minutes; the table's
//!   `reaped_index` then covers every key and prefix.
//! * Watches: one channel per distinct (table, key) and (table, prefix), shared by all its
//!   watchers and removed when the last goes. Applying a change to key `k` wakes exact watchers
//!   of `k` and prefix watchers of every prefix of `k` (char boundaries), nobody else.
//!   Subscribe (`Store::watch`) before reading so no change falls between read and wait.
//! * Writes are validated before they reach Raft (keys 1..=512 bytes, no NUL, no `..` segment;
//!   values <= 512 KiB; table names `[a-z0-9_.-]{1,64}`); forwarded writes are re-validated
//!   by the leader.
//! * A follower forwards writes to the leader and retries only when the write certainly did
//!   not happen (not leader, connection refused); a timeout reports the outcome as unknown.
//! * Consistent reads use read-index: the leader confirms leadership with a quorum and returns
//!   its commit index; the reading server waits until it has applied that index.

mod batcher;
pub mod blocking;
mod bootstrap;
mod error;
mod liveness;
mod log_store;
mod model;
mod network;
mod server;
mod sm_store;
mod state;
mod store;
mod typed;
mod watch;
mod wire;

pub use error::StoreError;
pub use model::{
    Consistency, Entry, Op, Table, Txn, TxnResult, WatchKey, MAX_KEY_BYTES, MAX_TABLE_NAME_BYTES,
    MAX_VALUE_BYTES,
};
pub use state::{PrefixIter, StateView};
pub use store::{LeaderContact, MemberInfo, Store, StoreConfig, StoreStatus, StoreTls};
pub use typed::{TypedTable, Versioned};
pub use watch::Watch;
