//! The per-node check runner: one reconcile loop plus one task per runnable check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
        let http = reqwest::Client::builder()
            .user_agent("pier-health-check/1")
            .build()
            .unwrap_or_default();
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
            CheckKind::Ttl { ttl } => {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Some(tx),
                    tokio::spawn(run_ttl(weak, check.clone(), ttl, rx)),
                )
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

/// Writes `status` if it differs from `last`. Returns false when the check is gone (the task
/// should end).
async fn transition(
    inner: &Inner,
    check: &Check,
    last: &mut CheckStatus,
    status: CheckStatus,
    output: Option<&str>,
) -> bool {
    if status == *last && output.is_none() {
        return true;
    }
    match inner
        .catalog
        .update_check(&inner.node, &check.id, status, output)
        .await
    {
        Ok(wrote) => {
            if wrote {
                inner.writes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %inner.node, check = %check.id, from = %last, to = %status, "check status changed");
            }
            *last = status;
            true
        }
        Err(CatalogError::NotFound(_)) => false,
        Err(e) => {
            // Keep `last` so the next evaluation retries the write.
            tracing::warn!(node = %inner.node, check = %check.id, error = %e, "cannot write check status");
            true
        }
    }
}

/// Deregisters the instance once the check has been critical for `after`. Returns true when
/// it did (the task ends).
async fn deregister_if_due(inner: &Inner, check: &Check, critical_since: Option<Instant>) -> bool {
    let (Some(after), Some(since)) = (check.definition.deregister_critical_after, critical_since)
    else {
        return false;
    };
    if check.service_id.is_empty() || since.elapsed() < after {
        return false;
    }
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

async fn run_probe(weak: std::sync::Weak<Inner>, check: Check) {
    let (interval, timeout) = {
        let Some(inner) = weak.upgrade() else { return };
        let interval = check
            .definition
            .interval
            .unwrap_or(Duration::from_millis(inner.config.default_interval_ms));
        let timeout = check
            .definition
            .timeout
            .unwrap_or(Duration::from_millis(inner.config.default_timeout_ms));
        (interval.max(Duration::from_millis(10)), timeout)
    };
    let mut last = check.status;
    let mut critical_since = (last == CheckStatus::Critical).then(Instant::now);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // Vetted again before every probe: a check stored before the operator narrowed
        // `--check-allow`, or a name that now resolves elsewhere, is not probed.
        let (status, output) = match super::allow::vet_check(
            &inner.config.check_allow,
            &check.definition.kind,
        )
        .await
        {
            Ok(()) => probes::probe(&inner.http, &check.definition.kind, timeout).await,
            Err(refused) => (CheckStatus::Critical, format!("not probed: {refused}")),
        };
        if status != last && !transition(&inner, &check, &mut last, status, Some(&output)).await {
            return;
        }
        if status == CheckStatus::Critical {
            critical_since.get_or_insert_with(Instant::now);
        } else {
            critical_since = None;
        }
        if deregister_if_due(&inner, &check, critical_since).await {
            return;
        }
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

async fn run_ttl(
    weak: std::sync::Weak<Inner>,
    check: Check,
    ttl: Duration,
    mut rx: mpsc::UnboundedReceiver<TtlUpdate>,
) {
    let mut last = check.status;
    let mut deadline = Instant::now() + ttl;
    let mut expired = false;
    let mut critical_since = (last == CheckStatus::Critical).then(Instant::now);
    // Deregistration is evaluated on this tick even when no update arrives.
    let tick = ttl
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some((status, output)) = update else { return };
                let Some(inner) = weak.upgrade() else { return };
                if !transition(&inner, &check, &mut last, status, output.as_deref()).await {
                    return;
                }
                deadline = Instant::now() + ttl;
                expired = false;
            }
            _ = tokio::time::sleep_until(deadline), if !expired => {
                expired = true;
                let Some(inner) = weak.upgrade() else { return };
                if last != CheckStatus::Critical {
                    let output = format!("TTL expired (no update within {} ms)", ttl.as_millis());
                    if !transition(&inner, &check, &mut last, CheckStatus::Critical, Some(&output)).await {
                        return;
                    }
                }
            }
            _ = tokio::time::sleep(tick) => {}
        }
        if last == CheckStatus::Critical {
            critical_since.get_or_insert_with(Instant::now);
        } else {
            critical_since = None;
        }
        let Some(inner) = weak.upgrade() else { return };
        if deregister_if_due(&inner, &check, critical_since).await {
            return;
        }
    }
}
