//! Pure decision logic for Pier: task placement, rolling deployments, self-healing and
//! health checks.
//!
//! Nothing in this crate does IO, reads a clock, spawns a thread or allocates randomness.
//! Every entry point takes a snapshot of the relevant state (with `now_ms` when time matters)
//! and returns a plan or a decision as plain owned data. The orchestrator's IO loop loads the
//! snapshot from the replicated store, calls a function here, persists the returned state and
//! applies the returned actions; the node agent does the same with the health state machine.
//! Because the functions are deterministic, the same snapshot always yields the same plan, so a
//! leader that crashes half-way through applying a plan can simply recompute it.
//!
//! - [`placement`]: which node each new task goes to (spread across zones or bin-pack), and
//!   which tasks to stop on scale-down.
//! - [`deployment`]: the rolling-update controller with zero-downtime stop ordering and a
//!   circuit breaker, the self-healing reconciler with crash-loop back-off, node liveness.
//! - [`health`]: the per-check health state machine (retries, start period, TTL, deregister
//!   after critical).

pub mod deployment;
pub mod health;
pub mod placement;
