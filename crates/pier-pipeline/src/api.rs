//! `/api/v1/pipelines…`: create, list, inspect, remove, runs, logs (live with `?follow=true`),
//! start a run by hand, and the push webhook.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pier_api::pipeline::{
    short_sha, PipelineCreate, PipelineInfo, RunCreate, RunInfo, RunTrigger, WebhookAnswer,
};
use pier_api::{ApiError, ErrorCode};
use pier_store::Consistency;

use crate::definition::{validate, PipelineDef};
use crate::error::PipelineError;
use crate::git::CommitInfo;
use crate::records::{
    create_pipeline, delete_pipeline, enqueue, get_pipeline, get_run, list_pipelines, list_runs,
    now_ms, Enqueued, PipelineRecord,
};
use crate::run_log::{follow_log, read_log};
use crate::webhook::{self, HookDecision};
use crate::{service_file, Shared};

struct HttpError(ApiError);

impl From<PipelineError> for HttpError {
    fn from(e: PipelineError) -> HttpError {
        if e.code() == ErrorCode::Internal {
            tracing::error!(error = %e, "pipeline request failed");
        }
        HttpError(e.to_api())
    }
}

impl HttpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError(ApiError::new(code, message))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<T, HttpError>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/pipelines", get(list).post(create))
        .route("/api/v1/pipelines/{name}", get(inspect).delete(remove))
        .route("/api/v1/pipelines/{name}/runs", get(runs).post(start_run))
        .route("/api/v1/pipelines/{name}/runs/{number}", get(run))
        .route("/api/v1/pipelines/{name}/runs/{number}/logs", get(logs))
        .route("/api/v1/pipelines/{name}/hooks/push", post(push_hook))
        .with_state(shared)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::new(ErrorCode::InvalidInput, format!("request body: {e}")))
}

/// Checks what can be checked in the repository now: it opens, the branch exists, the
/// Dockerfile and the service file exist at the head and the service file is valid.
fn check_repository(shared: &Shared, def: &PipelineDef) -> Result<CommitInfo, PipelineError> {
    let repo = shared.git.open(&def.source, &def.branch)?;
    let head = repo.branch_head(&def.branch)?;
    repo.read_file(&head.id, &def.dockerfile)?;
    let service = repo.read_file(&head.id, &def.file)?;
    let image = format!(
        "{}/{}:{}",
        shared.config.registry,
        def.name,
        short_sha(&head.id)
    );
    service_file::check(&def.file, &String::from_utf8_lossy(&service), &image)?;
    Ok(head)
}

async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<Response> {
    let req: PipelineCreate = parse_json(&body)?;
    let def = validate(&req).map_err(PipelineError::from)?;
    if get_pipeline(&shared.store, &def.name, Consistency::Default)
        .await?
        .is_some()
    {
        return Err(PipelineError::Exists(def.name).into());
    }
    let (s, d) = (shared.clone(), def.clone());
    let head = tokio::task::spawn_blocking(move || check_repository(&s, &d))
        .await
        .map_err(|e| {
            HttpError::new(ErrorCode::Internal, format!("repository check failed: {e}"))
        })??;
    let record = PipelineRecord::new(&def, now_ms());
    let run = create_pipeline(&shared.store, record.clone(), &head.id, Some(head.subject)).await?;
    Ok((StatusCode::CREATED, Json(record.info(Some(run)))).into_response())
}

async fn info_of(shared: &Shared, record: PipelineRecord) -> ApiResult<PipelineInfo> {
    let last = list_runs(&shared.store, &record.name, Consistency::Default)
        .await?
        .pop()
        .map(|v| v.value);
    let mut info = record.info(last);
    info.poll_error = crate::records::poll_error(&shared.store, &record.name).await?;
    Ok(info)
}

async fn list(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Vec<PipelineInfo>>> {
    let mut out = Vec::new();
    for record in list_pipelines(&shared.store, Consistency::Default).await? {
        out.push(info_of(&shared, record).await?);
    }
    Ok(Json(out))
}

async fn load(shared: &Shared, name: &str) -> ApiResult<PipelineRecord> {
    match get_pipeline(&shared.store, name, Consistency::Default).await? {
        Some(v) => Ok(v.value),
        None => Err(PipelineError::NotFound(name.to_string()).into()),
    }
}

async fn inspect(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineInfo>> {
    let record = load(&shared, &name).await?;
    Ok(Json(info_of(&shared, record).await?))
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if delete_pipeline(&shared.store, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(PipelineError::NotFound(name).into())
    }
}

async fn runs(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<RunInfo>>> {
    load(&shared, &name).await?;
    let list = list_runs(&shared.store, &name, Consistency::Default).await?;
    Ok(Json(list.into_iter().map(|v| v.value).collect()))
}

fn parse_number(name: &str, number: &str) -> ApiResult<u64> {
    number.parse::<u64>().map_err(|_| {
        HttpError::new(
            ErrorCode::InvalidInput,
            format!("run number {number:?} of pipeline {name} must be a positive integer"),
        )
    })
}

async fn run(
    State(shared): State<Arc<Shared>>,
    Path((name, number)): Path<(String, String)>,
) -> ApiResult<Json<RunInfo>> {
    let number = parse_number(&name, &number)?;
    match get_run(&shared.store, &name, number, Consistency::Default).await? {
        Some(v) => Ok(Json(v.value)),
        None => Err(PipelineError::RunNotFound(name, number).into()),
    }
}

async fn logs(
    State(shared): State<Arc<Shared>>,
    Path((name, number)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let number = parse_number(&name, &number)?;
    if get_run(&shared.store, &name, number, Consistency::Default)
        .await?
        .is_none()
    {
        return Err(PipelineError::RunNotFound(name, number).into());
    }
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1" | ""));
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    )];
    if !follow {
        let (_, text) = read_log(&shared.store, &name, number, 0, Consistency::Default).await?;
        return Ok((headers, text).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let store = shared.store.clone();
    tokio::spawn(async move {
        let result = follow_log(&store, &name, number, |text| tx.send(text).is_ok()).await;
        if let Err(e) = result {
            let _ = tx.send(format!("\n(log stream ended: {e})\n"));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, Infallible>(Bytes::from(s)), rx))
    });
    Ok((headers, Body::from_stream(stream)).into_response())
}

async fn start_run(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RunCreate = if body.iter().all(u8::is_ascii_whitespace) {
        RunCreate::default()
    } else {
        parse_json(&body)?
    };
    let record = load(&shared, &name).await?;
    let def = record.def()?;
    let git = shared.git.clone();
    let commit = tokio::task::spawn_blocking(move || -> Result<CommitInfo, PipelineError> {
        let repo = git.open(&def.source, &def.branch)?;
        Ok(match req.commit.as_deref() {
            Some(c) => repo.find_commit(c)?,
            None => repo.branch_head(&def.branch)?,
        })
    })
    .await
    .map_err(|e| HttpError::new(ErrorCode::Internal, format!("commit lookup failed: {e}")))??;
    match enqueue(
        &shared.store,
        &name,
        &commit.id,
        Some(commit.subject),
        RunTrigger::Manual,
        false,
    )
    .await?
    {
        Enqueued::Run(run) => Ok((StatusCode::ACCEPTED, Json(run)).into_response()),
        Enqueued::AlreadyQueued(c) => Err(HttpError::new(
            ErrorCode::Conflict,
            format!("commit {c} is already queued"),
        )),
    }
}

async fn push_hook(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let record = load(&shared, &name).await?;
    let Some(secret) = record.webhook_secret.as_deref() else {
        return Err(HttpError::new(
            ErrorCode::Forbidden,
            format!("pipeline {name} has no webhook secret; create it with --webhook-secret to accept push webhooks"),
        ));
    };
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let signature =
        header(webhook::SIGNATURE_HEADER).or_else(|| header(webhook::GITEA_SIGNATURE_HEADER));
    if let Err(e) = webhook::verify_signature(secret.as_bytes(), &body, signature) {
        tracing::warn!(pipeline = %name, error = %e, "webhook refused");
        return Err(HttpError::new(ErrorCode::Unauthorized, e.to_string()));
    }
    let event = webhook::EVENT_HEADERS.iter().find_map(|h| header(h));
    if let Some(ev) = event.filter(|e| *e != "push") {
        let answer = WebhookAnswer {
            run: None,
            ignored: Some(format!("event {ev:?} is not a push")),
        };
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    let push = webhook::parse_push(&body)
        .map_err(|e| HttpError::new(ErrorCode::InvalidInput, e.to_string()))?;
    let answer = match webhook::decide(&push, &record.branch) {
        HookDecision::Ignore(reason) => WebhookAnswer {
            run: None,
            ignored: Some(reason),
        },
        HookDecision::Run { commit, message } => {
            match enqueue(
                &shared.store,
                &name,
                &commit,
                message,
                RunTrigger::Webhook,
                true,
            )
            .await?
            {
                Enqueued::Run(run) => {
                    tracing::info!(pipeline = %name, run = run.number, commit = %commit, "run queued by webhook");
                    WebhookAnswer {
                        run: Some(run),
                        ignored: None,
                    }
                }
                Enqueued::AlreadyQueued(c) => WebhookAnswer {
                    run: None,
                    ignored: Some(format!("commit {c} is already queued")),
                },
            }
        }
    };
    let status = if answer.run.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}
