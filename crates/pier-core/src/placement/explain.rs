//! Turns "no node can take the task" into the most useful single reason: the first filter, in
//! the order eligibility → constraints → distinct node → resources, that leaves no node.

use std::collections::BTreeSet;

use super::state::NodeEntry;
use super::types::{Constraint, FailureReason, NodeStatus, Resource, Resources};

pub(super) fn explain_failure<'a>(
    nodes: &[NodeEntry<'_>],
    request: &Resources,
    constraints: &[Constraint],
    unsatisfiable: Option<&Constraint>,
    zone_name: impl Fn(u32) -> &'a str,
) -> FailureReason {
    if nodes.is_empty() {
        return FailureReason::NoNodes;
    }
    let eligible: Vec<&NodeEntry<'_>> = nodes
        .iter()
        .filter(|e| e.status == NodeStatus::Ready)
        .collect();
    if eligible.is_empty() {
        let count = |s: NodeStatus| nodes.iter().filter(|e| e.status == s).count() as u32;
        return FailureReason::NoEligibleNodes {
            draining: count(NodeStatus::Draining),
            down: count(NodeStatus::Down),
        };
    }

    if let Some(constraint) = unsatisfiable {
        return FailureReason::ConstraintUnsatisfied {
            constraint: constraint.clone(),
        };
    }
    let satisfying: Vec<&NodeEntry<'_>> = eligible.into_iter().filter(|e| e.matches_all).collect();
    if satisfying.is_empty() {
        return FailureReason::ConstraintsConflict {
            constraints: constraints
                .iter()
                .filter(|c| !matches!(c, Constraint::DistinctNode))
                .cloned()
                .collect(),
        };
    }

    let candidates: Vec<&NodeEntry<'_>> = if constraints.contains(&Constraint::DistinctNode) {
        let free_of_service: Vec<&NodeEntry<'_>> = satisfying
            .iter()
            .copied()
            .filter(|e| e.service_tasks == 0)
            .collect();
        if free_of_service.is_empty() {
            return FailureReason::DistinctNodeExhausted {
                candidates: satisfying.len() as u32,
            };
        }
        free_of_service
    } else {
        satisfying
    };

    let total = candidates.len() as u32;
    let candidates: Vec<&NodeEntry<'_>> = candidates
        .into_iter()
        .filter(|e| !e.overcommitted)
        .collect();
    if candidates.is_empty() {
        return FailureReason::AllOvercommitted { candidates: total };
    }

    let zones: BTreeSet<u32> = candidates.iter().map(|e| e.zone).collect();
    let zone = match zones.iter().next() {
        Some(&z) if zones.len() == 1 => Some(zone_name(z).to_owned()),
        _ => None,
    };
    for resource in [Resource::Memory, Resource::Cpu] {
        let requested = request.get(resource);
        // Largest free amount; ties go to the smallest node id (candidates are in id order).
        let largest = candidates.iter().map(|e| (e.free.get(resource), e)).fold(
            None::<(u64, &&NodeEntry<'_>)>,
            |best, (amount, e)| match best {
                Some((b, _)) if b >= amount => best,
                _ => Some((amount, e)),
            },
        );
        if let Some((amount, entry)) = largest {
            if amount < requested {
                return FailureReason::InsufficientResource {
                    resource,
                    requested,
                    zone,
                    largest_free: Some((amount, entry.id.to_owned())),
                };
            }
        }
    }
    FailureReason::NoSingleNodeFits {
        requested: *request,
        zone,
    }
}
