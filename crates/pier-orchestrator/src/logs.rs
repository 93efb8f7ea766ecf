//! `GET /api/v1/services/:name/logs?follow=true&tail=N`: the server asks the agent of each
//! task (its own small HTTP listener) for the container's output and merges the streams,
//! each line prefixed with the task id. Following, it also adds the tasks started after it
//! opened (a scale, a rollout) and only ends when the service is removed or the client leaves.
//! The CLI only ever talks to a server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::stream::{self, BoxStream, StreamExt};
use futures::SinkExt;
use pier_api::service::{StopPhase, TaskRecord, TaskState};
use pier_store::{Consistency, WatchKey};

use crate::api::HttpError;
use crate::tables;
use crate::world::World;
use crate::{OrchestratorError, Shared};

pub(crate) async fn service_logs(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    let tail = match q.get("tail") {
        Some(t) => Some(t.parse::<u32>().map_err(|_| {
            OrchestratorError::InvalidInput(format!("`tail` must be a number, got {t:?}"))
        })?),
        None => None,
    };
    let world = World::load(&shared.store, Consistency::Default).await?;
    if !world.services.contains_key(&name) {
        return Err(OrchestratorError::NotFound(format!("no service named {name:?}")).into());
    }
    let mut merged = stream::SelectAll::new();
    let mut seen = HashSet::new();
    for t in world.tasks_of(&name) {
        if let Some(s) = task_stream(&shared, &world, &t.value, follow, tail).await {
            merged.push(s);
        }
        seen.insert(t.value.id.clone());
    }
    let body = if follow {
        // Instances started later (a scale, a rollout) join the tail while it is open.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow_new_tasks(shared, name, tail, merged, seen, tx));
        Body::from_stream(rx)
    } else {
        Body::from_stream(merged)
    };
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

type Chunks = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A followed service log looks for new instances when a task status of the service changes
/// (a task joins once its agent reports it running), at most this often during a busy
/// rollout, and otherwise every [`FOLLOW_IDLE_CHECK`] only to notice a client that left.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(250);
const FOLLOW_IDLE_CHECK: Duration = Duration::from_secs(5);

/// Forwards the merged tail to the client, adding the streams of the service's new tasks as
/// they appear; ends when the client goes away or the service is removed.
async fn follow_new_tasks(
    shared: Arc<Shared>,
    name: String,
    tail: Option<u32>,
    mut merged: stream::SelectAll<Chunks>,
    mut seen: HashSet<String>,
    mut tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    // Task ids start with "<service>-", and so do the status keys; the service key tells
    // when the service is removed. Taken before the first rescan, so nothing falls between.
    let mut watch = shared.store.watch(&[
        WatchKey::prefix(tables::TASK_STATUS, format!("{name}-")),
        WatchKey::key(tables::SERVICES, name.clone()),
    ]);
    let mut last_rescan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            Some(chunk) = merged.next(), if !merged.is_empty() => {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            changed = watch.changed(FOLLOW_IDLE_CHECK) => {
                if tx.is_closed() {
                    return;
                }
                if !changed {
                    continue;
                }
                tokio::time::sleep_until(last_rescan + MIN_RESCAN_GAP).await;
                last_rescan = tokio::time::Instant::now();
                let world = match World::load(&shared.store, Consistency::Default).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::debug!(service = %name, error = %e, "log follow: store read failed");
                        continue;
                    }
                };
                if !world.services.contains_key(&name) {
                    return;
                }
                for t in world.tasks_of(&name) {
                    // A task joins once its container runs (before, its agent has no log to
                    // give); until then it is looked at again on the next rescan.
                    let running = world.status_of(&t.value.id).state == TaskState::Running;
                    if !running
                        || t.value.stop_phase == StopPhase::Stopped
                        || seen.contains(&t.value.id)
                    {
                        continue;
                    }
                    if let Some(s) = task_stream(&shared, &world, &t.value, true, tail).await {
                        merged.push(s);
                        seen.insert(t.value.id.clone());
                    }
                }
            }
        }
    }
}

/// The output of one task, each line prefixed with its id: from its agent (following it when
/// asked), or what it wrote last if it is gone; None if its node is unknown.
async fn task_stream(
    shared: &Shared,
    world: &World,
    task: &TaskRecord,
    follow: bool,
    tail: Option<u32>,
) -> Option<Chunks> {
    let id = task.id.clone();
    if task.stop_phase == StopPhase::Stopped {
        // Gone from its node; what it wrote last was kept with its status.
        let out = world.status_of(&id).last_output?;
        let text: String = out
            .lines()
            .map(|l| format!("{id} (exited) | {l}\n"))
            .collect();
        return Some(stream::once(async move { Ok(Bytes::from(text)) }).boxed());
    }
    let node = world.nodes.get(&task.node)?;
    let mut url = format!(
        "{}://{}/v1/logs/{id}?follow={follow}",
        shared.internal.scheme(),
        node.value.agent_addr,
    );
    if let Some(n) = tail {
        url.push_str(&format!("&tail={n}"));
    }
    let line = match shared.internal.get().get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            return Some(prefixed_lines(id, r.bytes_stream().boxed()));
        }
        Ok(r) => format!("{id} | (no logs: agent answered {})\n", r.status()),
        Err(e) => format!(
            "{id} | (no logs: agent {} unreachable: {e})\n",
            node.value.agent_addr
        ),
    };
    Some(stream::once(async move { Ok(Bytes::from(line)) }).boxed())
}

/// Splits a byte stream into lines and prefixes each with `task | `.
fn prefixed_lines(
    task: String,
    input: BoxStream<'static, Result<Bytes, reqwest::Error>>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    stream::unfold(
        (input, Vec::<u8>::new(), false),
        move |(mut input, mut buf, done)| {
            let task = task.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let mut out = format!("{task} | ").into_bytes();
                        out.extend_from_slice(&line);
                        return Some((Ok(Bytes::from(out)), (input, buf, false)));
                    }
                    match input.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (input, buf, true),
                            ));
                        }
                        None => {
                            if buf.is_empty() {
                                return None;
                            }
                            let mut out = format!("{task} | ").into_bytes();
                            out.append(&mut buf);
                            out.push(b'\n');
                            return Some((Ok(Bytes::from(out)), (input, buf, true)));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}
