//! Rolling deployments, zero-downtime stops, the circuit breaker and self-healing.
//!
//! # Model
//! A deployment replaces the tasks of a service with `desired_count` tasks of a target
//! revision. [`step`] is a pure, level-triggered function of a [`DeploymentSnapshot`] (the
//! deployment, its persisted [`DeploymentState`], every task of the service, the nodes that
//! are down) and `now_ms`; it returns a [`DeploymentPlan`]: [`Action`]s plus the state to
//! persist with them. Placement is not decided here: `StartTask { revision, count }` is handed
//! to the scheduler ([`crate::placement`]). Outside deployments, [`reconcile`] keeps the
//! service at its desired count. Both share the stop sequence of [`stop`].
//!
//! Each step:
//! 1. Active tasks that are dead, critical, on a draining or removed node or asked to stop
//!    begin the stop sequence. Tasks on a down node are *lost* (see `lost.rs`): not counted,
//!    so replacements start, but not stopped either, unless lost for longer than the
//!    lost-task timeout. Dead or critical tasks of the target revision (created since the
//!    deployment started) are counted by the circuit breaker, once per task, whether they
//!    failed before reaching `Running` (pull/create/start failure, exit while starting) or
//!    after (exited or turned critical after having run, even after being healthy — the case
//!    ECS's breaker misses).
//! 2. Breaker: at `failure_threshold` failures (default: half the desired count, clamped to
//!    3..=200, like ECS) the deployment is `Failed` with a reason such as "3 tasks of
//!    revision 7 failed: 2 health checks critical, 1 exited with code 1". With
//!    `auto_rollback` and a previous stable revision it is `RolledBack` instead and the plan
//!    carries `StartRollback`; the rollback deployment starts the proven revision's tasks at
//!    once (no `min_healthy_time`, no surge counting of tasks on their way out — no second
//!    canary phase, the Nomad #10882 complaint) and never rolls back again.
//! 3. More new tasks than desired (a lower count, or lost tasks back next to their
//!    replacements): the returned ones go, a healthy one only within the floor below.
//!    Old-revision tasks that are not running yet are replaced freely (they serve nothing);
//!    running ones are stopped at most `healthy(new) + healthy(old) − (desired −
//!    max_unavailable)` per step (those with unknown health first), so the healthy count
//!    never drops under the floor. A new task is healthy once `Running` and passing
//!    continuously for `min_healthy_time_ms`.
//! 4. New tasks start while tasks holding resources (anything not exited and not `Stopped`,
//!    draining and stopping tasks included, but not stopping tasks that never passed a check:
//!    they were never routed to and are on their way out) stay within `desired + max_surge`.
//! 5. The deployment `Succeeded` when `desired` new tasks are healthy and no old task is left
//!    running; it `Failed` (or rolls back) when for `healthy_deadline_ms` no new task became
//!    healthy and no old task finished stopping.
//!
//! # Invariants (checked by the simulation tests)
//! - The controller never takes the healthy serving count below `desired − max_unavailable`
//!   (tasks dying by themselves, or lost with their node, can, and are then replaced).
//! - A task whose node goes down keeps `desired = Run`; when its node comes back it is stopped
//!   only as a surplus, and a healthy one only within the floor, never a replacement that is
//!   still starting. A task lost for longer than the lost-task timeout is given up.
//! - Outside a rollback, tasks holding resources never exceed `desired + max_surge` because
//!   of a start the controller asked for (stopping tasks that never passed a check aside).
//! - Every stop is deregister → wait `drain_delay_ms` → stop signal → stopped (a task that
//!   never ran or never passed a check skips the wait, a dead one skips the signal).
//! - Each failed task is counted once; terminal deployments produce no actions.

mod action;
mod breaker;
mod controller;
mod liveness;
mod lost;
mod model;
mod reconcile;
pub mod stop;
mod task;

pub use action::{Action, StopReason};
pub use breaker::{default_failure_threshold, summarize_failures, FailureKind, FailureRecord};
pub use controller::step;
pub use liveness::{node_liveness, NodeLiveness};
pub use model::{
    Deployment, DeploymentCounts, DeploymentKind, DeploymentPlan, DeploymentSettings,
    DeploymentSnapshot, DeploymentState, DeploymentStatus, SettingsError,
    DEFAULT_LOST_TASK_TIMEOUT_MS,
};
pub use reconcile::{
    backoff_delay_ms, reconcile, NodeHeartbeat, ReconcilePlan, ReconcileSettings, RestartState,
    ServiceSnapshot,
};
pub use task::{
    DesiredState, ObservedState, Revision, StopPhase, TaskHealth, TaskId, TaskSnapshot,
};
