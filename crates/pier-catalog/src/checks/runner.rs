//! The per-node check runner: one reconcile loop plus one task per runnable check. Each task
//! does the IO of its check (probe, store writes, deregistration); pier-core's health engine
//! (`pier_core::health`) decides the status, TTL expiry and deregistration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pier_api::time::now_ms;
use pier_core::health::{self, CheckResult, CheckSettings, CheckState, HealthEvent, HealthStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::probes;
use crate::catalog::Catalog;
use crate::error::CatalogError;
use crate::model::{Check, CheckDefinition, CheckKind, CheckStatus};

#[derive(Clone, Debug)]
pub struct CheckRunnerConfig {
    /// Run `Args` (script) checks. Off by default, as in Consul: anyone who can reach the API
    /// could otherwise run commands on the machine.
    pub enable_script_checks: bool,
    /// Timeout of a probe when the check gives none.
    pub default_timeout_ms: u64,
    /// Interval when an HTTP/TCP/script check gives none (registration refuses that, so this
    /// only guards records written by other means).
    pub default_interval_ms: u64,
    /// Full resync of the check set even without a change (guards against a missed watch).
    pub resync_interval_ms: u64,
    /// Networks HTTP and TCP checks registered through this agent may reach (checked at
    /// registration, host names resolved). Default: loopback and the private ranges.
    pub check_allow: super::allow::CheckAllow,
}

impl Default for CheckRunnerConfig {
    fn default() -> Self {
        CheckRunnerConfig {
            enable_script_checks: false,
            default_timeout_ms: 10_000,
            default_interval_ms: 10_000,
            resync_interval_ms: 60_000,
            check_allow: super::allow::CheckAllow::default(),
        }
    }
}

type TtlUpdate = (CheckStatus, Option<String>);

struct RunningCheck {
    service_id: String,
    definition: CheckDefinition,
    handle: JoinHandle<()>,
    ttl_tx: Option<mpsc::UnboundedSender<TtlUpdate>>,
}

struct Inner {
    catalog: Catalog,
    node: String,
    config: CheckRunnerConfig,
    http: reqwest::Client,
    tasks: Mutex<HashMap<String, RunningCheck>>,
    writes: AtomicU64,
    loop_handle: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, RunningCheck>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the checks of one node. Cheap to clone; [`CheckRunner::shutdown`] stops everything.
#[derive(Clone)]
pub struct CheckRunner {
    inner: Arc<Inner>,
}

impl CheckRunner {
    /// Starts the reconcile loop for `node` (call inside a tokio runtime).
    pub fn start(
        catalog: Catalog,
        node: impl Into<String>,
        config: CheckRunnerConfig,
    ) -> CheckRunner {
        let http = probes::http_client(None);
        let inner = Arc::new(Inner {
            catalog,
            node: node.into(),
            config,
            http,
            tasks: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            loop_handle: Mutex::new(None),
        });
        let handle = tokio::spawn(reconcile_loop(Arc::downgrade(&inner)));
        *inner.loop_handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        CheckRunner { inner }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// How many status writes this runner has made (transitions only).
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// IDs of the checks that have a running task.
    pub fn running_checks(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.tasks().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn script_checks_enabled(&self) -> bool {
        self.inner.config.enable_script_checks
    }

    /// The networks checks registered through this agent may reach.
    pub fn check_allow(&self) -> &super::allow::CheckAllow {
        &self.inner.config.check_allow
    }

    /// A TTL update (`/v1/agent/check/pass|warn|fail|update`): resets the TTL timer and writes
    /// the status if it changed. `NotFound` for an unknown check; `BadRequest` when the check
    /// has no TTL.
    pub async fn ttl_update(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: Option<String>,
    ) -> Result<(), CatalogError> {
        // Consul sets the output to the note, empty when none is given.
        let output = Some(super::probes::cap_output(&output.unwrap_or_default()));
        let tx = self
            .inner
            .tasks()
            .get(check_id)
            .and_then(|t| t.ttl_tx.clone());
        if let Some(tx) = tx {
            if tx.send((status, output.clone())).is_ok() {
                return Ok(());
            }
        }
        // No task (yet): the reconcile loop has not seen the check, or it is not a TTL check.
        let check = self
            .inner
            .catalog
            .get_check(&self.inner.node, check_id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("Unknown check ID {check_id:?}")))?;
        if !matches!(check.definition.kind, CheckKind::Ttl { .. }) {
            return Err(CatalogError::bad(format!(
                "CheckID {check_id:?} does not have associated TTL"
            )));
        }
        if self
            .inner
            .catalog
            .update_check(&self.inner.node, check_id, status, output.as_deref())
            .await?
        {
            self.inner.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stops the reconcile loop and every check task.
    pub fn shutdown(&self) {
        if let Some(h) = self
            .inner
            .loop_handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        for (_, t) in self.inner.tasks().drain() {
            t.handle.abort();
        }
    }
}

async fn reconcile_loop(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let mut watch = strong.catalog.watch_node_check_set(&strong.node);
        let resync = Duration::from_millis(strong.config.resync_interval_ms);
        match strong.catalog.checks_of_node(&strong.node).await {
            Ok(checks) => reconcile(&strong, checks),
            Err(e) => {
                tracing::warn!(node = %strong.node, error = %e, "check runner cannot read its checks; retrying");
                drop(strong);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        drop(strong);
        watch.changed(resync).await;
    }
}

fn runnable(inner: &Inner, check: &Check) -> bool {
    match &check.definition.kind {
        CheckKind::Http { .. } | CheckKind::Tcp { .. } | CheckKind::Ttl { .. } => true,
        CheckKind::Script { .. } => {
            if !inner.config.enable_script_checks {
                tracing::warn!(check = %check.id, "script checks are disabled on this agent; not running it");
            }
            inner.config.enable_script_checks
        }
        CheckKind::Heartbeat | CheckKind::Manual => false,
    }
}

fn reconcile(inner: &Arc<Inner>, checks: Vec<Check>) {
    let mut tasks = inner.tasks();
    let wanted: HashMap<String, Check> = checks
        .into_iter()
        .filter(|c| runnable(inner, c))
        .map(|c| (c.id.clone(), c))
        .collect();
    tasks.retain(|id, t| {
        let keep = wanted.get(id).is_some_and(|c| {
            c.definition == t.definition && c.service_id == t.service_id && !t.handle.is_finished()
        });
        if !keep {
            t.handle.abort();
        }
        keep
    });
    for (id, check) in wanted {
        if tasks.contains_key(&id) {
            continue;
        }
        let weak = Arc::downgrade(inner);
        let (ttl_tx, handle) = match check.definition.kind {
            CheckKind::Ttl { .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), tokio::spawn(run_ttl(weak, check.clone(), rx)))
            }
            _ => (None, tokio::spawn(run_probe(weak, check.clone()))),
        };
        tracing::debug!(node = %inner.node, check = %id, "check task started");
        tasks.insert(
            id,
            RunningCheck {
                service_id: check.service_id.clone(),
                definition: check.definition.clone(),
                handle,
                ttl_tx,
            },
        );
    }
}

/// How soon a failed status write or deregistration is tried again.
const RETRY_MS: u64 = 1_000;

fn to_health(status: CheckStatus) -> HealthStatus {
    match status {
        CheckStatus::Passing => HealthStatus::Passing,
        CheckStatus::Warning => HealthStatus::Warning,
        CheckStatus::Critical => HealthStatus::Critical,
    }
}

/// Consul has no "unknown": a check is critical until it passes (and a resumed Consul check
/// never is unknown anyway).
fn to_catalog(status: HealthStatus) -> CheckStatus {
    match status {
        HealthStatus::Passing => CheckStatus::Passing,
        HealthStatus::Warning => CheckStatus::Warning,
        HealthStatus::Unknown | HealthStatus::Critical => CheckStatus::Critical,
    }
}

fn to_result(status: CheckStatus, output: String) -> CheckResult {
    match status {
        CheckStatus::Passing => CheckResult::Passing { output },
        CheckStatus::Warning => CheckResult::Warning { output },
        CheckStatus::Critical => CheckResult::Critical { output },
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The engine settings of a Consul check definition.
fn settings(config: &CheckRunnerConfig, def: &CheckDefinition) -> CheckSettings {
    let interval_ms = def
        .interval
        .map(ms)
        .unwrap_or(config.default_interval_ms)
        .max(10);
    let timeout_ms = def.timeout.map(ms).unwrap_or(config.default_timeout_ms);
    let ttl_ms = match def.kind {
        CheckKind::Ttl { ttl } => Some(ms(ttl)),
        _ => None,
    };
    // Consul applies the thresholds to probes only: a TTL update sets the status it names.
    let (successes, failures) = match ttl_ms {
        Some(_) => (1, 1),
        None => (def.success_before_passing, def.failures_before_critical),
    };
    CheckSettings {
        successes_before_passing: successes.max(1),
        failures_before_critical: failures.max(1),
        ..CheckSettings::consul(
            interval_ms,
            timeout_ms,
            ttl_ms,
            def.deregister_critical_after.map(ms),
        )
    }
}

/// Sleeps until `at_ms` on the clock of [`now_ms`]; forever when there is nothing to wait for.
async fn sleep_until_ms(at_ms: Option<u64>) {
    match at_ms {
        Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}

/// One check in pier-core's health engine: the engine decides the status, TTL expiry and
/// when deregistration is due; this does the IO it asks for.
struct Engine {
    settings: CheckSettings,
    state: CheckState,
    /// What the store holds (as far as this task knows): writes go out when the engine's
    /// state differs ([`health::needs_write`]), so a failed write is retried.
    written: (CheckStatus, String),
    retry_at_ms: Option<u64>,
}

impl Engine {
    /// Starts from the stored status with fresh timers (see [`CheckState::resumed`]).
    fn new(config: &CheckRunnerConfig, check: &Check) -> Engine {
        Engine {
            settings: settings(config, &check.definition),
            state: CheckState::resumed(to_health(check.status), check.output.clone(), now_ms()),
            written: (check.status, check.output.clone()),
            retry_at_ms: None,
        }
    }

    fn observe(&mut self, result: CheckResult) {
        let (next, _) = health::observe(&self.settings, &self.state, result, now_ms());
        self.state = next;
    }

    /// When [`Engine::settle`] must run next at the latest.
    fn wake_at_ms(&self) -> Option<u64> {
        match (
            health::next_deadline_ms(&self.settings, &self.state),
            self.retry_at_ms,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies time-driven changes, writes the status if it must, deregisters the instance
    /// when due. Returns false when the task should end (check or instance gone).
    async fn settle(&mut self, inner: &Inner, check: &Check) -> bool {
        let now = now_ms();
        let (next, events) = health::tick(&self.settings, &self.state, now);
        self.state = next;
        self.retry_at_ms = None;
        if health::needs_write(
            &self.settings,
            &self.state,
            to_health(self.written.0),
            &self.written.1,
        ) {
            match write_status(inner, check, self.written.0, &self.state).await {
                Write::Done(status) => self.written = (status, self.state.output.clone()),
                Write::Gone => return false,
                Write::Failed => self.retry_at_ms = Some(now + RETRY_MS),
            }
        }
        let deregister_due = events
            .iter()
            .any(|e| matches!(e, HealthEvent::Deregister { .. }));
        // A node check (no service) has no instance to deregister.
        if deregister_due && !check.service_id.is_empty() {
            if deregister(inner, check).await {
                return false;
            }
            // Due again at the retry: the engine reports it once per critical period.
            self.state.deregister_reported = false;
            self.retry_at_ms = Some(now + RETRY_MS);
        }
        true
    }
}

enum Write {
    Done(CheckStatus),
    Gone,
    Failed,
}

async fn write_status(
    inner: &Inner,
    check: &Check,
    from: CheckStatus,
    state: &CheckState,
) -> Write {
    let status = to_catalog(state.status);
    match inner
        .catalog
        .update_check(&inner.node, &check.id, status, Some(&state.output))
        .await
    {
        Ok(wrote) => {
            if wrote {
                inner.writes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %inner.node, check = %check.id, %from, to = %status, "check status changed");
            }
            Write::Done(status)
        }
        Err(CatalogError::NotFound(_)) => Write::Gone,
        Err(e) => {
            tracing::warn!(node = %inner.node, check = %check.id, error = %e, "cannot write check status");
            Write::Failed
        }
    }
}

/// Deregisters the check's instance (`DeregisterCriticalServiceAfter`). True when it did.
async fn deregister(inner: &Inner, check: &Check) -> bool {
    tracing::info!(node = %inner.node, service = %check.service_id, check = %check.id,
        "check critical longer than DeregisterCriticalServiceAfter; deregistering the service");
    match inner
        .catalog
        .deregister_instance(&inner.node, &check.service_id)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot deregister critical service");
            false
        }
    }
}

/// One probe, vetted again before it runs: a check stored before the operator narrowed
/// `--check-allow`, or a name that now resolves elsewhere, is not probed; the probe connects
/// to the addresses just vetted, not to a fresh answer for the name.
async fn probe_once(inner: &Inner, check: &Check, timeout_ms: u64) -> CheckResult {
    let (status, output) =
        match super::allow::vet_check(&inner.config.check_allow, &check.definition.kind).await {
            Ok(vetted) => {
                probes::probe(
                    &inner.http,
                    &check.definition.kind,
                    Duration::from_millis(timeout_ms),
                    &vetted,
                )
                .await
            }
            Err(refused) => (CheckStatus::Critical, format!("not probed: {refused}")),
        };
    to_result(status, output)
}

async fn run_probe(weak: std::sync::Weak<Inner>, check: Check) {
    let mut engine = {
        let Some(inner) = weak.upgrade() else { return };
        Engine::new(&inner.config, &check)
    };
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if now_ms() >= health::next_run_at_ms(&engine.settings, &engine.state) {
            let result = probe_once(&inner, &check, engine.settings.timeout_ms).await;
            engine.observe(result);
        }
        if !engine.settle(&inner, &check).await {
            return;
        }
        drop(inner);
        let next_run = health::next_run_at_ms(&engine.settings, &engine.state);
        let wake = engine.wake_at_ms().map_or(next_run, |w| w.min(next_run));
        sleep_until_ms(Some(wake)).await;
    }
}

async fn run_ttl(
    weak: std::sync::Weak<Inner>,
    check: Check,
    mut rx: mpsc::UnboundedReceiver<TtlUpdate>,
) {
    let mut engine = {
        let Some(inner) = weak.upgrade() else { return };
        Engine::new(&inner.config, &check)
    };
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some((status, output)) = update else { return };
                engine.observe(to_result(status, output.unwrap_or_default()));
            }
            _ = sleep_until_ms(engine.wake_at_ms()) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        if !engine.settle(&inner, &check).await {
            return;
        }
    }
}
