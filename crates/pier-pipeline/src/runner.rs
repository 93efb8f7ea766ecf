//! The leader-only loop: recovers runs orphaned by a restart or failover, starts queued runs
//! one at a time per pipeline (newest first, older ones skipped), applies retention, and polls
//! repositories.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pier_api::pipeline::{RunInfo, RunStatus, RunTrigger};
use pier_store::{Consistency, WatchKey};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::PipelineError;
use crate::records::set_poll_error;
use crate::records::{
    delete_runs, enqueue, list_pipelines, list_runs, now_ms, update_run, Enqueued, PipelineRecord,
    PIPELINES, RUNS,
};
use crate::run_state::{plan_queue, retention, transition, RunEvent};
use crate::Shared;

/// Longest sleep between two passes when nothing is written.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often a follower checks whether it became the leader.
const FOLLOWER_TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
struct LeaderState {
    executors: HashMap<(String, u64), JoinHandle<()>>,
    polls: HashMap<String, (Instant, Option<JoinHandle<()>>)>,
}

impl LeaderState {
    fn abort_all(&mut self) {
        for (_, h) in self.executors.drain() {
            h.abort();
        }
        for (_, (_, h)) in self.polls.drain() {
            if let Some(h) = h {
                h.abort();
            }
        }
    }
}

pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut leader: Option<LeaderState> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let is_leader = shared.store.status().is_leader;
        if !is_leader {
            if let Some(mut state) = leader.take() {
                tracing::info!("no longer the leader: stopping pipeline runs here");
                state.abort_all();
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOWER_TICK) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if leader.is_none() {
            // Recover runs only from what every earlier term committed (the leadership
            // barrier), so a run the previous leader finished is not taken for interrupted.
            if let Err(e) = shared.store.leader_barrier().await {
                tracing::debug!(error = %e, "leadership barrier not passed yet");
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOWER_TICK) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            match recover(&shared).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            runs = n,
                            "marked runs of a previous leader or process interrupted"
                        );
                    }
                    leader = Some(LeaderState::default());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pipeline recovery failed; retrying");
                    tokio::time::sleep(FOLLOWER_TICK).await;
                    continue;
                }
            }
        }
        let Some(state) = leader.as_mut() else {
            continue;
        };
        let mut watch = shared
            .store
            .watch(&[WatchKey::prefix(PIPELINES, ""), WatchKey::prefix(RUNS, "")]);
        let wait = match pass(&shared, state).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "pipeline runner pass failed");
                FOLLOWER_TICK
            }
        };
        tokio::select! {
            _ = watch.changed(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Some(mut state) = leader.take() {
        let owned: Vec<(String, u64)> = state.executors.keys().cloned().collect();
        state.abort_all();
        for (name, number) in owned {
            let _ = interrupt(&shared, &name, number, true).await;
        }
    }
}

/// Marks every active run not owned by this process interrupted. Returns how many.
async fn recover(shared: &Shared) -> Result<usize, PipelineError> {
    let mut n = 0;
    for p in list_pipelines(&shared.store, Consistency::Consistent).await? {
        for run in list_runs(&shared.store, &p.name, Consistency::Consistent).await? {
            let r = run.value;
            if r.status.is_active() && r.runner.as_deref() != Some(shared.runner_id.as_str()) {
                interrupt(shared, &r.pipeline, r.number, false).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Marks a run interrupted; `only_mine` restricts it to runs this process owns.
async fn interrupt(
    shared: &Shared,
    name: &str,
    number: u64,
    only_mine: bool,
) -> Result<(), PipelineError> {
    let me = shared.runner_id.clone();
    update_run(&shared.store, name, number, |r| {
        if only_mine && r.runner.as_deref() != Some(me.as_str()) {
            return false;
        }
        match transition(&r.status, RunEvent::Interrupt) {
            Ok(next) => {
                r.status = next;
                r.finished_at_ms = Some(now_ms());
                true
            }
            Err(_) => false,
        }
    })
    .await?;
    Ok(())
}

/// One pass over every pipeline. Returns how long to wait for the next one at most.
async fn pass(shared: &Arc<Shared>, state: &mut LeaderState) -> Result<Duration, PipelineError> {
    state.executors.retain(|_, h| !h.is_finished());
    let pipelines = list_pipelines(&shared.store, Consistency::Default).await?;
    let mut wait = IDLE_TICK;
    let now = Instant::now();
    state
        .polls
        .retain(|name, _| pipelines.iter().any(|p| &p.name == name));
    for record in pipelines {
        let runs: Vec<RunInfo> = list_runs(&shared.store, &record.name, Consistency::Default)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        schedule(shared, state, &record, &runs).await?;
        let drop: Vec<u64> =
            retention(runs.iter().map(|r| (r.number, &r.status)), record.keep_runs);
        delete_runs(&shared.store, &record.name, &drop).await?;
        if let Some(interval_ms) = record.poll_interval_ms {
            let interval = Duration::from_millis(interval_ms);
            let entry = state
                .polls
                .entry(record.name.clone())
                .or_insert((now + interval, None));
            let in_flight = entry.1.as_ref().is_some_and(|h| !h.is_finished());
            if now >= entry.0 && !in_flight {
                entry.0 = now + interval;
                entry.1 = Some(tokio::spawn(poll_once(shared.clone(), record.clone())));
            }
            wait = wait.min(
                entry
                    .0
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(50)),
            );
        }
    }
    Ok(wait)
}

/// Starts the next run of one pipeline, skipping older queued ones; cleans up runs this
/// process owns but no longer executes (an executor that panicked).
async fn schedule(
    shared: &Arc<Shared>,
    state: &mut LeaderState,
    record: &PipelineRecord,
    runs: &[RunInfo],
) -> Result<(), PipelineError> {
    let me = shared.runner_id.as_str();
    for r in runs {
        let key = (r.pipeline.clone(), r.number);
        if r.status.is_active() && !state.executors.contains_key(&key) {
            tracing::warn!(pipeline = %r.pipeline, run = r.number, "run has no executor; marking it interrupted");
            let _ = interrupt(shared, &r.pipeline, r.number, false).await;
        }
    }
    let plan = plan_queue(runs.iter().map(|r| (r.number, &r.status)));
    let Some(start) = plan.start else {
        return Ok(());
    };
    for n in plan.skip {
        update_run(&shared.store, &record.name, n, |r| {
            match transition(&r.status, RunEvent::Supersede { by: start }) {
                Ok(next) => {
                    r.status = next;
                    r.finished_at_ms = Some(now_ms());
                    true
                }
                Err(_) => false,
            }
        })
        .await?;
    }
    let claimed = update_run(&shared.store, &record.name, start, |r| {
        if r.status != RunStatus::Queued {
            return false;
        }
        r.status = RunStatus::Building;
        r.runner = Some(me.to_string());
        r.started_at_ms = Some(now_ms());
        true
    })
    .await?;
    let Some(run) =
        claimed.filter(|r| r.status == RunStatus::Building && r.runner.as_deref() == Some(me))
    else {
        return Ok(());
    };
    let def = record.def()?;
    tracing::info!(pipeline = %record.name, run = run.number, commit = %run.commit, "starting run");
    let handle = tokio::spawn(crate::execute::execute(shared.clone(), def, run.clone()));
    state
        .executors
        .insert((run.pipeline.clone(), run.number), handle);
    Ok(())
}

/// Resolves the branch head and queues a run when it moved.
async fn poll_once(shared: Arc<Shared>, record: PipelineRecord) {
    let def = match record.def() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pipeline = %record.name, error = %e, "cannot poll");
            return;
        }
    };
    let git = shared.git.clone();
    let (source, branch) = (def.source.clone(), def.branch.clone());
    let head =
        tokio::task::spawn_blocking(move || git.open(&source, &branch)?.branch_head(&branch)).await;
    let head = match head {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(pipeline = %record.name, error = %e, "poll failed");
            let _ = set_poll_error(&shared.store, &record.name, Some(&e.to_string())).await;
            return;
        }
        Err(e) => {
            tracing::warn!(pipeline = %record.name, error = %e, "poll task failed");
            return;
        }
    };
    if let Err(e) = set_poll_error(&shared.store, &record.name, None).await {
        tracing::warn!(pipeline = %record.name, error = %e, "cannot record a poll");
    }
    if record.last_queued.as_deref() == Some(head.id.as_str()) {
        return;
    }
    match enqueue(
        &shared.store,
        &record.name,
        &head.id,
        Some(head.subject),
        RunTrigger::Poll,
        true,
    )
    .await
    {
        Ok(Enqueued::Run(run)) => {
            tracing::info!(pipeline = %record.name, run = run.number, commit = %run.commit, "new commit found by polling")
        }
        Ok(Enqueued::AlreadyQueued(_)) => {}
        Err(e) => {
            tracing::warn!(pipeline = %record.name, error = %e, "cannot queue a polled commit")
        }
    }
}
