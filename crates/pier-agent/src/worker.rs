//! One task's lifecycle on this node, in its own tokio task: pull → create → start → health
//! checks → (stop signal → SIGKILL after the timeout) → remove, reporting every transition
//! to the server. The controller decides; the worker only does what the task record says and
//! reports what it sees. It never restarts a dead container itself: a replacement is a new
//! task, so crash loops are visible and backed off centrally.

use std::sync::Arc;
use std::time::Duration;

use pier_api::service::{
    AgentTask, DesiredState, HealthSpec, OnChange, StopPhase, TaskHealth, TaskState, TaskStatus,
};
use pier_core::health::{self, CheckResult, CheckSettings, CheckState, HealthStatus};
use tokio::sync::mpsc;

use crate::client::ServerClient;
use crate::docker::{ContainerInfo, ContainerSpec, DockerDriver, DockerError};
use crate::files::TaskFiles;
use crate::probe::{self, ProbeTarget};
use crate::secrets::SecretError;

pub enum WorkerMsg {
    Desired(Box<AgentTask>),
    /// The task is no longer assigned to this node (or was deleted).
    Gone,
    /// A Docker event for the task's container (die, oom, ...).
    Event(String),
}

pub struct WorkerCtx {
    pub docker: DockerDriver,
    pub client: ServerClient,
    pub host_ip: String,
    pub network: Option<String>,
    pub readiness: Option<crate::Readiness>,
    pub secrets: crate::secrets::SecretsDir,
    /// Host directories under which tasks may mount host paths (`--volume-root`).
    pub volume_roots: Vec<String>,
    pub http: reqwest::Client,
}

/// Probing before the first pass happens this often; its failures are not counted (the
/// process is just not listening yet), only a success is. Keeps readiness detection fast
/// without changing what `retries` means.
const STARTUP_PROBE_MS: u64 = 150;
const FALLBACK_TICK_MS: u64 = 1_000;

struct Worker {
    ctx: Arc<WorkerCtx>,
    task: AgentTask,
    container: Option<String>,
    status: TaskStatus,
    /// What the server acknowledged last; `None` forces a report.
    acknowledged: Option<TaskStatus>,
    check: Option<(CheckSettings, CheckState)>,
    next_quick_probe_ms: u64,
    start_attempted: bool,
    stopped: bool,
    /// The task's `[files]`, once rendered (None: it has none).
    files: Option<Arc<TaskFiles>>,
    /// The watch that renders them again; aborted when the task stops.
    files_watch: Option<tokio::task::JoinHandle<()>>,
    /// Where the watch says which files changed (the receiver is in `run`).
    files_changed: mpsc::Sender<Vec<OnChange>>,
}

use pier_api::time::now_ms;

fn check_settings(h: &HealthSpec) -> CheckSettings {
    CheckSettings {
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        failures_before_critical: h.retries,
        successes_before_passing: 1,
        start_period_ms: h.start_period_ms,
        ttl_ms: None,
        deregister_critical_after_ms: None,
    }
}

pub async fn run(
    ctx: Arc<WorkerCtx>,
    task: AgentTask,
    adopted: Option<ContainerInfo>,
    mut rx: mpsc::Receiver<WorkerMsg>,
) {
    let (files_changed, mut files_rx) = mpsc::channel(4);
    let mut w = Worker {
        files: None,
        files_watch: None,
        files_changed,
        ctx,
        task,
        container: None,
        status: TaskStatus::default(),
        acknowledged: None,
        check: None,
        next_quick_probe_ms: 0,
        start_attempted: false,
        stopped: false,
    };
    match adopted {
        Some(info) if info.published_elsewhere(&w.ctx.host_ip) => w.replace_misbound(info).await,
        Some(info) => w.adopt(info).await,
        None => {}
    }
    loop {
        if !w.act().await {
            return;
        }
        w.flush().await;
        let wait_ms = w
            .next_wake_ms()
            .saturating_sub(now_ms())
            .clamp(10, FALLBACK_TICK_MS);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(WorkerMsg::Desired(t)) => w.task = *t,
                Some(WorkerMsg::Event(action)) => w.on_event(&action).await,
                Some(WorkerMsg::Gone) | None => {
                    w.remove().await;
                    return;
                }
            },
            Some(changes) = files_rx.recv() => w.on_files_changed(changes).await,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        }
        w.probe_if_due().await;
    }
}

impl Worker {
    fn id(&self) -> &str {
        &self.task.task.id
    }

    fn set_state(&mut self, state: TaskState, message: Option<String>) {
        self.status.state = state;
        self.status.message = message;
    }

    /// A container of this task whose ports are published on another address than the
    /// agent's: removed, so the normal start below makes one reachable at the node's address
    /// (adopting it would advertise an address nothing listens on).
    async fn replace_misbound(&mut self, info: ContainerInfo) {
        tracing::warn!(task = %self.id(), container = %info.id,
            published_on = info.ports_host_ip.as_deref().unwrap_or_default(), host_ip = %self.ctx.host_ip,
            "container publishes its ports on another address than this agent's; replacing it");
        let stopped = self
            .ctx
            .docker
            .stop(&info.id, self.task.spec.stop_timeout_ms)
            .await;
        if let Err(e) = stopped.and(self.ctx.docker.remove(&info.id).await) {
            tracing::warn!(task = %self.id(), error = %e, "cannot remove the misbound container; adopting it instead");
            self.adopt(info).await;
        }
    }

    async fn adopt(&mut self, info: ContainerInfo) {
        tracing::info!(task = %self.id(), container = %info.id, running = info.running, "adopting existing container");
        self.container = Some(info.id.clone());
        self.start_attempted = true;
        self.status.container_id = Some(info.id.clone());
        self.status.host_ip = Some(self.ctx.host_ip.clone());
        self.status.host_ports = info.host_ports.clone();
        self.status.network_ip = info.network_ip.clone();
        if info.running {
            self.set_state(TaskState::Running, None);
            self.begin_health(now_ms());
            // Its files were rendered by the agent before; the watch renders them again and
            // acts if they changed meanwhile.
            let root = self.ctx.secrets.files_dir(self.id());
            match TaskFiles::new(&self.task.spec, root, &self.task.task.node) {
                Ok(files) => self.files = files.map(Arc::new),
                Err(e) => {
                    tracing::warn!(task = %self.id(), error = %e, "cannot follow the task's files")
                }
            }
            self.watch_files();
        } else {
            self.status.exit_code = info.exit_code;
            self.set_state(TaskState::Exited, Some(exit_message(&info)));
            self.status.finished_at_ms = Some(now_ms());
        }
    }

    fn begin_health(&mut self, now: u64) {
        self.status.started_at_ms.get_or_insert(now);
        match &self.task.spec.health {
            Some(h) => {
                let settings = check_settings(h);
                self.check = Some((settings, CheckState::new(now)));
                self.status.health = TaskHealth::Unknown;
                self.status.healthy_since_ms = None;
                self.next_quick_probe_ms = now;
            }
            None => {
                self.check = None;
                self.status.health = TaskHealth::Healthy;
                self.status.healthy_since_ms = Some(now);
            }
        }
    }

    /// Does what the task record asks. Returns false when the worker is finished.
    async fn act(&mut self) -> bool {
        let t = &self.task.task;
        match t.stop_phase {
            StopPhase::Active if t.desired == DesiredState::Running => {
                if !self.start_attempted && self.needs_met() {
                    self.start_attempted = true;
                    self.start().await;
                }
                true
            }
            // Out of the catalog already; keep serving in-flight requests until the signal.
            StopPhase::Active | StopPhase::Draining { .. } => {
                if !self.start_attempted {
                    // Never started: there is nothing to drain.
                    self.start_attempted = true;
                    self.mark_not_started();
                }
                true
            }
            StopPhase::Stopping { .. } => {
                if !self.stopped {
                    self.stopped = true;
                    self.stop().await;
                }
                true
            }
            StopPhase::Stopped => {
                self.remove().await;
                false
            }
        }
    }

    /// Whether every service of `needs` has a healthy instance; records the ones it waits
    /// for in the status (reported, shown as `waiting for api`). Re-checked every tick.
    fn needs_met(&mut self) -> bool {
        let waiting = match &self.ctx.readiness {
            Some(ready) => crate::task_env::unmet_needs(&self.task.spec.needs, |s| (ready.0)(s)),
            None => Vec::new(),
        };
        if waiting != self.status.waiting_for {
            if !waiting.is_empty() {
                tracing::info!(task = %self.id(), waiting_for = ?waiting, "task waits for the services it needs");
            }
            self.status.waiting_for = waiting;
        }
        self.status.waiting_for.is_empty()
    }

    /// The node's pier network (ensured: it is recreated if someone removed it) and the
    /// resolver address of its containers.
    async fn network(&self) -> Result<(Option<String>, Option<String>), DockerError> {
        match &self.ctx.network {
            Some(name) => {
                let net = self.ctx.docker.ensure_network(name).await?;
                Ok((Some(net.id), net.gateway.map(|ip| ip.to_string())))
            }
            None => Ok((None, None)),
        }
    }

    fn mark_not_started(&mut self) {
        if !self.status.state.is_terminal() {
            self.status.exit_code = Some(0);
            self.set_state(TaskState::Exited, Some("stopped before it started".into()));
            self.status.finished_at_ms = Some(now_ms());
        }
    }

    async fn start(&mut self) {
        let spec = self.task.spec.clone();
        let docker = self.ctx.docker.clone();
        // Exactly the digest the revision pinned, when it pinned one.
        let image = spec.run_image();
        match docker.image_present(&image).await {
            Ok(true) => {}
            Ok(false) => {
                self.set_state(TaskState::Pulling, Some(format!("pulling {image}")));
                self.flush().await;
                if let Err(e) = docker.pull(&image).await {
                    return self.fail(e);
                }
            }
            Err(e) => return self.fail(e),
        }
        self.set_state(TaskState::Starting, None);
        self.flush().await;
        let (network, dns) = match self.network().await {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let mut env = crate::task_env::task_env(&spec, &self.task.task, dns.as_deref());
        let mut binds = match self.secrets(&spec).await {
            Ok((secret_env, binds)) => {
                env.extend(secret_env);
                binds
            }
            Err(e) => return self.fail(e),
        };
        let tmpfs = match self.volumes(&spec).await {
            Ok((volume_binds, tmpfs)) => {
                binds.extend(volume_binds);
                tmpfs
            }
            Err(e) => return self.fail(e),
        };
        match self.render_files(&spec).await {
            Ok(file_binds) => binds.extend(file_binds),
            Err(e) => return self.fail(e),
        }
        let cspec = ContainerSpec {
            task_id: self.id().to_string(),
            service: spec.name.clone(),
            revision: self.task.task.revision,
            image,
            entrypoint: spec.command.clone(),
            cmd: spec.args.clone(),
            env,
            binds,
            tmpfs,
            ports: spec.ports.clone(),
            host_ip: self.ctx.host_ip.clone(),
            cpu_millis: spec.cpu_millis,
            memory_mb: spec.memory_mb,
            stop_signal: spec.stop_signal.clone(),
            network,
            dns: dns.into_iter().collect(),
            user: spec.deploy.user.clone(),
            read_only_root: spec.deploy.read_only_root,
            cap_drop: spec.deploy.cap_drop.clone(),
        };
        let id = match docker.create(&cspec).await {
            Ok(id) => id,
            Err(e) => return self.fail(e),
        };
        self.container = Some(id.clone());
        self.status.container_id = Some(id.clone());
        if let Err(e) = docker.start(&id).await {
            return self.fail(e);
        }
        match docker.inspect(&id).await {
            Ok(Some(info)) if info.running => {
                self.status.host_ip = Some(self.ctx.host_ip.clone());
                self.status.host_ports = info.host_ports;
                self.status.network_ip = info.network_ip;
                self.set_state(TaskState::Running, None);
                self.begin_health(now_ms());
                self.watch_files();
                tracing::info!(task = %self.id(), container = %id, "task running");
            }
            Ok(Some(info)) => {
                self.exited(&info);
                self.capture_output(&id).await;
            }
            Ok(None) => self.fail(DockerError::NoSuchContainer(id)),
            Err(e) => self.fail(e),
        }
    }

    /// The task's secrets from the server: its secret environment variables, and the bind
    /// of its `/run/secrets` directory when it mounts any as files.
    async fn secrets(
        &self,
        spec: &pier_api::service::ServiceSpec,
    ) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), SecretError> {
        if spec.secrets.is_empty() && spec.secret_files.is_empty() {
            return Ok(Default::default());
        }
        let values = self
            .ctx
            .client
            .task_secrets(&self.task.task.node, self.id())
            .await
            .map_err(|e| SecretError::Fetch(e.to_string()))?;
        let env = crate::secrets::env(spec, &values)?;
        let mut binds = Vec::new();
        if !spec.secret_files.is_empty() {
            let dir = self.ctx.secrets.write_files(self.id(), spec, &values)?;
            binds.push(format!(
                "{}:{}:ro",
                dir.display(),
                pier_api::secret::SECRETS_MOUNT
            ));
        }
        Ok((env, binds))
    }

    /// Renders the task's `[files]` (reading what they need from the servers) and returns the
    /// binds of their directories.
    async fn render_files(
        &mut self,
        spec: &pier_api::service::ServiceSpec,
    ) -> Result<Vec<String>, crate::files::FilesError> {
        let root = self.ctx.secrets.files_dir(self.id());
        let Some(files) = TaskFiles::new(spec, root, &self.task.task.node)? else {
            return Ok(Vec::new());
        };
        let data = crate::files::fetch_all(&self.ctx.client, &files).await?;
        files.write(&data)?;
        let binds = files.binds();
        self.files = Some(Arc::new(files));
        Ok(binds)
    }

    /// Starts following what the task's files read (once; none without files).
    fn watch_files(&mut self) {
        let Some(files) = self.files.clone() else {
            return;
        };
        if self.files_watch.is_some() {
            return;
        }
        self.files_watch = Some(tokio::spawn(crate::files::watch(
            files,
            self.ctx.client.clone(),
            self.id().to_string(),
            self.files_changed.clone(),
        )));
    }

    fn stop_watching_files(&mut self) {
        if let Some(h) = self.files_watch.take() {
            h.abort();
        }
    }

    /// Files were rendered anew: restart the container if any of them asks for it, else
    /// send the signals they ask for. Only a running task: an exited one is not revived.
    async fn on_files_changed(&mut self, changes: Vec<OnChange>) {
        let Some(id) = self.container.clone() else {
            return;
        };
        if self.status.state != TaskState::Running {
            return;
        }
        let docker = self.ctx.docker.clone();
        if changes.contains(&OnChange::Restart) {
            tracing::info!(task = %self.id(), "a rendered file changed; restarting the container");
            if let Err(e) = docker.restart(&id, self.task.spec.stop_timeout_ms).await {
                tracing::warn!(task = %self.id(), error = %e, "cannot restart the container");
            }
            match docker.inspect(&id).await {
                Ok(Some(info)) if info.running => {
                    // Docker may give the restarted container other host ports.
                    self.status.host_ports = info.host_ports;
                    self.status.network_ip = info.network_ip;
                    self.begin_health(now_ms());
                }
                Ok(Some(info)) => {
                    self.exited(&info);
                    self.capture_output(&id).await;
                }
                _ => {}
            }
            return;
        }
        let mut sent = std::collections::BTreeSet::new();
        for change in changes {
            if let OnChange::Signal(sig) = change {
                if sent.insert(sig.clone()) {
                    tracing::info!(task = %self.id(), signal = %sig, "a rendered file changed; signalling the container");
                    if let Err(e) = docker.signal(&id, &sig).await {
                        tracing::warn!(task = %self.id(), error = %e, "cannot signal the container");
                    }
                }
            }
        }
    }

    /// The task's `[[volumes]]`: binds of named volumes (created if missing, kept after the
    /// container) and allowed host paths, and tmpfs mounts.
    async fn volumes(
        &self,
        spec: &pier_api::service::ServiceSpec,
    ) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>), String> {
        use pier_api::service::VolumeSpec;
        let ro = |read_only: bool| if read_only { ":ro" } else { "" };
        let mut binds = Vec::new();
        let mut tmpfs = std::collections::BTreeMap::new();
        for v in &spec.volumes {
            match v {
                VolumeSpec::Named {
                    name,
                    target,
                    read_only,
                } => {
                    let engine = self
                        .ctx
                        .docker
                        .ensure_volume(name)
                        .await
                        .map_err(|e| e.to_string())?;
                    binds.push(format!("{engine}:{target}{}", ro(*read_only)));
                }
                VolumeSpec::Host {
                    source,
                    target,
                    read_only,
                } => {
                    let allowed = self
                        .ctx
                        .volume_roots
                        .iter()
                        .any(|r| pier_api::service::is_under(source, r));
                    if !allowed {
                        return Err(format!(
                            "host path {source} is not under this node's --volume-root ({})",
                            self.ctx.volume_roots.join(", ")
                        ));
                    }
                    binds.push(format!("{source}:{target}{}", ro(*read_only)));
                }
                VolumeSpec::Tmpfs { target, size_mb } => {
                    let options = size_mb.map(|m| format!("size={m}m")).unwrap_or_default();
                    tmpfs.insert(target.clone(), options);
                }
            }
        }
        Ok((binds, tmpfs))
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        tracing::warn!(task = %self.id(), error = %e, "task failed to start");
        self.set_state(TaskState::Failed, Some(e.to_string()));
        self.status.finished_at_ms = Some(now_ms());
        self.check = None;
    }

    fn exited(&mut self, info: &ContainerInfo) {
        if self.status.state.is_terminal() {
            return;
        }
        self.status.exit_code = info.exit_code;
        self.set_state(TaskState::Exited, Some(exit_message(info)));
        self.status.finished_at_ms = Some(now_ms());
        if self.status.health == TaskHealth::Healthy {
            self.status.health = TaskHealth::Unknown;
            self.status.healthy_since_ms = None;
        }
        self.check = None;
        tracing::info!(task = %self.id(), code = ?info.exit_code, "task exited");
    }

    /// Keeps the container's last lines with the status: the container is removed once the
    /// task is stopped, and "why did it exit" is the first question.
    async fn capture_output(&mut self, id: &str) {
        use futures::StreamExt;
        const MAX_BYTES: usize = 4096;
        let chunks: Vec<_> = self.ctx.docker.logs(id, false, Some(20)).collect().await;
        let mut text = String::new();
        for chunk in chunks.into_iter().flatten() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        if text.len() > MAX_BYTES {
            let mut cut = text.len() - MAX_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = text[cut..].to_string();
        }
        self.status.last_output = (!text.trim().is_empty()).then_some(text);
    }

    async fn on_event(&mut self, action: &str) {
        if !matches!(action, "die" | "oom" | "destroy" | "kill") {
            return;
        }
        let Some(id) = self.container.clone() else {
            return;
        };
        match self.ctx.docker.inspect(&id).await {
            Ok(Some(info)) if !info.running => {
                self.exited(&info);
                self.capture_output(&id).await;
            }
            Ok(None) if !self.status.state.is_terminal() => {
                self.status.exit_code = Some(137);
                self.set_state(TaskState::Exited, Some("container removed".into()));
                self.status.finished_at_ms = Some(now_ms());
                self.check = None;
            }
            _ => {}
        }
    }

    async fn stop(&mut self) {
        self.check = None;
        self.stop_watching_files();
        let Some(id) = self.container.clone() else {
            self.mark_not_started();
            return;
        };
        if let Err(e) = self
            .ctx
            .docker
            .stop(&id, self.task.spec.stop_timeout_ms)
            .await
        {
            tracing::warn!(task = %self.id(), error = %e, "stop failed; removing the container by force");
        }
        match self.ctx.docker.inspect(&id).await {
            Ok(Some(info)) => {
                if !self.status.state.is_terminal() {
                    self.status.exit_code = info.exit_code;
                    self.set_state(
                        TaskState::Exited,
                        Some(format!("stopped ({})", exit_message(&info))),
                    );
                    self.status.finished_at_ms = Some(now_ms());
                }
            }
            _ => self.mark_not_started(),
        }
        if let Err(e) = self.ctx.docker.remove(&id).await {
            tracing::warn!(task = %self.id(), error = %e, "cannot remove the container");
        }
        self.ctx.secrets.remove(self.id());
        self.container = None;
        tracing::info!(task = %self.id(), "task stopped");
    }

    async fn remove(&mut self) {
        self.stop_watching_files();
        if let Some(id) = self.container.take() {
            if let Err(e) = self.ctx.docker.remove(&id).await {
                tracing::warn!(task = %self.id(), error = %e, "cannot remove the container");
            }
        }
        self.ctx.secrets.remove(self.id());
    }

    fn next_wake_ms(&self) -> u64 {
        match &self.check {
            Some((settings, state)) if self.status.state == TaskState::Running => {
                let regular = health::next_run_at_ms(settings, state);
                if state.has_passed {
                    regular
                } else {
                    regular.min(self.next_quick_probe_ms)
                }
            }
            _ => now_ms() + FALLBACK_TICK_MS,
        }
    }

    async fn probe_if_due(&mut self) {
        let Some((settings, state)) = self.check.clone() else {
            return;
        };
        if self.status.state != TaskState::Running {
            return;
        }
        let Some(hs) = self.task.spec.health.clone() else {
            return;
        };
        let now = now_ms();
        let regular_due = now >= health::next_run_at_ms(&settings, &state);
        let quick_due = !state.has_passed && now >= self.next_quick_probe_ms;
        if !regular_due && !quick_due {
            return;
        }
        let container = self.container.clone().unwrap_or_default();
        let target = ProbeTarget {
            host_ip: &self.ctx.host_ip,
            host_ports: &self.status.host_ports,
            container_id: &container,
            network_ip: self.status.network_ip.as_deref(),
        };
        let result = probe::run(
            &hs.kind,
            &target,
            settings.timeout_ms,
            &self.ctx.http,
            &self.ctx.docker,
        )
        .await;
        let done = now_ms();
        if !regular_due {
            self.next_quick_probe_ms = done + STARTUP_PROBE_MS;
            if !matches!(result, CheckResult::Passing { .. }) {
                return;
            }
        }
        let (next, transition) = health::observe(&settings, &state, result, done);
        if let Some(t) = &transition {
            tracing::info!(task = %self.id(), from = %t.from, to = %t.to, output = %t.output, "health changed");
            self.status.health = match t.to {
                HealthStatus::Passing | HealthStatus::Warning => TaskHealth::Healthy,
                HealthStatus::Critical => TaskHealth::Unhealthy,
                HealthStatus::Unknown => TaskHealth::Unknown,
            };
            self.status.healthy_since_ms = next.healthy_since_ms;
            self.status.message = (!t.output.is_empty()).then(|| t.output.clone());
        }
        self.check = Some((settings, next));
    }

    /// Reports the status when it differs from what the server acknowledged.
    async fn flush(&mut self) {
        if self.acknowledged.as_ref() == Some(&self.status) {
            return;
        }
        let node = self.task.task.node.clone();
        match self.ctx.client.report(&node, self.id(), &self.status).await {
            Ok(()) => self.acknowledged = Some(self.status.clone()),
            Err(e) if e.is_not_found() => {
                // The task is gone from the server: nothing to report to, nothing to run.
                self.task.task.stop_phase = StopPhase::Stopped;
            }
            Err(e) => {
                tracing::debug!(task = %self.id(), error = %e, "status report failed; will retry")
            }
        }
    }
}

fn exit_message(info: &ContainerInfo) -> String {
    if info.oom_killed {
        return "killed: out of memory".into();
    }
    match (info.exit_code, &info.error) {
        (_, Some(err)) => err.clone(),
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) => "exited".into(),
    }
}
