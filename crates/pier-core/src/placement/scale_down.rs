//! Choosing which tasks to stop when a service has too many, keeping the spread balanced.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::types::NodeId;

/// A running task that could be stopped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StopCandidate {
    pub id: String,
    pub node: NodeId,
    pub zone: String,
    /// Stopped before any non-preferred task, e.g. tasks that are not healthy yet, or are on a
    /// draining node. The balancing rule applies within each group.
    pub preferred: bool,
}

/// Picks `count` tasks to stop (all of them if fewer exist), in stop order.
///
/// Each pick takes the zone with the most remaining tasks of the service, then the node in it
/// with the most remaining tasks, then the task with the greatest id on that node (ties: zone
/// name, then node id, ascending). Counts include every task (preferred or not), so stopping
/// preferred tasks first still lands as evenly as it can. Deterministic and independent of
/// input order; O(count · log tasks).
pub fn choose_tasks_to_stop(tasks: &[StopCandidate], count: usize) -> Vec<String> {
    let mut sorted: Vec<&StopCandidate> = tasks.iter().collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.id == b.id);

    let mut zone_totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut node_totals: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &sorted {
        *zone_totals.entry(t.zone.as_str()).or_default() += 1;
        *node_totals.entry(t.node.as_str()).or_default() += 1;
    }

    let mut chosen = Vec::with_capacity(count.min(sorted.len()));
    for preferred in [true, false] {
        if chosen.len() >= count {
            break;
        }
        let pool: Vec<&StopCandidate> = sorted
            .iter()
            .copied()
            .filter(|t| t.preferred == preferred)
            .collect();
        let mut picker = Picker::new(&pool, &zone_totals, &node_totals);
        while chosen.len() < count {
            let Some(task) = picker.pick() else { break };
            *zone_totals.entry(task.zone.as_str()).or_default() -= 1;
            *node_totals.entry(task.node.as_str()).or_default() -= 1;
            chosen.push(task.id.clone());
        }
    }
    chosen
}

/// Balanced picking over one pool of candidates. Keys use the totals over all tasks.
struct Picker<'a> {
    /// `(Reverse(zone total), zone)` for zones that still have pool tasks.
    zones: BTreeSet<(Reverse<u64>, &'a str)>,
    /// Per zone: `(Reverse(node total), node)` for nodes that still have pool tasks.
    nodes: BTreeMap<&'a str, BTreeSet<(Reverse<u64>, &'a str)>>,
    /// Per node: pool tasks in id order (popped from the back).
    tasks: BTreeMap<&'a str, Vec<&'a StopCandidate>>,
}

impl<'a> Picker<'a> {
    fn new(
        pool: &[&'a StopCandidate],
        zone_totals: &BTreeMap<&'a str, u64>,
        node_totals: &BTreeMap<&'a str, u64>,
    ) -> Self {
        let mut tasks: BTreeMap<&str, Vec<&StopCandidate>> = BTreeMap::new();
        let mut node_zone: BTreeMap<&str, &str> = BTreeMap::new();
        for t in pool {
            // The pool is in id order already.
            tasks.entry(t.node.as_str()).or_default().push(t);
            node_zone.entry(t.node.as_str()).or_insert(t.zone.as_str());
        }
        let mut nodes: BTreeMap<&str, BTreeSet<(Reverse<u64>, &str)>> = BTreeMap::new();
        for (&node, &zone) in &node_zone {
            let total = node_totals.get(node).copied().unwrap_or(0);
            nodes
                .entry(zone)
                .or_default()
                .insert((Reverse(total), node));
        }
        let zones = nodes
            .keys()
            .map(|&z| (Reverse(zone_totals.get(z).copied().unwrap_or(0)), z))
            .collect();
        Picker {
            zones,
            nodes,
            tasks,
        }
    }

    fn pick(&mut self) -> Option<&'a StopCandidate> {
        let (Reverse(zone_total), zone) = self.zones.pop_first()?;
        let zone_nodes = self.nodes.get_mut(zone)?;
        let (Reverse(node_total), node) = zone_nodes.pop_first()?;
        let node_tasks = self.tasks.get_mut(node)?;
        let task = node_tasks.pop()?;

        let node_total = node_total.saturating_sub(1);
        let zone_total = zone_total.saturating_sub(1);
        if !node_tasks.is_empty() {
            zone_nodes.insert((Reverse(node_total), node));
        }
        if !zone_nodes.is_empty() {
            self.zones.insert((Reverse(zone_total), zone));
        }
        Some(task)
    }
}
