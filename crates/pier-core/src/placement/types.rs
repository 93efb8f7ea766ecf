use std::collections::BTreeMap;
use std::fmt;

/// Identifier of a node (its unique name in the cluster).
pub type NodeId = String;

/// An amount of the two schedulable resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

impl Resources {
    pub const fn new(cpu_millis: u64, memory_mb: u64) -> Self {
        Self {
            cpu_millis,
            memory_mb,
        }
    }

    /// `true` when `request` fits into `self` (both resources).
    pub fn fits(&self, request: &Resources) -> bool {
        self.cpu_millis >= request.cpu_millis && self.memory_mb >= request.memory_mb
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
        }
    }

    pub fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Cpu => self.cpu_millis,
            Resource::Memory => self.memory_mb,
        }
    }
}

/// One of the schedulable resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    /// Formats an amount of this resource with its unit, as users read it.
    pub fn format_amount(self, amount: u64) -> String {
        match self {
            Resource::Cpu => format!("{amount} millicpu"),
            Resource::Memory => format!("{amount} MiB"),
        }
    }
}

/// Whether a node takes new work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeStatus {
    /// Heartbeating and accepting tasks.
    #[default]
    Ready,
    /// Administratively draining: keeps its tasks for now, takes no new ones.
    Draining,
    /// Missed heartbeats for longer than the down timeout (see
    /// [`crate::deployment::node_liveness`]).
    Down,
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub zone: String,
    pub attributes: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Sum of the resources of every task already on the node (all services).
    pub allocated: Resources,
    pub status: NodeStatus,
}

impl Node {
    pub fn is_eligible(&self) -> bool {
        self.status == NodeStatus::Ready
    }

    /// Free resources; a node already over-committed (allocated > capacity) has none.
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }
}

/// A task of the service being placed that keeps running. Spread counts these: pass the
/// tasks that will stay, not the ones being stopped or rescheduled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExistingTask {
    pub node: NodeId,
    pub zone: String,
}

/// How to choose among the nodes that satisfy the constraints and have room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// ECS's default: balance the service across zones (zone with the fewest tasks of the
    /// service first), then across the nodes of that zone (fewest tasks of the service, then
    /// most free memory, then node id).
    #[default]
    Spread,
    /// Fill nodes: the node with the least remaining `resource` that still fits the task
    /// (ties by node id).
    BinPack { resource: Resource },
}

/// What a placement constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConstraintTarget {
    /// A node attribute, written `attr.<key>`.
    Attribute(String),
    /// The node's zone, written `node.zone`.
    Zone,
    /// The node's id, written `node.id`.
    NodeId,
}

impl fmt::Display for ConstraintTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintTarget::Attribute(key) => write!(f, "attr.{key}"),
            ConstraintTarget::Zone => f.write_str("node.zone"),
            ConstraintTarget::NodeId => f.write_str("node.id"),
        }
    }
}

/// Comparison of a constraint target with value(s).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConstraintOp {
    /// The target exists and equals the value.
    Eq(String),
    /// The target is missing or differs from the value.
    NotEq(String),
    /// The target exists and equals one of the values.
    In(Vec<String>),
}

/// A hard placement constraint: a node that does not satisfy it never gets the task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Constraint {
    Match {
        target: ConstraintTarget,
        op: ConstraintOp,
    },
    /// At most one task of the service per node (existing tasks included).
    DistinctNode,
}

impl Constraint {
    /// `attr.<key> == value`.
    pub fn attr_eq(key: &str, value: &str) -> Self {
        Constraint::Match {
            target: ConstraintTarget::Attribute(key.to_owned()),
            op: ConstraintOp::Eq(value.to_owned()),
        }
    }

    /// `attr.<key> != value`.
    pub fn attr_ne(key: &str, value: &str) -> Self {
        Constraint::Match {
            target: ConstraintTarget::Attribute(key.to_owned()),
            op: ConstraintOp::NotEq(value.to_owned()),
        }
    }

    /// `attr.<key> in [values]`.
    pub fn attr_in(key: &str, values: &[&str]) -> Self {
        Constraint::Match {
            target: ConstraintTarget::Attribute(key.to_owned()),
            op: ConstraintOp::In(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    /// `node.zone == zone`.
    pub fn zone_eq(zone: &str) -> Self {
        Constraint::Match {
            target: ConstraintTarget::Zone,
            op: ConstraintOp::Eq(zone.to_owned()),
        }
    }

    /// Whether `node` satisfies this constraint, ignoring `DistinctNode` (which depends on
    /// where the service's tasks are, not on the node itself).
    pub fn matches_node(&self, node: &Node) -> bool {
        match self {
            Constraint::DistinctNode => true,
            Constraint::Match { target, op } => {
                let value: Option<&str> = match target {
                    ConstraintTarget::Attribute(key) => {
                        node.attributes.get(key).map(String::as_str)
                    }
                    ConstraintTarget::Zone => Some(node.zone.as_str()),
                    ConstraintTarget::NodeId => Some(node.id.as_str()),
                };
                match op {
                    ConstraintOp::Eq(want) => value == Some(want.as_str()),
                    ConstraintOp::NotEq(unwanted) => value != Some(unwanted.as_str()),
                    ConstraintOp::In(wanted) => {
                        value.is_some_and(|v| wanted.iter().any(|w| w == v))
                    }
                }
            }
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::DistinctNode => f.write_str("distinct_node"),
            Constraint::Match { target, op } => match op {
                ConstraintOp::Eq(v) => write!(f, "{target} == {v}"),
                ConstraintOp::NotEq(v) => write!(f, "{target} != {v}"),
                ConstraintOp::In(vs) => write!(f, "{target} in [{}]", vs.join(", ")),
            },
        }
    }
}

/// What to place: `count` identical tasks of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    pub count: u32,
    pub resources: Resources,
    pub strategy: Strategy,
    pub constraints: Vec<Constraint>,
}

/// The cluster as the scheduler needs it: every node and the service's existing tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub nodes: Vec<Node>,
    pub existing: Vec<ExistingTask>,
}

/// Task slot `slot` (0-based, in request order) goes to `node`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub slot: u32,
    pub node: NodeId,
}

/// Task slot `slot` could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementFailure {
    pub slot: u32,
    pub reason: FailureReason,
}

/// The outcome of a placement request. Every requested slot appears exactly once, either in
/// `placements` or in `failures`, each list in slot order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementPlan {
    pub placements: Vec<Placement>,
    pub failures: Vec<PlacementFailure>,
}

/// Why a task could not be placed. `Display` gives the sentence shown to users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The cluster has no nodes at all.
    NoNodes,
    /// No node is `Ready`.
    NoEligibleNodes { draining: u32, down: u32 },
    /// No eligible node satisfies this constraint on its own.
    ConstraintUnsatisfied { constraint: Constraint },
    /// Each constraint is satisfiable, but no eligible node satisfies all of them together.
    ConstraintsConflict { constraints: Vec<Constraint> },
    /// Every eligible node that satisfies the constraints already runs a task of the service.
    DistinctNodeExhausted { candidates: u32 },
    /// Every candidate node is already allocated beyond its capacity.
    AllOvercommitted { candidates: u32 },
    /// No candidate node has `requested` of `resource` free. `zone` is set when all
    /// candidates are in one zone.
    InsufficientResource {
        resource: Resource,
        requested: u64,
        zone: Option<String>,
        /// The largest free amount of `resource` on a candidate and the node that has it.
        largest_free: Option<(u64, NodeId)>,
    },
    /// Enough CPU exists on some candidate and enough memory on some candidate, but never
    /// both on the same node.
    NoSingleNodeFits {
        requested: Resources,
        zone: Option<String>,
    },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::NoNodes => f.write_str("the cluster has no nodes"),
            FailureReason::NoEligibleNodes { draining, down } => {
                write!(
                    f,
                    "no nodes are eligible ({draining} draining, {down} down)"
                )
            }
            FailureReason::ConstraintUnsatisfied { constraint } => {
                write!(f, "no eligible node satisfies constraint `{constraint}`")
            }
            FailureReason::ConstraintsConflict { constraints } => {
                let list: Vec<String> = constraints.iter().map(|c| format!("`{c}`")).collect();
                write!(
                    f,
                    "no eligible node satisfies all constraints together ({})",
                    list.join(", ")
                )
            }
            FailureReason::DistinctNodeExhausted { candidates } => write!(
                f,
                "all {candidates} eligible nodes that satisfy the constraints already run a task \
                 of this service (`distinct_node`)"
            ),
            FailureReason::AllOvercommitted { candidates } => write!(
                f,
                "all {candidates} eligible nodes that satisfy the constraints are already \
                 allocated beyond their capacity"
            ),
            FailureReason::InsufficientResource {
                resource,
                requested,
                zone,
                largest_free,
            } => {
                match zone {
                    Some(zone) => write!(f, "no node in zone {zone}")?,
                    None => f.write_str("no eligible node")?,
                }
                write!(f, " has {} free", resource.format_amount(*requested))?;
                if let Some((amount, node)) = largest_free {
                    write!(
                        f,
                        " (largest free: {} on node {node})",
                        resource.format_amount(*amount)
                    )?;
                }
                Ok(())
            }
            FailureReason::NoSingleNodeFits { requested, zone } => {
                match zone {
                    Some(zone) => write!(f, "no node in zone {zone}")?,
                    None => f.write_str("no eligible node")?,
                }
                write!(
                    f,
                    " has both {} millicpu and {} MiB free",
                    requested.cpu_millis, requested.memory_mb
                )
            }
        }
    }
}

/// Bad input to the scheduler.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("node id `{0}` appears more than once in the snapshot")]
    DuplicateNode(NodeId),
    #[error("the cluster has more than {max} nodes", max = u32::MAX)]
    TooManyNodes,
}
