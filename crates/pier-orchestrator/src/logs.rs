//! `GET /api/v1/services/:name/logs?follow=true&tail=N`: the server asks the agent of each
//! task (its own small HTTP listener) for the container's output and merges the streams,
//! each line prefixed with the task id. The CLI only ever talks to a server.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use pier_api::service::StopPhase;
use pier_store::Consistency;

use crate::api::HttpError;
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
    let mut streams: Vec<BoxStream<'static, Result<Bytes, std::io::Error>>> = Vec::new();
    for t in world.tasks_of(&name) {
        if t.value.stop_phase == StopPhase::Stopped {
            // Gone from its node; what it wrote last was kept with its status.
            if let Some(out) = world.status_of(&t.value.id).last_output {
                let id = t.value.id.clone();
                let text: String = out
                    .lines()
                    .map(|l| format!("{id} (exited) | {l}\n"))
                    .collect();
                streams.push(stream::once(async move { Ok(Bytes::from(text)) }).boxed());
            }
            continue;
        }
        let Some(node) = world.nodes.get(&t.value.node) else {
            continue;
        };
        let mut url = format!(
            "{}://{}/v1/logs/{}?follow={follow}",
            shared.internal.scheme(),
            node.value.agent_addr,
            t.value.id
        );
        if let Some(n) = tail {
            url.push_str(&format!("&tail={n}"));
        }
        let resp = match shared.internal.get().get(&url).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let line = format!(
                    "{} | (no logs: agent answered {})\n",
                    t.value.id,
                    r.status()
                );
                streams.push(stream::once(async move { Ok(Bytes::from(line)) }).boxed());
                continue;
            }
            Err(e) => {
                let line = format!(
                    "{} | (no logs: agent {} unreachable: {e})\n",
                    t.value.id, node.value.agent_addr
                );
                streams.push(stream::once(async move { Ok(Bytes::from(line)) }).boxed());
                continue;
            }
        };
        streams.push(prefixed_lines(
            t.value.id.clone(),
            resp.bytes_stream().boxed(),
        ));
    }
    let merged = stream::select_all(streams);
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(merged))
        .unwrap_or_else(|_| Response::new(Body::empty())))
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
