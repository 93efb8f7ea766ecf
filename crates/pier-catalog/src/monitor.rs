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

use crate::catalog::Catalog;
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
    let mut leading_term: Option<u64> = None;
    let mut last_held_warning: Option<std::time::Instant> = None;
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
            // Act only on what every earlier term committed (the leadership barrier).
            match catalog.store().leader_barrier().await {
                Ok(term) if term == status.term => {}
                _ => continue,
            }
            if catalog.begin_leadership(status.term) {
                tracing::info!(
                    term = status.term,
                    "node monitor active on the new leader; every node gets a fresh grace period"
                );
            }
            leading_term = Some(status.term);
        }
        let nodes = match catalog.monitored_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "node monitor cannot read nodes");
                continue;
            }
        };
        {
            let present: HashSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
            catalog
                .heartbeats
                .lock()
                .nodes
                .retain(|name, _| present.contains(name.as_str()));
        }
        let held = catalog.mass_silence_held(
            nodes
                .iter()
                .map(|(n, h)| (n.as_str(), *h == Some(CheckStatus::Critical))),
        );
        if held {
            warn_held(&mut last_held_warning, nodes.len());
        }
        let mut decisions = Vec::new();
        for (name, health) in &nodes {
            let beat = catalog.node_beat(name);
            let alive = held || !catalog.is_silent(beat);
            if !alive && *health != Some(CheckStatus::Critical) {
                decisions.push((name.clone(), CheckStatus::Critical));
            } else if alive && beat.heard && *health != Some(CheckStatus::Passing) {
                decisions.push((name.clone(), CheckStatus::Passing));
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

/// Says (at most every 10 s) that the detector holds its verdicts.
pub(crate) fn warn_held(last: &mut Option<std::time::Instant>, nodes: usize) {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    tracing::warn!(
        nodes,
        "more than half of the live nodes are silent at once: suspecting this server, not the nodes; none is marked down while it lasts"
    );
}

#[cfg(test)]
mod tests {
    use crate::catalog::mass_silence;

    #[test]
    fn mass_silence_needs_a_majority_of_at_least_three_nodes() {
        assert!(
            !mass_silence(2, 2),
            "two nodes: a silent node may just be dead"
        );
        assert!(!mass_silence(3, 1));
        assert!(mass_silence(3, 2));
        assert!(!mass_silence(10, 5), "half is not more than half");
        assert!(mass_silence(10, 6));
        assert!(!mass_silence(0, 0));
    }
}
