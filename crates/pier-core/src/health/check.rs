use std::fmt;

use crate::deployment::TaskHealth;

/// Settings of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    /// Time between runs of a script/HTTP/TCP check (unused by TTL checks).
    pub interval_ms: u64,
    /// A run taking longer is reported critical by the runner (see
    /// [`CheckResult::timed_out`]).
    pub timeout_ms: u64,
    /// Consecutive critical results before the status turns critical (ECS `retries`).
    pub failures_before_critical: u32,
    /// Consecutive passing results before the status turns passing.
    pub successes_before_passing: u32,
    /// Grace after registration: critical results in it do not count until the check has
    /// passed once (ECS `startPeriod`).
    pub start_period_ms: u64,
    /// Makes this a TTL check: the application reports its own status, and no report for this
    /// long turns the check critical.
    pub ttl_ms: Option<u64>,
    /// Report [`HealthEvent::Deregister`] once critical for this long (Consul's
    /// `DeregisterCriticalServiceAfter`).
    pub deregister_critical_after_ms: Option<u64>,
}

impl Default for CheckSettings {
    /// ECS's container health check defaults: every 30 s, 5 s timeout, 3 retries.
    fn default() -> Self {
        Self {
            interval_ms: 30_000,
            timeout_ms: 5_000,
            failures_before_critical: 3,
            successes_before_passing: 1,
            start_period_ms: 0,
            ttl_ms: None,
            deregister_critical_after_ms: None,
        }
    }
}

impl CheckSettings {
    /// A Consul check as the catalog runs it: one result decides (Consul's
    /// `SuccessBeforePassing` and `FailuresBeforeCritical` default to 0, which behaves as 1),
    /// no start period.
    pub fn consul(
        interval_ms: u64,
        timeout_ms: u64,
        ttl_ms: Option<u64>,
        deregister_critical_after_ms: Option<u64>,
    ) -> Self {
        Self {
            interval_ms,
            timeout_ms,
            failures_before_critical: 1,
            successes_before_passing: 1,
            start_period_ms: 0,
            ttl_ms,
            deregister_critical_after_ms,
        }
    }
}

/// The externally visible status of a check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Registered, not decided yet (start period, or not enough results).
    #[default]
    Unknown,
    Passing,
    /// Degraded but serving: routed to, like passing.
    Warning,
    Critical,
}

impl HealthStatus {
    /// The task-level health this status contributes.
    pub fn task_health(self) -> TaskHealth {
        match self {
            HealthStatus::Unknown => TaskHealth::Unknown,
            HealthStatus::Passing | HealthStatus::Warning => TaskHealth::Passing,
            HealthStatus::Critical => TaskHealth::Critical,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        })
    }
}

/// The result of one run of a check, or one update of a TTL check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckResult {
    Passing { output: String },
    Warning { output: String },
    Critical { output: String },
}

impl CheckResult {
    pub fn passing() -> Self {
        CheckResult::Passing {
            output: String::new(),
        }
    }

    pub fn warning(output: impl Into<String>) -> Self {
        CheckResult::Warning {
            output: output.into(),
        }
    }

    pub fn critical(output: impl Into<String>) -> Self {
        CheckResult::Critical {
            output: output.into(),
        }
    }

    /// What the runner reports when a run exceeds `timeout_ms`.
    pub fn timed_out(timeout_ms: u64) -> Self {
        CheckResult::Critical {
            output: format!("timed out after {timeout_ms} ms"),
        }
    }

    fn output(&self) -> &str {
        match self {
            CheckResult::Passing { output }
            | CheckResult::Warning { output }
            | CheckResult::Critical { output } => output,
        }
    }
}

/// The state of one check, kept by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckState {
    pub status: HealthStatus,
    /// Output of the latest result (only written to the store with a transition).
    pub output: String,
    pub registered_at_ms: u64,
    /// When `status` last changed.
    pub status_since_ms: u64,
    /// Start of the current uninterrupted healthy period (passing or warning, both routed).
    pub healthy_since_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Has been `Passing` at least once; ends the start period early (as in ECS).
    pub has_passed: bool,
    pub last_result_ms: Option<u64>,
    /// `Deregister` was reported for the current critical period.
    pub deregister_reported: bool,
}

impl CheckState {
    /// A check registered at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            status: HealthStatus::Unknown,
            output: String::new(),
            registered_at_ms: now_ms,
            status_since_ms: now_ms,
            healthy_since_ms: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            has_passed: false,
            last_result_ms: None,
            deregister_reported: false,
        }
    }

    /// A check whose status is already decided (a Consul check's stored status: `critical`
    /// at registration unless the registration gave one), taken over at `now_ms` by a runner
    /// that just started. Its timers start afresh: a TTL check has `ttl_ms` from now for its
    /// next update, and a critical check counts its critical period from now, since the time
    /// it really turned critical is not known to this runner.
    pub fn resumed(status: HealthStatus, output: impl Into<String>, now_ms: u64) -> Self {
        let healthy = matches!(status, HealthStatus::Passing | HealthStatus::Warning);
        Self {
            status,
            output: output.into(),
            has_passed: status == HealthStatus::Passing,
            healthy_since_ms: healthy.then_some(now_ms),
            ..Self::new(now_ms)
        }
    }

    pub fn critical_since_ms(&self) -> Option<u64> {
        (self.status == HealthStatus::Critical).then_some(self.status_since_ms)
    }

    /// Failures do not count yet: inside the start period and never passed.
    pub fn in_start_period(&self, settings: &CheckSettings, now_ms: u64) -> bool {
        !self.has_passed
            && now_ms
                < self
                    .registered_at_ms
                    .saturating_add(settings.start_period_ms)
    }
}

/// A change of the externally visible status: the only thing the agent writes to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthStatus,
    pub to: HealthStatus,
    pub output: String,
    pub at_ms: u64,
}

/// What [`tick`] can report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    Transition(Transition),
    /// Critical for `deregister_critical_after_ms`: remove the service instance. Reported
    /// once per critical period.
    Deregister {
        critical_since_ms: u64,
    },
}

fn set_status(
    state: &mut CheckState,
    to: HealthStatus,
    output: &str,
    now_ms: u64,
) -> Option<Transition> {
    if state.status == to {
        return None;
    }
    let from = state.status;
    state.status = to;
    state.status_since_ms = now_ms;
    state.deregister_reported = false;
    if to == HealthStatus::Passing {
        state.has_passed = true;
    }
    let healthy = |s: HealthStatus| matches!(s, HealthStatus::Passing | HealthStatus::Warning);
    match (healthy(from), healthy(to)) {
        (false, true) => state.healthy_since_ms = Some(now_ms),
        (true, false) => state.healthy_since_ms = None,
        _ => {}
    }
    Some(Transition {
        from,
        to,
        output: output.to_owned(),
        at_ms: now_ms,
    })
}

/// Folds one result into the state. A transition is returned only when the visible status
/// changes; counters and output change silently.
pub fn observe(
    settings: &CheckSettings,
    state: &CheckState,
    result: CheckResult,
    now_ms: u64,
) -> (CheckState, Option<Transition>) {
    let mut next = state.clone();
    next.last_result_ms = Some(now_ms);
    next.output = result.output().to_owned();
    let transition = match &result {
        CheckResult::Passing { output } => {
            next.consecutive_failures = 0;
            next.consecutive_successes = next.consecutive_successes.saturating_add(1);
            if next.consecutive_successes >= settings.successes_before_passing.max(1) {
                set_status(&mut next, HealthStatus::Passing, output, now_ms)
            } else {
                None
            }
        }
        CheckResult::Warning { output } => {
            next.consecutive_failures = 0;
            next.consecutive_successes = 0;
            set_status(&mut next, HealthStatus::Warning, output, now_ms)
        }
        CheckResult::Critical { output } => {
            next.consecutive_successes = 0;
            if next.in_start_period(settings, now_ms) {
                None
            } else {
                next.consecutive_failures = next.consecutive_failures.saturating_add(1);
                if next.consecutive_failures >= settings.failures_before_critical.max(1) {
                    set_status(&mut next, HealthStatus::Critical, output, now_ms)
                } else {
                    None
                }
            }
        }
    };
    (next, transition)
}

/// Whether a runner that last wrote `written_status` / `written_output` to the store must
/// write `state` now. The status is what everyone sees; the output goes with it. A TTL
/// check's output is the application's own note (Consul's `/v1/agent/check/update` with a
/// `Note`), so for TTL checks a new output alone is also worth a write. A probe's output
/// (timings, body excerpts) changes on every run and is refreshed with transitions only.
///
/// Comparing with what was *written* rather than reacting to a [`Transition`] once makes a
/// failed write retried at the runner's next evaluation.
pub fn needs_write(
    settings: &CheckSettings,
    state: &CheckState,
    written_status: HealthStatus,
    written_output: &str,
) -> bool {
    state.status != written_status || (settings.ttl_ms.is_some() && state.output != written_output)
}

/// When a TTL check expires if nothing is reported: TTL after the last report, or, before
/// the first report, TTL after the end of the start period.
pub fn ttl_expires_at_ms(settings: &CheckSettings, state: &CheckState) -> Option<u64> {
    let ttl = settings.ttl_ms?;
    let base = state.last_result_ms.unwrap_or_else(|| {
        state
            .registered_at_ms
            .saturating_add(settings.start_period_ms)
    });
    Some(base.saturating_add(ttl))
}

/// Time-driven changes: TTL expiry (straight to critical, no retries: silence is not a flaky
/// probe) and deregistration after a long critical period. Call on a timer, at the latest at
/// [`next_deadline_ms`].
pub fn tick(
    settings: &CheckSettings,
    state: &CheckState,
    now_ms: u64,
) -> (CheckState, Vec<HealthEvent>) {
    let mut next = state.clone();
    let mut events = Vec::new();
    if let (Some(ttl), Some(expires)) = (settings.ttl_ms, ttl_expires_at_ms(settings, state)) {
        if now_ms > expires && next.status != HealthStatus::Critical {
            let output = format!("TTL expired: no update for {ttl} ms");
            next.output = output.clone();
            next.consecutive_successes = 0;
            next.consecutive_failures = settings.failures_before_critical.max(1);
            if let Some(t) = set_status(&mut next, HealthStatus::Critical, &output, expires) {
                events.push(HealthEvent::Transition(t));
            }
        }
    }
    if let (Some(after), Some(since)) = (
        settings.deregister_critical_after_ms,
        next.critical_since_ms(),
    ) {
        if !next.deregister_reported && now_ms >= since.saturating_add(after) {
            next.deregister_reported = true;
            events.push(HealthEvent::Deregister {
                critical_since_ms: since,
            });
        }
    }
    (next, events)
}

/// The earliest time at which [`tick`] could report something, if any.
pub fn next_deadline_ms(settings: &CheckSettings, state: &CheckState) -> Option<u64> {
    let ttl = ttl_expires_at_ms(settings, state)
        .filter(|_| state.status != HealthStatus::Critical)
        .map(|t| t.saturating_add(1));
    let deregister = match (
        settings.deregister_critical_after_ms,
        state.critical_since_ms(),
    ) {
        (Some(after), Some(since)) if !state.deregister_reported => {
            Some(since.saturating_add(after))
        }
        _ => None,
    };
    match (ttl, deregister) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When a script/HTTP/TCP check should run next: one interval after the last result, or at
/// registration for the first run.
pub fn next_run_at_ms(settings: &CheckSettings, state: &CheckState) -> u64 {
    match state.last_result_ms {
        Some(last) => last.saturating_add(settings.interval_ms),
        None => state.registered_at_ms,
    }
}

/// A task's health from its checks: critical if any is critical, passing when all pass (or
/// warn), unknown otherwise. `healthy_since_ms` is when the last check joined the healthy set.
/// A task without checks is passing since `running_since_ms`.
pub fn task_health(checks: &[&CheckState], running_since_ms: u64) -> (TaskHealth, Option<u64>) {
    if checks.is_empty() {
        return (TaskHealth::Passing, Some(running_since_ms));
    }
    if checks.iter().any(|c| c.status == HealthStatus::Critical) {
        return (TaskHealth::Critical, None);
    }
    let since: Option<Vec<u64>> = checks.iter().map(|c| c.healthy_since_ms).collect();
    match since {
        Some(times) => (TaskHealth::Passing, times.into_iter().max()),
        None => (TaskHealth::Unknown, None),
    }
}
