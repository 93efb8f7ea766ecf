//! One run, start to finish: checkout → build → push → deploy → outcome. Every state change is
//! a guarded write that only succeeds while this process still owns the run, so a run that a
//! new leader has marked interrupted is never overwritten by the old one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pier_api::pipeline::{short_sha, RunInfo, RunStage, RunStatus};

use crate::build::{build_image, push_image, BuildError, BuildSpec};
use crate::definition::PipelineDef;
use crate::deploy::{DeployError, DeployOutcome};
use crate::git::GitError;
use crate::log_sink::LogSink;
use crate::records::{now_ms, update_run};
use crate::run_log::write_log;
use crate::run_state::{transition, RunEvent};
use crate::service_file;
use crate::Shared;

/// How a run's stages ended.
enum Ending {
    Event(RunEvent),
    /// Another process took the run over (or it vanished): write nothing more.
    Lost,
}

fn fail(stage: RunStage, reason: impl Into<String>) -> Ending {
    Ending::Event(RunEvent::Fail {
        stage,
        reason: reason.into(),
    })
}

/// Applies `event` to the run if this runner still owns it. False when it does not.
async fn advance(shared: &Shared, run: &RunInfo, event: RunEvent, image: Option<&str>) -> bool {
    let me = shared.runner_id.as_str();
    let result = update_run(&shared.store, &run.pipeline, run.number, |r| {
        if r.runner.as_deref() != Some(me) {
            return false;
        }
        match transition(&r.status, event.clone()) {
            Ok(next) => {
                if next.is_terminal() {
                    r.finished_at_ms = Some(now_ms());
                }
                r.status = next;
                if let Some(i) = image {
                    r.image = Some(i.to_string());
                }
                true
            }
            Err(_) => false,
        }
    })
    .await;
    match result {
        Ok(Some(r)) => {
            r.runner.as_deref() == Some(me) && !matches!(r.status, RunStatus::Interrupted { .. })
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(pipeline = %run.pipeline, run = run.number, error = %e, "cannot record a run's progress");
            false
        }
    }
}

/// Whether this runner still owns the run (`None`: the store cannot say right now).
async fn still_owned(shared: &Shared, run: &RunInfo) -> Option<bool> {
    let current = crate::records::get_run(
        &shared.store,
        &run.pipeline,
        run.number,
        pier_store::Consistency::Default,
    )
    .await
    .ok()?;
    Some(current.is_some_and(|r| {
        r.value.runner.as_deref() == Some(shared.runner_id.as_str())
            && !r.value.status.is_terminal()
    }))
}

/// Executes a run that the runner has already moved to `building` under this runner id.
pub(crate) async fn execute(shared: Arc<Shared>, def: PipelineDef, run: RunInfo) {
    let (log, rx) = LogSink::channel();
    let writer = tokio::spawn(write_log(
        shared.store.clone(),
        run.pipeline.clone(),
        run.number,
        rx,
    ));
    let started = Instant::now();
    let ending = stages(&shared, &def, &run, &log, started).await;
    if let Ending::Event(ev) = &ending {
        let text = match ev {
            RunEvent::Deployed => "succeeded".to_string(),
            RunEvent::RolledBack { reason } => format!("rolled back: {reason}"),
            RunEvent::Fail { stage, reason } => format!("failed at {stage}: {reason}"),
            other => format!("{other:?}"),
        };
        stage_line(&log, started, text);
    }
    drop(log);
    // The whole log is stored before the final state, so a follower that sees the state has
    // seen every line.
    let _ = writer.await;
    if let Ending::Event(ev) = ending {
        // The outcome is worth a few retries across a leader election; if it still cannot be
        // written the runner finds the run without an executor and marks it interrupted.
        for attempt in 0..5u64 {
            if advance(&shared, &run, ev.clone(), None).await
                || still_owned(&shared, &run).await == Some(false)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500 * (attempt + 1))).await;
        }
    }
    tracing::info!(pipeline = %run.pipeline, run = run.number, "run finished");
}

/// A stage line, with the time since the run started (the benchmark reads these).
fn stage_line(log: &LogSink, started: Instant, text: impl std::fmt::Display) {
    log.line(format!(
        "[+{:.1}s] ==> {text}",
        started.elapsed().as_secs_f64()
    ));
}

async fn stages(
    shared: &Arc<Shared>,
    def: &PipelineDef,
    run: &RunInfo,
    log: &LogSink,
    started: Instant,
) -> Ending {
    let stage = |text: String| stage_line(log, started, text);
    let short = short_sha(&run.commit).to_string();
    let image = format!("{}/{}:{short}", shared.config.registry, def.name);
    stage(format!(
        "run {} of pipeline {}: commit {short}{}",
        run.number,
        def.name,
        run.commit_message
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    ));

    // Checkout: the commit's tree as the build context, and the service file.
    stage(format!(
        "checkout {} from {} ({})",
        run.commit, def.repo, def.branch
    ));
    let git = shared.git.clone();
    let (source, branch, commit) = (def.source.clone(), def.branch.clone(), run.commit.clone());
    let (file, dockerfile) = (def.file.clone(), def.dockerfile.clone());
    let checkout =
        tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, String, String), GitError> {
            let repo = git.open(&source, &branch)?;
            let found = repo.find_commit(&commit)?;
            repo.read_file(&found.id, &dockerfile)?;
            let service = repo.read_file(&found.id, &file)?;
            let context = repo.context_tar(&found.id, &dockerfile)?;
            Ok((
                context,
                String::from_utf8_lossy(&service).into_owned(),
                found.subject,
            ))
        })
        .await;
    let (context_tar, service_text, subject) = match checkout {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(RunStage::Checkout, e.to_string()),
        Err(e) => return fail(RunStage::Checkout, format!("checkout task failed: {e}")),
    };
    let filled = match service_file::fill_image(&def.file, &service_text, &image)
        .and_then(|f| service_file::check(&def.file, &service_text, &image).map(|_| f))
    {
        Ok(f) => f,
        Err(e) => return fail(RunStage::Checkout, e.to_string()),
    };
    log.line(format!("    build context: {} bytes", context_tar.len()));
    if run.commit_message.is_none() {
        // A webhook without the commit message: take it from the repository.
        let me = shared.runner_id.clone();
        let _ = update_run(&shared.store, &run.pipeline, run.number, |r| {
            if r.runner.as_deref() != Some(me.as_str()) || r.commit_message.is_some() {
                return false;
            }
            r.commit_message = Some(subject.clone());
            true
        })
        .await;
    }

    // Build.
    stage(format!("build {image} ({})", def.dockerfile));
    let docker = match &shared.docker {
        Ok(d) => d.clone(),
        Err(e) => {
            return fail(
                RunStage::Build,
                format!("cannot reach the Docker engine: {e}"),
            )
        }
    };
    // No build labels: the classic builder turns each into an extra step with a container
    // commit (~0.5 s each); the tag already names the commit and the run records the rest.
    let labels = HashMap::new();
    let spec = BuildSpec {
        image: &image,
        context_tar,
        dockerfile: &def.dockerfile,
        build_args: &def.build_args,
        labels,
    };
    match build_image(&docker, spec, log).await {
        Ok(id) => log.line(format!("    image {id}")),
        Err(e) => return fail(RunStage::Build, e.to_string()),
    }
    if !advance(shared, run, RunEvent::Built, Some(&image)).await {
        return Ending::Lost;
    }

    // Push.
    stage(format!("push {image}"));
    let token = shared.config.push_token.as_ref().and_then(|mint| {
        let repository = image_repository(&image);
        mint(repository)
    });
    if let Err(e) = push_image(&docker, &image, token, log).await {
        let reason = match e {
            BuildError::Push(m) => format!("pushing {image} failed: {m}"),
            other => other.to_string(),
        };
        return fail(RunStage::Push, reason);
    }
    if !advance(shared, run, RunEvent::Pushed, None).await {
        return Ending::Lost;
    }

    // Deploy and wait for the outcome.
    stage(format!("deploy {} with image {image}", def.file));
    match shared.config.deployer.deploy(&filled, log).await {
        Ok(DeployOutcome::Succeeded) => Ending::Event(RunEvent::Deployed),
        Ok(DeployOutcome::RolledBack { reason }) => Ending::Event(RunEvent::RolledBack { reason }),
        Ok(DeployOutcome::Failed { reason }) => fail(RunStage::Deploy, reason),
        Err(e @ DeployError::Refused(_)) => fail(RunStage::Deploy, e.to_string()),
        Err(e) => fail(RunStage::Deploy, e.to_string()),
    }
}

/// The repository of `registry/name:tag` (`name`, which may hold slashes).
fn image_repository(image: &str) -> &str {
    let without_tag = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    without_tag
        .split_once('/')
        .map(|(_, name)| name)
        .unwrap_or(without_tag)
}

#[cfg(test)]
mod image_repository_tests {
    #[test]
    fn the_registry_and_tag_are_cut_off() {
        assert_eq!(super::image_repository("127.0.0.1:5000/web:abc"), "web");
        assert_eq!(super::image_repository("reg:5000/team/web:v1"), "team/web");
        assert_eq!(super::image_repository("reg:5000/team/web"), "team/web");
    }
}
