//! The agent's own small HTTP listener: `GET /v1/logs/:task?follow=&tail=` streams a task
//! container's output (the server proxies it for `pier logs`), `GET /v1/health` answers ok.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;

use crate::docker::{container_name, DockerDriver};

pub async fn serve(
    listener: tokio::net::TcpListener,
    docker: DockerDriver,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/logs/{task}", get(logs))
        .with_state(docker);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "agent HTTP listener failed");
    }
}

async fn logs(
    State(docker): State<DockerDriver>,
    Path(task): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    let tail = q.get("tail").and_then(|t| t.parse::<u32>().ok());
    match docker.inspect(&container_name(&task)).await {
        Ok(Some(info)) => {
            let stream = docker
                .logs(&info.id, follow, tail)
                .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
            Response::builder()
                .header("content-type", "text/plain; charset=utf-8")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no container for task {task} on this node\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
