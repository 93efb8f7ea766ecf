//! Live parts over Server-Sent Events, fed by the API's own blocking reads: the deployment
//! page follows `GET /api/v1/deployments/:id?index=N&wait=1s` exactly as `pier deploy` does
//! (re-reading the service's tasks on every wake, as the CLI does), and log tails forward the
//! API's `?follow=true` streams. `/ui/static/live.js` swaps the fragments in.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};
use pier_api::service::{DeploymentRecord, TaskView};

use super::api::{Ctx, Failure};
use super::pages::deployment_markup;
use super::render::{failed, seg};
use super::UiState;

type Events = BoxStream<'static, Result<Event, Infallible>>;

/// SSE forbids carriage returns in data; in HTML text a character reference means the same.
fn html_data(html: &str) -> String {
    html.replace('\r', "&#13;")
}

fn sse(events: Events) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn end(message: &str) -> Event {
    Event::default()
        .event("end")
        .data(message.replace('\r', ""))
}

enum Follow {
    Watching {
        st: UiState,
        ctx: Ctx,
        id: String,
        index: Option<u64>,
        last: String,
    },
    Ending(String),
    Done,
}

pub async fn deployment(State(st): State<UiState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    // A refusal is answered as such, not as an empty stream.
    let first = format!("/api/v1/deployments/{}", seg(&id));
    if let Err(f) = st.api.get::<DeploymentRecord>(&ctx, &first).await {
        return failed("Deployment", &f);
    }
    let start = Follow::Watching {
        st,
        ctx,
        id,
        index: None,
        last: String::new(),
    };
    sse(stream::unfold(start, step).boxed())
}

/// The next event of a deployment stream: a fresh fragment whenever it differs from the last
/// one sent, then `end` once the deployment has ended.
async fn step(state: Follow) -> Option<(Result<Event, Infallible>, Follow)> {
    let (st, ctx, id, mut index, last) = match state {
        Follow::Watching {
            st,
            ctx,
            id,
            index,
            last,
        } => (st, ctx, id, index, last),
        Follow::Ending(why) => return Some((Ok(end(&why)), Follow::Done)),
        Follow::Done => return None,
    };
    loop {
        let uri = match index {
            Some(i) => format!("/api/v1/deployments/{}?index={i}&wait=1s", seg(&id)),
            None => format!("/api/v1/deployments/{}", seg(&id)),
        };
        let (dep, next) = match st.api.get_indexed::<DeploymentRecord>(&ctx, &uri).await {
            Ok(x) => x,
            Err(f) => return Some((Ok(end(&f.message)), Follow::Done)),
        };
        index = next;
        let tasks: Result<Vec<TaskView>, Failure> = st
            .api
            .get(
                &ctx,
                &format!("/api/v1/services/{}/tasks", seg(&dep.service)),
            )
            .await;
        let html = deployment_markup(&dep, &tasks).into_string();
        let terminal = dep.status.is_terminal();
        if html != last || terminal {
            let event = Event::default().event("fragment").data(html_data(&html));
            let next_state = if terminal {
                Follow::Ending(dep.status.as_str().to_string())
            } else {
                Follow::Watching {
                    st,
                    ctx,
                    id,
                    index,
                    last: html,
                }
            };
            return Some((Ok(event), next_state));
        }
    }
}

/// Forwards a text stream of the API (a log with `?follow=true`) as `append` events; the
/// stream starts from the beginning, so the page replaces what it showed.
async fn forward_text(st: &UiState, ctx: &Ctx, uri: &str) -> Result<Events, Failure> {
    let resp = st.api.call(ctx, Method::GET, uri, None).await?;
    let body = resp.into_body().into_data_stream();
    let mut carry: Vec<u8> = Vec::new();
    let chunks = body.map(move |chunk| match chunk {
        Ok(bytes) => {
            carry.extend_from_slice(&bytes);
            // Keep an incomplete UTF-8 sequence for the next chunk.
            let cut = match std::str::from_utf8(&carry) {
                Ok(_) => carry.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => carry.len(),
            };
            let rest = carry.split_off(cut);
            let text = String::from_utf8_lossy(&carry).replace("\r\n", "\n");
            carry = rest;
            Ok(Event::default()
                .event("append")
                .data(text.replace('\r', "\n")))
        }
        Err(e) => Ok(end(&format!("log stream ended: {e}"))),
    });
    let done = stream::once(async { Ok(end("log ended")) });
    Ok(chunks.chain(done).boxed())
}

pub async fn run_log(
    State(st): State<UiState>,
    ctx: Ctx,
    Path((name, number)): Path<(String, String)>,
) -> Response {
    let uri = format!(
        "/api/v1/pipelines/{}/runs/{}/logs?follow=true",
        seg(&name),
        seg(&number)
    );
    match forward_text(&st, &ctx, &uri).await {
        Ok(events) => sse(events),
        Err(f) => failed("Log", &f),
    }
}

pub async fn service_logs(
    State(st): State<UiState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Response {
    let uri = format!("/api/v1/services/{}/logs?follow=true&tail=100", seg(&name));
    match forward_text(&st, &ctx, &uri).await {
        Ok(events) => sse(events),
        Err(f) => failed("Log", &f),
    }
}
