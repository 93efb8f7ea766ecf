//! Property tests of the scheduler: capacity, spread balance, determinism, constraints and
//! failure reporting.

use std::collections::{BTreeMap, BTreeSet};

use pier_core::placement::{
    choose_tasks_to_stop, place, ClusterSnapshot, Constraint, ExistingTask, Node, NodeStatus,
    PlacementPlan, PlacementRequest, Resource, Resources, StopCandidate, Strategy as Placing,
};
use proptest::prelude::*;

const ZONES: [&str; 4] = ["a", "b", "c", "d"];

fn arb_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        6 => Just(NodeStatus::Ready),
        1 => Just(NodeStatus::Draining),
        1 => Just(NodeStatus::Down),
    ]
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (
        0..ZONES.len(),
        arb_status(),
        0u64..8_000,
        0u64..16_384,
        0u64..9_000,
        0u64..17_000,
        prop_oneof![Just("ssd"), Just("hdd"), Just("nvme")],
        any::<bool>(),
    )
        .prop_map(move |(z, status, cpu, mem, acpu, amem, disk, has_gpu)| {
            let mut attributes = BTreeMap::new();
            attributes.insert("disk".to_owned(), disk.to_owned());
            if has_gpu {
                attributes.insert("gpu".to_owned(), "yes".to_owned());
            }
            Node {
                id: format!("n{i:03}"),
                zone: ZONES[z].to_owned(),
                attributes,
                capacity: Resources::new(cpu, mem),
                allocated: Resources::new(acpu.min(cpu + 500), amem.min(mem + 500)),
                status,
            }
        })
}

fn arb_nodes(max: usize) -> impl Strategy<Value = Vec<Node>> {
    (0..=max).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

fn arb_constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        Just(Constraint::attr_eq("disk", "ssd")),
        Just(Constraint::attr_ne("disk", "hdd")),
        Just(Constraint::attr_in("disk", &["ssd", "nvme"])),
        Just(Constraint::attr_eq("gpu", "yes")),
        Just(Constraint::zone_eq("b")),
        Just(Constraint::DistinctNode),
    ]
}

fn arb_strategy() -> impl Strategy<Value = Placing> {
    prop_oneof![
        Just(Placing::Spread),
        Just(Placing::BinPack {
            resource: Resource::Cpu
        }),
        Just(Placing::BinPack {
            resource: Resource::Memory
        }),
    ]
}

fn arb_case() -> impl Strategy<Value = (ClusterSnapshot, PlacementRequest)> {
    (
        arb_nodes(30),
        0u32..120,
        0u64..2_000,
        0u64..4_000,
        arb_strategy(),
        proptest::collection::vec(arb_constraint(), 0..3),
        proptest::collection::vec((0usize..40, 0usize..ZONES.len()), 0..20),
    )
        .prop_map(
            |(nodes, count, cpu, mem, strategy, constraints, existing)| {
                let existing = existing
                    .into_iter()
                    .map(|(n, z)| match nodes.get(n) {
                        Some(node) => ExistingTask {
                            node: node.id.clone(),
                            zone: node.zone.clone(),
                        },
                        None => ExistingTask {
                            node: format!("gone-{n}"),
                            zone: ZONES[z].to_owned(),
                        },
                    })
                    .collect();
                (
                    ClusterSnapshot { nodes, existing },
                    PlacementRequest {
                        count,
                        resources: Resources::new(cpu, mem),
                        strategy,
                        constraints,
                    },
                )
            },
        )
}

fn tasks_per_node(plan: &PlacementPlan) -> BTreeMap<String, u64> {
    let mut per_node = BTreeMap::new();
    for p in &plan.placements {
        *per_node.entry(p.node.clone()).or_default() += 1;
    }
    per_node
}

/// A node that could still take one more task after the plan.
fn can_still_take(
    node: &Node,
    placed_here: u64,
    existing_here: u64,
    request: &PlacementRequest,
) -> bool {
    let used = Resources::new(
        request.resources.cpu_millis * placed_here,
        request.resources.memory_mb * placed_here,
    );
    let free = node.free().saturating_sub(&used);
    node.is_eligible()
        && node.capacity.fits(&node.allocated)
        && free.fits(&request.resources)
        && request.constraints.iter().all(|c| match c {
            Constraint::DistinctNode => placed_here + existing_here == 0,
            other => other.matches_node(node),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn capacity_is_never_exceeded((snapshot, request) in arb_case()) {
        let plan = place(&snapshot, &request).unwrap();
        let per_node = tasks_per_node(&plan);
        for node in &snapshot.nodes {
            let n = per_node.get(&node.id).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            // Nodes already over capacity take nothing, not even zero-sized tasks.
            prop_assert!(node.capacity.fits(&node.allocated), "placed on over-committed {}", node.id);
            let cpu = node.allocated.cpu_millis + n * request.resources.cpu_millis;
            let mem = node.allocated.memory_mb + n * request.resources.memory_mb;
            prop_assert!(cpu <= node.capacity.cpu_millis, "cpu over on {}", node.id);
            prop_assert!(mem <= node.capacity.memory_mb, "memory over on {}", node.id);
        }
    }

    #[test]
    fn every_slot_is_answered_once_and_failures_are_real((snapshot, request) in arb_case()) {
        let plan = place(&snapshot, &request).unwrap();
        let mut slots: Vec<u32> = plan.placements.iter().map(|p| p.slot)
            .chain(plan.failures.iter().map(|f| f.slot)).collect();
        slots.sort_unstable();
        prop_assert_eq!(slots, (0..request.count).collect::<Vec<_>>());
        if !plan.failures.is_empty() {
            // A failure is only reported when no node can take one more task.
            let per_node = tasks_per_node(&plan);
            let mut existing: BTreeMap<&str, u64> = BTreeMap::new();
            for t in &snapshot.existing {
                *existing.entry(t.node.as_str()).or_default() += 1;
            }
            for node in &snapshot.nodes {
                let placed = per_node.get(&node.id).copied().unwrap_or(0);
                let ex = existing.get(node.id.as_str()).copied().unwrap_or(0);
                prop_assert!(!can_still_take(node, placed, ex, &request),
                    "failure reported but {} could take a task", node.id);
            }
            // Failures come after all placements and share one reason with text.
            let first_failure = plan.failures[0].slot;
            prop_assert!(plan.placements.iter().all(|p| p.slot < first_failure));
            for f in &plan.failures {
                prop_assert_eq!(&f.reason, &plan.failures[0].reason);
                prop_assert!(!f.reason.to_string().is_empty());
            }
        }
    }

    #[test]
    fn constraints_are_always_honoured((snapshot, request) in arb_case()) {
        let plan = place(&snapshot, &request).unwrap();
        let by_id: BTreeMap<&str, &Node> = snapshot.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        for p in &plan.placements {
            let node = by_id[p.node.as_str()];
            prop_assert!(node.is_eligible());
            for c in &request.constraints {
                prop_assert!(c.matches_node(node), "{} violates {}", node.id, c);
            }
        }
        if request.constraints.contains(&Constraint::DistinctNode) {
            let used: BTreeSet<&str> = snapshot.existing.iter().map(|t| t.node.as_str()).collect();
            let mut seen = BTreeSet::new();
            for p in &plan.placements {
                prop_assert!(!used.contains(p.node.as_str()));
                prop_assert!(seen.insert(p.node.clone()), "{} used twice", p.node);
            }
        }
    }

    #[test]
    fn plan_is_deterministic_and_independent_of_node_order(
        (snapshot, request) in arb_case(),
        rotate in 0usize..30,
        reverse in any::<bool>(),
    ) {
        let first = place(&snapshot, &request).unwrap();
        let again = place(&snapshot, &request).unwrap();
        prop_assert_eq!(&first, &again);
        let mut shuffled = snapshot.clone();
        if !shuffled.nodes.is_empty() {
            let k = rotate % shuffled.nodes.len();
            shuffled.nodes.rotate_left(k);
        }
        if reverse {
            shuffled.nodes.reverse();
            shuffled.existing.reverse();
        }
        let reordered = place(&shuffled, &request).unwrap();
        prop_assert_eq!(first, reordered);
    }

    /// Precise spread property: with ample capacity on every eligible node, no existing tasks
    /// and no constraints, after placing k tasks, max zone count − min zone count ≤ 1 among
    /// zones that have eligible nodes, and within a zone the node counts differ by ≤ 1.
    #[test]
    fn spread_is_within_one_of_even(
        zone_of_node in proptest::collection::vec((0usize..ZONES.len(), arb_status()), 1..40),
        k in 0u32..300,
    ) {
        let nodes: Vec<Node> = zone_of_node.iter().enumerate().map(|(i, (z, status))| Node {
            id: format!("n{i:03}"),
            zone: ZONES[*z].to_owned(),
            attributes: BTreeMap::new(),
            capacity: Resources::new(1_000_000, 1_000_000),
            allocated: Resources::new(i as u64 * 7, i as u64 * 13),
            status: *status,
        }).collect();
        let snapshot = ClusterSnapshot { nodes: nodes.clone(), existing: vec![] };
        let request = PlacementRequest { count: k, resources: Resources::new(100, 128), ..Default::default() };
        let plan = place(&snapshot, &request).unwrap();
        let eligible: Vec<&Node> = nodes.iter().filter(|n| n.is_eligible()).collect();
        if eligible.is_empty() {
            prop_assert_eq!(plan.failures.len(), k as usize);
            return Ok(());
        }
        prop_assert!(plan.failures.is_empty());
        let per_node = tasks_per_node(&plan);
        let mut per_zone: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for n in &eligible {
            per_zone.entry(n.zone.as_str()).or_default()
                .push(per_node.get(&n.id).copied().unwrap_or(0));
        }
        let zone_totals: Vec<u64> = per_zone.values().map(|v| v.iter().sum()).collect();
        let spread = zone_totals.iter().max().unwrap() - zone_totals.iter().min().unwrap();
        prop_assert!(spread <= 1, "zone counts {:?}", zone_totals);
        for (zone, counts) in &per_zone {
            let s = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            prop_assert!(s <= 1, "zone {} node counts {:?}", zone, counts);
        }
    }

    /// Existing imbalance is corrected first: new tasks go to the emptiest zones until the
    /// zones are level, then spread evenly.
    #[test]
    fn spread_levels_existing_imbalance(
        existing_per_zone in proptest::collection::vec(0u32..20, 3),
        k in 0u32..100,
    ) {
        let nodes: Vec<Node> = (0..9).map(|i| Node {
            id: format!("n{i}"),
            zone: ZONES[i % 3].to_owned(),
            attributes: BTreeMap::new(),
            capacity: Resources::new(1_000_000, 1_000_000),
            allocated: Resources::default(),
            status: NodeStatus::Ready,
        }).collect();
        let mut existing = vec![];
        for (z, &n) in existing_per_zone.iter().enumerate() {
            for _ in 0..n {
                existing.push(ExistingTask { node: format!("n{z}"), zone: ZONES[z].to_owned() });
            }
        }
        let snapshot = ClusterSnapshot { nodes, existing };
        let request = PlacementRequest { count: k, resources: Resources::new(1, 1), ..Default::default() };
        let plan = place(&snapshot, &request).unwrap();
        let mut totals: Vec<u64> = existing_per_zone.iter().map(|&n| n as u64).collect();
        let by_id: BTreeMap<String, usize> = (0..9).map(|i| (format!("n{i}"), i % 3)).collect();
        for p in &plan.placements {
            totals[by_id[&p.node]] += 1;
        }
        let before_max = *existing_per_zone.iter().max().unwrap() as u64;
        let max = *totals.iter().max().unwrap();
        let min = *totals.iter().min().unwrap();
        // Either still levelling (nothing went above the old maximum) or level within one.
        prop_assert!(max <= before_max || max - min <= 1, "totals {:?}", totals);
    }

    #[test]
    fn scale_down_keeps_balance_and_is_deterministic(
        tasks in proptest::collection::vec((0usize..3, 0usize..6, any::<bool>()), 0..80),
        count in 0usize..100,
    ) {
        let candidates: Vec<StopCandidate> = tasks.iter().enumerate().map(|(i, (z, n, pref))| StopCandidate {
            id: format!("t{i:03}"),
            node: format!("{}-{}", ZONES[*z], n),
            zone: ZONES[*z].to_owned(),
            preferred: *pref,
        }).collect();
        let chosen = choose_tasks_to_stop(&candidates, count);
        prop_assert_eq!(chosen.len(), count.min(candidates.len()));
        let unique: BTreeSet<&String> = chosen.iter().collect();
        prop_assert_eq!(unique.len(), chosen.len());
        let mut reversed = candidates.clone();
        reversed.reverse();
        prop_assert_eq!(&choose_tasks_to_stop(&reversed, count), &chosen);
        // Preferred tasks go first.
        let preferred: BTreeSet<&str> = candidates.iter().filter(|c| c.preferred).map(|c| c.id.as_str()).collect();
        let first_non_preferred = chosen.iter().position(|id| !preferred.contains(id.as_str()));
        if let Some(pos) = first_non_preferred {
            prop_assert!(chosen[pos..].iter().all(|id| !preferred.contains(id.as_str())));
            prop_assert_eq!(pos, preferred.len());
        }
        // Without preferences, the zone imbalance never grows.
        let plain: Vec<StopCandidate> = candidates.iter().cloned().map(|mut c| { c.preferred = false; c }).collect();
        let chosen = choose_tasks_to_stop(&plain, count);
        let imbalance = |removed: &BTreeSet<&str>| {
            let mut per_zone = BTreeMap::new();
            for z in ZONES.iter().take(3) { per_zone.insert(*z, 0i64); }
            for c in &plain {
                if !removed.contains(c.id.as_str()) { *per_zone.get_mut(c.zone.as_str()).unwrap() += 1; }
            }
            per_zone.values().max().unwrap() - per_zone.values().min().unwrap()
        };
        let mut removed = BTreeSet::new();
        let mut last = imbalance(&removed);
        for id in &chosen {
            removed.insert(id.as_str());
            let now = imbalance(&removed);
            prop_assert!(now <= last.max(1), "imbalance grew from {} to {}", last, now);
            last = now;
        }
    }
}
