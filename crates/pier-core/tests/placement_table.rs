//! Table tests of the scheduler: exact choices and the wording of failure reasons.

use std::collections::BTreeMap;

use pier_core::placement::{
    choose_tasks_to_stop, place, ClusterSnapshot, Constraint, ExistingTask, FailureReason, Node,
    NodeStatus, PlacementError, PlacementRequest, PlacementState, Resource, Resources,
    StopCandidate, Strategy,
};

fn node(id: &str, zone: &str, cpu: u64, mem: u64) -> Node {
    Node {
        id: id.to_owned(),
        zone: zone.to_owned(),
        attributes: BTreeMap::new(),
        capacity: Resources::new(cpu, mem),
        allocated: Resources::default(),
        status: NodeStatus::Ready,
    }
}

fn with_attr(mut n: Node, key: &str, value: &str) -> Node {
    n.attributes.insert(key.to_owned(), value.to_owned());
    n
}

fn with_status(mut n: Node, status: NodeStatus) -> Node {
    n.status = status;
    n
}

fn request(count: u32, cpu: u64, mem: u64) -> PlacementRequest {
    PlacementRequest {
        count,
        resources: Resources::new(cpu, mem),
        ..Default::default()
    }
}

fn nodes_of(plan: &pier_core::placement::PlacementPlan) -> Vec<&str> {
    plan.placements.iter().map(|p| p.node.as_str()).collect()
}

fn first_failure(snapshot: &ClusterSnapshot, req: &PlacementRequest) -> String {
    let plan = place(snapshot, req).unwrap();
    plan.failures
        .first()
        .map(|f| f.reason.to_string())
        .unwrap_or_default()
}

#[test]
fn spread_alternates_zones_then_nodes() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            node("a-1", "a", 4000, 4096),
            node("a-2", "a", 4000, 8192),
            node("b-1", "b", 4000, 4096),
        ],
        existing: vec![],
    };
    let plan = place(&snapshot, &request(4, 100, 100)).unwrap();
    // Zone a first (tie on zone counts → name), its node with most free memory (a-2); then
    // zone b; then zone a again, where a-1 now has fewer tasks.
    assert_eq!(nodes_of(&plan), vec!["a-2", "b-1", "a-1", "b-1"]);
}

#[test]
fn spread_counts_existing_tasks() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 4000, 4096), node("b-1", "b", 4000, 4096)],
        existing: vec![
            ExistingTask {
                node: "a-1".into(),
                zone: "a".into(),
            },
            ExistingTask {
                node: "a-1".into(),
                zone: "a".into(),
            },
        ],
    };
    let plan = place(&snapshot, &request(3, 100, 100)).unwrap();
    assert_eq!(nodes_of(&plan), vec!["b-1", "b-1", "a-1"]);
}

#[test]
fn spread_skips_a_full_zone() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 4000, 4096), node("b-1", "b", 4000, 256)],
        existing: vec![],
    };
    let plan = place(&snapshot, &request(2, 100, 512)).unwrap();
    assert_eq!(nodes_of(&plan), vec!["a-1", "a-1"]);
}

#[test]
fn binpack_fills_the_fullest_node_that_fits() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            node("n1", "a", 4000, 2048),
            node("n2", "a", 4000, 1024),
            node("n3", "b", 4000, 600),
        ],
        existing: vec![],
    };
    let req = PlacementRequest {
        strategy: Strategy::BinPack {
            resource: Resource::Memory,
        },
        ..request(5, 10, 512)
    };
    let plan = place(&snapshot, &req).unwrap();
    // n3 fits one (600), then n2 twice (1024), then n1.
    assert_eq!(nodes_of(&plan), vec!["n3", "n2", "n2", "n1", "n1"]);
}

#[test]
fn reason_names_the_zone_and_the_largest_free_memory() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            node("a-1", "a", 4000, 4096),
            node("b-1", "b", 4000, 128),
            node("b-2", "b", 4000, 256),
        ],
        existing: vec![],
    };
    let req = PlacementRequest {
        constraints: vec![Constraint::zone_eq("b")],
        ..request(1, 100, 512)
    };
    assert_eq!(
        first_failure(&snapshot, &req),
        "no node in zone b has 512 MiB free (largest free: 256 MiB on node b-2)"
    );
}

#[test]
fn reason_for_cpu_across_zones() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 1000, 4096), node("b-1", "b", 500, 4096)],
        existing: vec![],
    };
    assert_eq!(
        first_failure(&snapshot, &request(1, 1500, 10)),
        "no eligible node has 1500 millicpu free (largest free: 1000 millicpu on node a-1)"
    );
}

#[test]
fn reason_when_cpu_and_memory_are_on_different_nodes() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 1000, 100), node("b-1", "b", 100, 1000)],
        existing: vec![],
    };
    assert_eq!(
        first_failure(&snapshot, &request(1, 500, 500)),
        "no eligible node has both 500 millicpu and 500 MiB free"
    );
}

#[test]
fn reason_for_unsatisfiable_constraint() {
    let snapshot = ClusterSnapshot {
        nodes: vec![with_attr(node("a-1", "a", 1000, 1000), "disk", "hdd")],
        existing: vec![],
    };
    let req = PlacementRequest {
        constraints: vec![Constraint::attr_eq("disk", "ssd")],
        ..request(1, 1, 1)
    };
    assert_eq!(
        first_failure(&snapshot, &req),
        "no eligible node satisfies constraint `attr.disk == ssd`"
    );
    let req = PlacementRequest {
        constraints: vec![Constraint::attr_in("disk", &["ssd", "nvme"])],
        ..request(1, 1, 1)
    };
    assert_eq!(
        first_failure(&snapshot, &req),
        "no eligible node satisfies constraint `attr.disk in [ssd, nvme]`"
    );
}

#[test]
fn reason_for_conflicting_constraints() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            with_attr(node("a-1", "a", 1000, 1000), "disk", "ssd"),
            node("b-1", "b", 1000, 1000),
        ],
        existing: vec![],
    };
    let req = PlacementRequest {
        constraints: vec![Constraint::attr_eq("disk", "ssd"), Constraint::zone_eq("b")],
        ..request(1, 1, 1)
    };
    assert_eq!(
        first_failure(&snapshot, &req),
        "no eligible node satisfies all constraints together (`attr.disk == ssd`, `node.zone == b`)"
    );
}

#[test]
fn reason_when_no_node_is_eligible() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            with_status(node("a-1", "a", 1000, 1000), NodeStatus::Draining),
            with_status(node("a-2", "a", 1000, 1000), NodeStatus::Draining),
            with_status(node("b-1", "b", 1000, 1000), NodeStatus::Down),
        ],
        existing: vec![],
    };
    assert_eq!(
        first_failure(&snapshot, &request(1, 1, 1)),
        "no nodes are eligible (2 draining, 1 down)"
    );
    assert_eq!(
        first_failure(&ClusterSnapshot::default(), &request(1, 1, 1)),
        "the cluster has no nodes"
    );
}

#[test]
fn distinct_node_places_one_per_node_then_explains() {
    let snapshot = ClusterSnapshot {
        nodes: vec![
            node("a-1", "a", 1000, 1000),
            node("a-2", "a", 1000, 1000),
            node("b-1", "b", 1000, 1000),
        ],
        existing: vec![ExistingTask {
            node: "a-2".into(),
            zone: "a".into(),
        }],
    };
    let req = PlacementRequest {
        constraints: vec![Constraint::DistinctNode],
        ..request(3, 1, 1)
    };
    let plan = place(&snapshot, &req).unwrap();
    assert_eq!(nodes_of(&plan), vec!["b-1", "a-1"]);
    assert_eq!(plan.failures.len(), 1);
    assert_eq!(plan.failures[0].slot, 2);
    assert_eq!(
        plan.failures[0].reason,
        FailureReason::DistinctNodeExhausted { candidates: 3 }
    );
    assert_eq!(
        plan.failures[0].reason.to_string(),
        "all 3 eligible nodes that satisfy the constraints already run a task of this service (`distinct_node`)"
    );
}

#[test]
fn capacity_runs_out_mid_request() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 1000, 1024), node("b-1", "b", 1000, 1024)],
        existing: vec![],
    };
    let plan = place(&snapshot, &request(5, 100, 512)).unwrap();
    assert_eq!(plan.placements.len(), 4);
    assert_eq!(
        plan.failures.iter().map(|f| f.slot).collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(
        plan.failures[0].reason.to_string(),
        "no eligible node has 512 MiB free (largest free: 0 MiB on node a-1)"
    );
}

#[test]
fn duplicate_node_ids_are_rejected() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("a-1", "a", 1, 1), node("a-1", "b", 1, 1)],
        existing: vec![],
    };
    assert_eq!(
        place(&snapshot, &request(1, 1, 1)),
        Err(PlacementError::DuplicateNode("a-1".into()))
    );
}

#[test]
fn state_continues_slot_numbers_and_tracks_free() {
    let nodes = vec![node("a-1", "a", 1000, 1000)];
    let mut state =
        PlacementState::new(&nodes, &[], Resources::new(100, 100), Strategy::Spread, &[]).unwrap();
    let first = state.place(2);
    let second = state.place(1);
    assert_eq!(second.placements[0].slot, 2);
    assert_eq!(first.placements.len(), 2);
    assert_eq!(state.node_free("a-1"), Some(Resources::new(700, 700)));
    assert_eq!(state.service_tasks_on_node("a-1"), Some(3));
    assert_eq!(state.service_tasks_per_zone(), vec![("a".to_owned(), 3)]);
}

#[test]
fn scale_down_takes_from_the_biggest_zone_and_node() {
    let t = |id: &str, node: &str, zone: &str| StopCandidate {
        id: id.into(),
        node: node.into(),
        zone: zone.into(),
        preferred: false,
    };
    let tasks = vec![
        t("t1", "a-1", "a"),
        t("t2", "a-1", "a"),
        t("t3", "a-2", "a"),
        t("t4", "b-1", "b"),
        t("t5", "b-1", "b"),
        t("t6", "c-1", "c"),
    ];
    // a has 3: its fullest node a-1 loses its greatest id t2; then a and b tie at 2 → a
    // (name), a-1 and a-2 tie at 1 → a-1; then b.
    assert_eq!(choose_tasks_to_stop(&tasks, 3), vec!["t2", "t1", "t5"]);
    let mut with_pref = tasks.clone();
    with_pref[5].preferred = true;
    assert_eq!(choose_tasks_to_stop(&with_pref, 2), vec!["t6", "t2"]);
}
