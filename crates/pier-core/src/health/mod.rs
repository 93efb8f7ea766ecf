//! The per-check health state machine: the one health-check engine of pier. The node agent
//! runs it for task health checks and the catalog's check runner
//! (`pier_catalog::checks`) for Consul checks; both only do the IO (probing, writing to the
//! store, deregistering) and take every decision from here.
//!
//! # Model
//! Each check has [`CheckSettings`] and a [`CheckState`]. The agent runs script/HTTP/TCP
//! checks every `interval_ms` (see [`next_run_at_ms`]; a run over `timeout_ms` is reported as
//! [`CheckResult::timed_out`]), or receives updates for TTL checks, and folds every result in
//! with [`observe`]. Time-driven changes come from [`tick`]: a TTL check with no update for
//! `ttl_ms` expires to critical, and a check critical for `deregister_critical_after_ms`
//! reports [`HealthEvent::Deregister`] once.
//!
//! Status rules:
//! - `Unknown` until decided. `successes_before_passing` consecutive passing results make it
//!   `Passing`; `failures_before_critical` consecutive critical results make it `Critical`
//!   (ECS `retries`); a warning result makes it `Warning` at once and breaks both streaks.
//! - During `start_period_ms` after registration, critical results do not count, unless the
//!   check has already passed once (as ECS's `startPeriod`).
//! - TTL expiry goes straight to `Critical`: silence is not a flaky probe.
//! - Consul checks ([`CheckSettings::consul`]): one result decides, and a runner taking over
//!   a stored status starts from it with fresh timers ([`CheckState::resumed`]).
//! - What to write: [`needs_write`] (the status; for TTL checks also the note).
//!
//! # Invariants (checked by the tests)
//! - A [`Transition`] is returned exactly when the visible status changes; counters and
//!   output change silently, so the agent writes to the store only on transitions.
//! - `Deregister` is reported at most once per critical period.
//! - [`task_health`] folds a task's checks into the task health and `healthy_since_ms` the
//!   deployment controller consumes.

mod check;

pub use check::{
    needs_write, next_deadline_ms, next_run_at_ms, observe, task_health, tick, ttl_expires_at_ms,
    CheckResult, CheckSettings, CheckState, HealthEvent, HealthStatus, Transition,
};
