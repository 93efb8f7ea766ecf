//! How pipelines, runs and run logs are kept in the store.
//!
//! * `pipelines/<name>`: the definition, the webhook secret, the next run number and the last
//!   commit a run was queued for (the poller's memory, so a restart does not rebuild).
//! * `pipeline_runs/<name>/<run, 10 digits>`: one [`RunInfo`] per run.
//! * `pipeline_logs/<name>/<run, 10 digits>/<seq, 8 digits>`: the run's log in chunks, so a
//!   growing log is appended to, never rewritten; kept in its own table so that log writes do
//!   not wake watchers of run states.

use std::collections::BTreeMap;

use pier_api::pipeline::{PipelineInfo, RunInfo, RunStatus, RunTrigger};
use pier_store::{Consistency, Op, Store, Table, Txn, TypedTable, Versioned};
use serde::{Deserialize, Serialize};

use crate::definition::{parse_repo, PipelineDef};
use crate::error::PipelineError;

pub const PIPELINES: Table = Table::PIPELINES;
pub const RUNS: Table = Table::PIPELINE_RUNS;
pub const LOGS: Table = Table::from_static("pipeline_logs");
/// `<name>` → the last poll error as text; absent while polls succeed. Apart from the
/// pipelines table so that recording it does not wake the runner.
pub const POLL_ERRORS: Table = Table::from_static("pipeline_poll_errors");

/// Attempts of a read-modify-write before giving up on contention.
const CAS_ATTEMPTS: usize = 20;

/// The stored form of a pipeline (deliberately serialisable: it is what the store holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub name: String,
    pub repo: String,
    pub branch: String,
    pub file: String,
    pub dockerfile: String,
    pub poll_interval_ms: Option<u64>,
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    pub keep_runs: u32,
    pub created_at_ms: u64,
    /// Number the next run gets.
    pub next_run: u64,
    /// Commit the newest run was queued for.
    pub last_queued: Option<String>,
}

impl PipelineRecord {
    pub fn new(def: &PipelineDef, created_at_ms: u64) -> PipelineRecord {
        PipelineRecord {
            name: def.name.clone(),
            repo: def.repo.clone(),
            branch: def.branch.clone(),
            file: def.file.clone(),
            dockerfile: def.dockerfile.clone(),
            poll_interval_ms: def.poll_interval.map(|d| d.as_millis() as u64),
            webhook_secret: def.webhook_secret.clone(),
            build_args: def.build_args.clone(),
            keep_runs: def.keep_runs,
            created_at_ms,
            next_run: 1,
            last_queued: None,
        }
    }

    pub fn def(&self) -> Result<PipelineDef, PipelineError> {
        Ok(PipelineDef {
            name: self.name.clone(),
            repo: self.repo.clone(),
            source: parse_repo(&self.repo)?,
            branch: self.branch.clone(),
            file: self.file.clone(),
            dockerfile: self.dockerfile.clone(),
            poll_interval: self.poll_interval_ms.map(std::time::Duration::from_millis),
            webhook_secret: self.webhook_secret.clone(),
            build_args: self.build_args.clone(),
            keep_runs: self.keep_runs,
        })
    }

    pub fn info(&self, last_run: Option<RunInfo>) -> PipelineInfo {
        PipelineInfo {
            name: self.name.clone(),
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            file: self.file.clone(),
            dockerfile: self.dockerfile.clone(),
            poll_interval_ms: self.poll_interval_ms,
            webhook: self.webhook_secret.is_some(),
            build_args: self.build_args.clone(),
            keep_runs: self.keep_runs,
            created_at_ms: self.created_at_ms,
            last_run,
            poll_error: None,
        }
    }
}

pub fn pipelines() -> TypedTable<PipelineRecord> {
    TypedTable::new(PIPELINES)
}

pub fn runs() -> TypedTable<RunInfo> {
    TypedTable::new(RUNS)
}

pub fn runs_prefix(name: &str) -> String {
    format!("{name}/")
}

pub fn run_key(name: &str, number: u64) -> String {
    format!("{name}/{number:010}")
}

pub fn log_prefix(name: &str, number: u64) -> String {
    format!("{name}/{number:010}/")
}

pub fn log_key(name: &str, number: u64, seq: u64) -> String {
    format!("{name}/{number:010}/{seq:08}")
}

pub use pier_api::time::now_ms;

pub async fn get_pipeline(
    store: &Store,
    name: &str,
    consistency: Consistency,
) -> Result<Option<Versioned<PipelineRecord>>, PipelineError> {
    Ok(store
        .read(consistency, |v| pipelines().get(v, name))
        .await??)
}

pub async fn list_pipelines(
    store: &Store,
    consistency: Consistency,
) -> Result<Vec<PipelineRecord>, PipelineError> {
    let list = store
        .read(consistency, |v| pipelines().list(v, ""))
        .await??;
    Ok(list.into_iter().map(|(_, v)| v.value).collect())
}

/// Every run of `name`, oldest first.
pub async fn list_runs(
    store: &Store,
    name: &str,
    consistency: Consistency,
) -> Result<Vec<Versioned<RunInfo>>, PipelineError> {
    let list = store
        .read(consistency, |v| runs().list(v, &runs_prefix(name)))
        .await??;
    Ok(list.into_iter().map(|(_, v)| v).collect())
}

pub async fn get_run(
    store: &Store,
    name: &str,
    number: u64,
    consistency: Consistency,
) -> Result<Option<Versioned<RunInfo>>, PipelineError> {
    Ok(store
        .read(consistency, |v| runs().get(v, &run_key(name, number)))
        .await??)
}

/// Stores a new pipeline and its first run (for `first_commit`) in one transaction; refuses
/// when the name is taken.
pub async fn create_pipeline(
    store: &Store,
    mut record: PipelineRecord,
    first_commit: &str,
    first_message: Option<String>,
) -> Result<RunInfo, PipelineError> {
    let run = RunInfo {
        pipeline: record.name.clone(),
        number: 1,
        commit: first_commit.to_string(),
        commit_message: first_message,
        trigger: RunTrigger::Create,
        status: RunStatus::Queued,
        image: None,
        queued_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
        runner: None,
    };
    record.next_run = 2;
    record.last_queued = Some(first_commit.to_string());
    let txn = Txn::new()
        .with(pipelines().put_cas(record.name.clone(), &record, 0)?)
        .with(runs().put_cas(run_key(&record.name, 1), &run, 0)?);
    let res = store.write(txn).await?;
    if !res.applied {
        return Err(PipelineError::Exists(record.name));
    }
    Ok(run)
}

/// Removes a pipeline with all its runs and logs.
pub async fn delete_pipeline(store: &Store, name: &str) -> Result<bool, PipelineError> {
    let existed = get_pipeline(store, name, Consistency::Default)
        .await?
        .is_some();
    let txn = Txn::new()
        .with(pipelines().delete(name))
        .with(Op::delete_prefix(RUNS, runs_prefix(name)))
        .with(Op::delete_prefix(LOGS, runs_prefix(name)))
        .with(Op::delete(POLL_ERRORS, name));
    store.write(txn).await?;
    Ok(existed)
}

/// Why [`enqueue`] queued nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Run(RunInfo),
    /// `dedupe` was asked and the commit is the last one queued.
    AlreadyQueued(String),
}

/// Queues a run of `commit`. With `dedupe`, nothing is queued when the commit is the last one
/// queued (a poll and a webhook for the same push, a redelivered webhook).
pub async fn enqueue(
    store: &Store,
    name: &str,
    commit: &str,
    message: Option<String>,
    trigger: RunTrigger,
    dedupe: bool,
) -> Result<Enqueued, PipelineError> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(current) = get_pipeline(store, name, Consistency::Default).await? else {
            return Err(PipelineError::NotFound(name.to_string()));
        };
        let mut record = current.value;
        if dedupe && record.last_queued.as_deref() == Some(commit) {
            return Ok(Enqueued::AlreadyQueued(commit.to_string()));
        }
        let number = record.next_run;
        record.next_run += 1;
        record.last_queued = Some(commit.to_string());
        let run = RunInfo {
            pipeline: name.to_string(),
            number,
            commit: commit.to_string(),
            commit_message: message.clone(),
            trigger,
            status: RunStatus::Queued,
            image: None,
            queued_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            runner: None,
        };
        let txn = Txn::new()
            .with(pipelines().put_cas(name, &record, current.modify_index)?)
            .with(runs().put_cas(run_key(name, number), &run, 0)?);
        if store.write(txn).await?.applied {
            return Ok(Enqueued::Run(run));
        }
    }
    Err(PipelineError::Contended)
}

/// Read-modify-write of one run, guarded by its modify index. `f` returns false to leave the
/// run as it is. Returns the run as written (or as found when `f` declined), `None` if the
/// run does not exist.
pub async fn update_run(
    store: &Store,
    name: &str,
    number: u64,
    mut f: impl FnMut(&mut RunInfo) -> bool,
) -> Result<Option<RunInfo>, PipelineError> {
    let key = run_key(name, number);
    for _ in 0..CAS_ATTEMPTS {
        let Some(current) = get_run(store, name, number, Consistency::Default).await? else {
            return Ok(None);
        };
        let mut run = current.value;
        if !f(&mut run) {
            return Ok(Some(run));
        }
        let res = store
            .write(Txn::single(runs().put_cas(
                key.clone(),
                &run,
                current.modify_index,
            )?))
            .await?;
        if res.applied {
            return Ok(Some(run));
        }
    }
    Err(PipelineError::Contended)
}

pub async fn poll_error(store: &Store, name: &str) -> Result<Option<String>, PipelineError> {
    Ok(store
        .read(Consistency::Default, |v| {
            v.get(POLL_ERRORS, name)
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        })
        .await?)
}

/// Records the outcome of a poll; writes only when it differs from what is recorded.
pub async fn set_poll_error(
    store: &Store,
    name: &str,
    error: Option<&str>,
) -> Result<(), PipelineError> {
    if poll_error(store, name).await?.as_deref() == error {
        return Ok(());
    }
    let op = match error {
        Some(e) => Op::put(POLL_ERRORS, name, e.as_bytes().to_vec()),
        None => Op::delete(POLL_ERRORS, name),
    };
    store.write(Txn::single(op)).await?;
    Ok(())
}

/// Deletes runs (and their logs) of `name`.
pub async fn delete_runs(store: &Store, name: &str, numbers: &[u64]) -> Result<(), PipelineError> {
    if numbers.is_empty() {
        return Ok(());
    }
    let mut txn = Txn::new();
    for n in numbers {
        txn = txn
            .with(runs().delete(run_key(name, *n)))
            .with(Op::delete_prefix(LOGS, log_prefix(name, *n)));
    }
    store.write(txn).await?;
    Ok(())
}
