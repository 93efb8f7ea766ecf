//! Health checks run next to the workload.
//!
//! [`CheckRunner`] runs the checks of one node (the node of the agent that embeds it): it
//! watches the node's set of checks in the store (`catalog_check_ids/<node>/`, which changes
//! only when checks are added, removed or redefined — never on a status update) and keeps one
//! tokio task per runnable check (HTTP, TCP, script, TTL). Probes live in [`probes`]. A task
//! only does IO; what the status is, when a TTL expires and when deregistration is due come
//! from pier-core's health engine (`pier_core::health`, the same the node agent runs for task
//! checks), with Consul's settings: one result decides unless the check gives
//! `SuccessBeforePassing` / `FailuresBeforeCritical`.
//!
//! Invariants:
//! - A status is written to the store **only on a transition** (for TTL checks also when an
//!   update brings a different note): a check that keeps passing every second costs no Raft
//!   entry and wakes no watcher. The output of HTTP/TCP/script checks is refreshed with each
//!   transition only.
//! - Each task starts from the status in the store, so a restarted agent does not rewrite
//!   what is already there; a TTL check's timer starts afresh at task start.
//! - `DeregisterCriticalServiceAfter`: when a check has been critical for that long without
//!   interruption, the runner deregisters its instance.

pub mod allow;
pub mod probes;
mod runner;

pub use allow::{CheckAllow, Cidr};
pub use runner::{CheckRunner, CheckRunnerConfig};
