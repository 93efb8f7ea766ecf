use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::explain::explain_failure;
use super::types::{
    Constraint, ExistingTask, FailureReason, Node, NodeStatus, Placement, PlacementError,
    PlacementFailure, PlacementPlan, PlacementRequest, Resource, Resources, Strategy,
};

/// A node inside the placement state. `free` and `service_tasks` change as tasks are placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeEntry<'a> {
    pub(super) id: &'a str,
    pub(super) zone: u32,
    pub(super) status: NodeStatus,
    /// Satisfies every attribute/zone/id constraint (evaluated once at build time).
    pub(super) matches_all: bool,
    /// Allocated beyond capacity in some resource already: takes nothing, whatever the size.
    pub(super) overcommitted: bool,
    pub(super) free: Resources,
    /// Tasks of the service on this node: existing ones plus the ones placed so far.
    pub(super) service_tasks: u32,
}

/// Spread order inside a zone: fewest tasks of the service, then most free memory, then node
/// id (node indices follow node id order).
type SpreadKey = (u32, Reverse<u64>, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Index {
    Spread {
        /// `(tasks of the service in the zone, zone index)` for every zone that still has a
        /// node able to take a task.
        zone_order: BTreeSet<(u64, u32)>,
        /// Per zone, the nodes able to take one more task.
        zone_nodes: Vec<BTreeSet<SpreadKey>>,
    },
    BinPack {
        resource: Resource,
        /// `(free amount of resource, node index)` of the nodes able to take one more task.
        order: BTreeSet<(u64, u32)>,
    },
}

/// Placement state for one service and one task shape, built once from a snapshot and then
/// used for many placements.
///
/// Invariant: a node is in the index exactly when it is eligible, satisfies every attribute
/// constraint, has room for one more task of the request's size, and (with `distinct_node`)
/// runs no task of the service. Since placing only ever shrinks free resources and grows task
/// counts, a node that leaves the index never comes back, so the first element of the index
/// is always a valid choice and one placement costs a handful of `BTreeSet` operations,
/// O(log nodes), instead of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementState<'a> {
    nodes: Vec<NodeEntry<'a>>,
    zone_names: Vec<String>,
    zone_tasks: Vec<u64>,
    resources: Resources,
    constraints: Vec<Constraint>,
    /// The first constraint that no eligible node satisfies on its own, if any (for reasons).
    unsatisfiable: Option<Constraint>,
    distinct_node: bool,
    index: Index,
    next_slot: u32,
    /// Once nothing fits, nothing will fit later either (state only shrinks): the reason is
    /// computed once and reused for the remaining slots.
    exhausted: Option<FailureReason>,
}

impl<'a> PlacementState<'a> {
    /// Builds the state for placing tasks of `resources` size with `strategy` under
    /// `constraints`. Node input order does not matter: nodes are ordered by id.
    pub fn new(
        nodes: &'a [Node],
        existing: &[ExistingTask],
        resources: Resources,
        strategy: Strategy,
        constraints: &[Constraint],
    ) -> Result<Self, PlacementError> {
        if u32::try_from(nodes.len()).is_err() {
            return Err(PlacementError::TooManyNodes);
        }
        let mut sorted: Vec<&'a Node> = nodes.iter().collect();
        if !sorted.is_sorted_by(|a, b| a.id <= b.id) {
            sorted.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if let Some(pair) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::DuplicateNode(pair[0].id.clone()));
        }

        // Zones: every zone a node or an existing task mentions, in name order.
        let zone_set: BTreeSet<&str> = sorted
            .iter()
            .map(|n| n.zone.as_str())
            .chain(existing.iter().map(|t| t.zone.as_str()))
            .collect();
        let zone_names: Vec<String> = zone_set.iter().map(|z| (*z).to_owned()).collect();
        let zone_index: BTreeMap<&str, u32> = zone_set
            .iter()
            .enumerate()
            .map(|(i, z)| (*z, i as u32))
            .collect();

        let mut zone_tasks = vec![0u64; zone_names.len()];
        let mut node_tasks: BTreeMap<&str, u32> = BTreeMap::new();
        for task in existing {
            if let Some(&z) = zone_index.get(task.zone.as_str()) {
                zone_tasks[z as usize] += 1;
            }
            *node_tasks.entry(task.node.as_str()).or_default() += 1;
        }

        let matching: Vec<&Constraint> = constraints
            .iter()
            .filter(|c| !matches!(c, Constraint::DistinctNode))
            .collect();
        let unsatisfiable = matching
            .iter()
            .find(|c| !sorted.iter().any(|n| n.is_eligible() && c.matches_node(n)))
            .map(|c| (*c).clone());
        let entries: Vec<NodeEntry> = sorted
            .iter()
            .map(|n| NodeEntry {
                id: n.id.as_str(),
                zone: zone_index.get(n.zone.as_str()).copied().unwrap_or(0),
                status: n.status,
                matches_all: matching.iter().all(|c| c.matches_node(n)),
                overcommitted: !n.capacity.fits(&n.allocated),
                free: n.free(),
                service_tasks: node_tasks.get(n.id.as_str()).copied().unwrap_or(0),
            })
            .collect();

        let distinct_node = constraints.contains(&Constraint::DistinctNode);
        let mut state = PlacementState {
            nodes: entries,
            zone_tasks,
            resources,
            constraints: constraints.to_vec(),
            unsatisfiable,
            distinct_node,
            index: match strategy {
                Strategy::Spread => Index::Spread {
                    zone_order: BTreeSet::new(),
                    zone_nodes: vec![BTreeSet::new(); zone_names.len()],
                },
                Strategy::BinPack { resource } => Index::BinPack {
                    resource,
                    order: BTreeSet::new(),
                },
            },
            zone_names,
            next_slot: 0,
            exhausted: None,
        };
        state.build_index();
        Ok(state)
    }

    /// Builds the state for `request` over `snapshot` (the request's `count` is ignored).
    pub fn for_request(
        snapshot: &'a super::types::ClusterSnapshot,
        request: &PlacementRequest,
    ) -> Result<Self, PlacementError> {
        Self::new(
            &snapshot.nodes,
            &snapshot.existing,
            request.resources,
            request.strategy,
            &request.constraints,
        )
    }

    fn can_take(&self, entry: &NodeEntry) -> bool {
        entry.status == NodeStatus::Ready
            && entry.matches_all
            && !entry.overcommitted
            && entry.free.fits(&self.resources)
            && !(self.distinct_node && entry.service_tasks > 0)
    }

    fn build_index(&mut self) {
        let takers: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.can_take(&self.nodes[i as usize]))
            .collect();
        // Collecting into a BTreeSet sorts then bulk-builds, cheaper than one insert per node.
        match &mut self.index {
            Index::Spread {
                zone_order,
                zone_nodes,
            } => {
                let mut keys: Vec<Vec<SpreadKey>> = vec![Vec::new(); zone_nodes.len()];
                for i in takers {
                    let e = &self.nodes[i as usize];
                    keys[e.zone as usize].push(spread_key(e, i));
                }
                for (z, mut keys) in keys.into_iter().enumerate() {
                    // Pre-sorted input makes the set's own (stable) sort a linear pass.
                    keys.sort_unstable();
                    if !keys.is_empty() {
                        zone_order.insert((self.zone_tasks[z], z as u32));
                    }
                    zone_nodes[z] = keys.into_iter().collect();
                }
            }
            Index::BinPack { resource, order } => {
                let mut keys: Vec<(u64, u32)> = takers
                    .into_iter()
                    .map(|i| (self.nodes[i as usize].free.get(*resource), i))
                    .collect();
                keys.sort_unstable();
                *order = keys.into_iter().collect();
            }
        }
    }

    /// Places one task, returning the chosen node, or why no node can take it.
    pub fn place_one(&mut self) -> Result<&'a str, FailureReason> {
        match self.place_one_index() {
            Some(i) => Ok(self.nodes[i as usize].id),
            None => Err(self.failure_reason()),
        }
    }

    fn place_one_index(&mut self) -> Option<u32> {
        if self.exhausted.is_some() {
            return None;
        }
        let request = self.resources;
        let distinct = self.distinct_node;
        match &mut self.index {
            Index::Spread {
                zone_order,
                zone_nodes,
            } => {
                let (zone_count, z) = zone_order.pop_first()?;
                let set = &mut zone_nodes[z as usize];
                let key = set.pop_first()?;
                let i = key.2;
                let entry = &mut self.nodes[i as usize];
                entry.free = entry.free.saturating_sub(&request);
                entry.service_tasks += 1;
                if !distinct && entry.free.fits(&request) {
                    set.insert(spread_key(entry, i));
                }
                self.zone_tasks[z as usize] = zone_count + 1;
                if !set.is_empty() {
                    zone_order.insert((zone_count + 1, z));
                }
                Some(i)
            }
            Index::BinPack { resource, order } => {
                let (_, i) = order.pop_first()?;
                let entry = &mut self.nodes[i as usize];
                entry.free = entry.free.saturating_sub(&request);
                entry.service_tasks += 1;
                self.zone_tasks[entry.zone as usize] += 1;
                if !distinct && entry.free.fits(&request) {
                    order.insert((entry.free.get(*resource), i));
                }
                Some(i)
            }
        }
    }

    fn failure_reason(&mut self) -> FailureReason {
        if let Some(reason) = &self.exhausted {
            return reason.clone();
        }
        let reason = explain_failure(
            &self.nodes,
            &self.resources,
            &self.constraints,
            self.unsatisfiable.as_ref(),
            |z| self.zone_names[z as usize].as_str(),
        );
        self.exhausted = Some(reason.clone());
        reason
    }

    /// Places `count` tasks. Slots are numbered from where the previous call stopped, so a
    /// state used for several calls never reuses a slot number.
    pub fn place(&mut self, count: u32) -> PlacementPlan {
        let mut plan = PlacementPlan::default();
        for _ in 0..count {
            let slot = self.next_slot;
            self.next_slot = self.next_slot.saturating_add(1);
            match self.place_one_index() {
                Some(i) => plan.placements.push(Placement {
                    slot,
                    node: self.nodes[i as usize].id.to_owned(),
                }),
                None => plan.failures.push(PlacementFailure {
                    slot,
                    reason: self.failure_reason(),
                }),
            }
        }
        plan
    }

    /// Free resources of a node after the placements made so far.
    pub fn node_free(&self, node: &str) -> Option<Resources> {
        self.entry(node).map(|e| e.free)
    }

    /// Tasks of the service on a node (existing plus placed so far).
    pub fn service_tasks_on_node(&self, node: &str) -> Option<u32> {
        self.entry(node).map(|e| e.service_tasks)
    }

    /// Tasks of the service per zone (existing plus placed so far), in zone name order.
    pub fn service_tasks_per_zone(&self) -> Vec<(String, u64)> {
        self.zone_names
            .iter()
            .cloned()
            .zip(self.zone_tasks.iter().copied())
            .collect()
    }

    fn entry(&self, node: &str) -> Option<&NodeEntry<'a>> {
        self.nodes
            .binary_search_by(|e| e.id.cmp(node))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Node ids in the order the state uses (sorted).
    pub fn node_ids(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.nodes.iter().map(|e| e.id)
    }
}

fn spread_key(entry: &NodeEntry<'_>, index: u32) -> SpreadKey {
    (entry.service_tasks, Reverse(entry.free.memory_mb), index)
}
