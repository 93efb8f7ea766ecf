//! The agent's own small HTTP listener: `GET /v1/logs/:task?follow=&tail=` streams a task
//! container's output (the server proxies it for `pier logs`), `GET /v1/health` answers ok
//! while the agent runs, and `GET /v1/agent/health` says whether the cluster's quorum
//! acknowledges its heartbeats (JSON [`AgentHealth`]; 503 when cut off, so a plain HTTP
//! probe alerts).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;

use axum::Json;
use pier_api::service::{AgentHealth, ClusterContact};

use crate::docker::{container_name, DockerDriver};
use crate::SharedContact;

#[derive(Clone)]
pub struct AppState {
    pub docker: DockerDriver,
    pub contact: SharedContact,
    pub node: String,
    /// Health names the server the agent talks to now, which changes on fail-over.
    pub client: crate::client::ServerClient,
}

/// Serves the listener; with `tls`, task logs are for servers of the cluster only (their
/// certificates), health for anyone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<pier_net::ServerTls>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let logs_route = get(logs);
    let logs_route = if tls.is_some() {
        logs_route.layer(axum::middleware::from_fn(servers_only))
    } else {
        logs_route
    };
    let volume_route = axum::routing::delete(remove_volume);
    let volume_route = if tls.is_some() {
        volume_route.layer(axum::middleware::from_fn(servers_only))
    } else {
        volume_route
    };
    let app = Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/agent/health", get(agent_health))
        .route("/v1/logs/{task}", logs_route)
        .route("/v1/volumes/{name}", volume_route)
        .with_state(state);
    let config = match tls {
        Some(t) => pier_net::ListenerConfig::tls(t, 256),
        None => pier_net::ListenerConfig::plain(256),
    };
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let result = pier_net::serve(listener, app, config, stop).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "agent HTTP listener failed");
    }
}

async fn servers_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let caller = req
        .extensions()
        .get::<pier_net::Caller>()
        .and_then(|c| c.0.clone());
    match caller {
        Some(id) if id.role == pier_security::ca::Role::Server => next.run(req).await,
        _ => (
            StatusCode::FORBIDDEN,
            "only the cluster's servers may do this\n",
        )
            .into_response(),
    }
}

/// `DELETE /v1/volumes/:name` (from a server, for `pier volume rm`): removes the node's named
/// volume; the engine refuses (409) while a container uses it.
async fn remove_volume(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.docker.remove_volume(&name).await {
        Ok(()) => {
            tracing::info!(volume = %name, "volume removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(crate::docker::DockerError::NoSuchContainer(_)) => (
            StatusCode::NOT_FOUND,
            format!("no volume {name} on this node\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

async fn agent_health(State(state): State<AppState>) -> (StatusCode, Json<AgentHealth>) {
    let health = state
        .contact
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .health(&state.node, &state.client.current_server());
    let code = if health.cluster == ClusterContact::CutOff {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(health))
}

async fn logs(
    State(AppState { docker, .. }): State<AppState>,
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
