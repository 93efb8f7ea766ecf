//! Task placement: which node each new task of a service goes to.
//!
//! # Model
//! The input is a [`ClusterSnapshot`] (every node with its zone, attributes, capacity,
//! allocation and status, plus the service's existing tasks) and a [`PlacementRequest`]
//! (`count` tasks of one size, a [`Strategy`] and hard [`Constraint`]s). The output is a
//! [`PlacementPlan`]: for every slot `0..count` either a [`Placement`] on a node or a
//! [`PlacementFailure`] with a [`FailureReason`] whose `Display` names what is missing
//! ("no node in zone b has 512 MiB free (largest free: 256 MiB on node b-2)").
//!
//! A node can take a task when it is `Ready` (not draining, not down), satisfies every
//! attribute/zone/id constraint, is not already allocated beyond its capacity, has both the
//! CPU and memory free, and — with `distinct_node` — runs no task of the service yet. Among
//! those nodes:
//! - [`Strategy::Spread`] (the default, like ECS's default) takes the zone with the fewest
//!   tasks of the service (zones without a node that can take the task are skipped), then
//!   the node in that zone with the fewest tasks of the service, then the most free memory,
//!   then the smallest node id.
//! - [`Strategy::BinPack`] takes the node with the least free amount of the chosen resource
//!   that still fits the task, then the smallest node id.
//!
//! # Invariants (checked by the property tests)
//! - No node ever goes over capacity: a task is placed only where it fits, and each placement
//!   is subtracted from the node's free resources before the next one.
//! - Deterministic: the plan depends only on the snapshot's content, never on node input
//!   order, hash order or randomness (all orders are `BTreeSet`s over ids).
//! - Spread balance: with room everywhere and no existing tasks, after any number of
//!   placements the task counts of the zones that have eligible nodes differ by at most one.
//! - Every constraint is honoured by every placement.
//!
//! # Cost
//! [`PlacementState`] is built once per request in O(nodes · log nodes) and each placement is
//! O(log nodes): nodes live in per-zone ordered sets keyed by the spread order and are updated
//! incrementally (see `PlacementState`'s invariant). Scale-down uses the mirror image,
//! [`choose_tasks_to_stop`].

mod explain;
mod scale_down;
mod state;
mod types;

pub use scale_down::{choose_tasks_to_stop, StopCandidate};
pub use state::PlacementState;
pub use types::{
    ClusterSnapshot, Constraint, ConstraintOp, ConstraintTarget, ExistingTask, FailureReason, Node,
    NodeId, NodeStatus, Placement, PlacementError, PlacementFailure, PlacementPlan,
    PlacementRequest, Resource, Resources, Strategy,
};

/// Places `request.count` tasks on the cluster described by `snapshot`.
pub fn place(
    snapshot: &ClusterSnapshot,
    request: &PlacementRequest,
) -> Result<PlacementPlan, PlacementError> {
    let mut state = PlacementState::for_request(snapshot, request)?;
    Ok(state.place(request.count))
}
