//! [`NodeMonitor`]: the leader's failure detector for nodes.
//!
//! Agents heartbeat to the leader ([`Catalog::heartbeat`]; followers forward). The leader keeps
//! the time of the last heartbeat per node **in memory** — a heartbeat is not a Raft write.
//! Every tick the monitor compares ages with `node_dead_after_ms`: a monitored node that went
//! silent gets its `serfHealth` node check set critical (one Raft write), which makes every
//! instance on it non-passing at once (health answers include node checks); when heartbeats
//! come back it is set passing again. No gossip, no suspicion rounds: detection takes
//! `node_dead_after_ms` plus at most one tick.
//!
//! Invariants:
//! - Only the leader acts; every server runs the loop so that a new leader takes over.
//! - A new leader (any change of term while leading) gives every node a fresh grace period of
//!   `node_dead_after_ms` and marks none passing until it has heard from it itself — it has
//!   no heartbeat history of its own.
//! - Writes happen only on transitions (compared with the stored check).

use std::collections::HashSet;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::catalog::{Catalog, HeartbeatState};
use crate::model::CheckStatus;

/// Handle of the monitor loop; dropping it does not stop the loop, [`NodeMonitor::shutdown`]
/// does.
pub struct NodeMonitor {
    handle: JoinHandle<()>,
}

impl NodeMonitor {
    /// Starts the loop (on every server; it is idle on followers).
    pub fn start(catalog: Catalog) -> NodeMonitor {
        NodeMonitor {
            handle: tokio::spawn(monitor_loop(catalog)),
        }
    }

    pub fn shutdown(&self) {
        self.handle.abort();
    }
}

async fn monitor_loop(catalog: Catalog) {
    let tick = Duration::from_millis(catalog.config().node_monitor_tick_ms.max(10));
    let dead_after = Duration::from_millis(catalog.config().node_dead_after_ms);
    let mut leading_term: Option<u64> = None;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let status = catalog.store().status();
        if !status.is_leader {
            leading_term = None;
            continue;
        }
        if leading_term != Some(status.term) {
            let now = Instant::now();
            for state in catalog.heartbeats.lock().values_mut() {
                *state = HeartbeatState {
                    last_seen: now,
                    heard: false,
                };
            }
            tracing::info!(
                term = status.term,
                "node monitor active on the new leader; every node gets a fresh grace period"
            );
            leading_term = Some(status.term);
        }
        let nodes = match catalog.monitored_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "node monitor cannot read nodes");
                continue;
            }
        };
        let now = Instant::now();
        let mut decisions = Vec::new();
        {
            let mut table = catalog.heartbeats.lock();
            let present: HashSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
            table.retain(|name, _| present.contains(name.as_str()));
            for (name, health) in &nodes {
                let state = table.entry(name.clone()).or_insert(HeartbeatState {
                    last_seen: now,
                    heard: false,
                });
                let alive = now.duration_since(state.last_seen) <= dead_after;
                if !alive && *health != Some(CheckStatus::Critical) {
                    decisions.push((name.clone(), CheckStatus::Critical));
                } else if alive && state.heard && *health != Some(CheckStatus::Passing) {
                    decisions.push((name.clone(), CheckStatus::Passing));
                }
            }
        }
        for (node, new_status) in decisions {
            match catalog.set_node_health(&node, new_status).await {
                Ok(true) => tracing::info!(%node, status = %new_status, "node liveness changed"),
                Ok(false) => {}
                Err(e) => tracing::warn!(%node, error = %e, "cannot write node liveness"),
            }
        }
    }
}
