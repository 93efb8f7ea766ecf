//! Route ownership for pier services: a deploy claims the service file's `route` host before
//! anything is written (409 when another service owns it), and the leader keeps the claim
//! table in step with what exists — services' routes and catalog instances' route tags —
//! in a level-triggered loop ([`run`]): claims of services gone are released, unclaimed keys
//! go to their earliest claimant, and conflicts that cannot be refused any more (stored
//! before claims existed) are logged whenever they change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pier_catalog::routes::{route_keys, RouteConflict, ROUTE_CLAIMS};
use pier_catalog::CatalogError;
use pier_store::{Consistency, Table, WatchKey};

use crate::error::OrchestratorError;
use crate::world::World;
use crate::{tables, Shared};

/// How often a pass runs even without a change (a missed watch, a new leader).
const RESYNC: Duration = Duration::from_secs(5);
/// Least time between two passes: a burst of registrations (a rollout) costs one pass.
const MIN_GAP: Duration = Duration::from_millis(250);

/// The claim keys of a pier service's route.
pub(crate) fn service_route_keys(route: &str) -> BTreeSet<String> {
    route_keys(
        &[crate::catalog_sync::route_tag(route)],
        &Default::default(),
    )
}

/// Claims the route of a service about to be deployed.
pub(crate) async fn claim(
    shared: &Shared,
    service: &str,
    route: &str,
) -> Result<(), OrchestratorError> {
    match shared
        .catalog
        .claim_routes(service, &service_route_keys(route))
        .await
    {
        Ok(()) => Ok(()),
        Err(CatalogError::Conflict(msg)) => Err(OrchestratorError::Conflict(format!(
            "service file: `route` = {route:?}: {msg}"
        ))),
        Err(e) => Err(OrchestratorError::Catalog(e.to_string())),
    }
}

/// `(key, service, create index)` for the routes of every pier service (current and latest
/// revision), so a service between deploys keeps its claim.
fn service_claims(world: &World) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for (name, svc) in &world.services {
        let record = &svc.value.record;
        for revision in [record.revision, record.latest_revision] {
            if let Some(spec) = world.spec(name, revision) {
                for key in service_route_keys(&spec.route) {
                    out.push((key, name.clone(), svc.create_index));
                }
            }
        }
    }
    out
}

async fn pass(shared: &Shared) -> Result<Vec<RouteConflict>, OrchestratorError> {
    let world = World::load(&shared.store, Consistency::Default).await?;
    shared
        .catalog
        .reconcile_route_claims(&service_claims(&world))
        .await
        .map_err(|e| OrchestratorError::Catalog(e.to_string()))
}

/// The leader's claim reconcile loop; runs until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut reported: Vec<RouteConflict> = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let keys = [
            WatchKey::prefix(Table::SERVICES, ""),
            WatchKey::prefix(ROUTE_CLAIMS, ""),
            WatchKey::prefix(tables::SERVICES, ""),
        ];
        let mut watch = shared.store.watch(&keys);
        if shared.store.status().is_leader {
            match pass(&shared).await {
                Ok(conflicts) => {
                    if conflicts != reported {
                        for c in &conflicts {
                            tracing::warn!(route = %c.key, owner = %c.owner, refused = ?c.others, "route claimed by more than one service: only its owner gets traffic");
                        }
                        reported = conflicts;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "route claim pass failed; retrying"),
            }
        }
        tokio::select! {
            _ = async {
                watch.changed(RESYNC).await;
                tokio::time::sleep(MIN_GAP).await;
            } => {}
            _ = shutdown.changed() => return,
        }
    }
}
