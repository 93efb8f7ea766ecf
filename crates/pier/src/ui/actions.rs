//! The console's buttons: HTML forms posting here, each calling the JSON endpoint the CLI
//! calls (`pier service scale|rollback`, `pier node drain`, `pier pipeline run`), so the
//! validation and the refusals are the API's own; a refusal is shown on the page with its
//! status (403 for a read-only token).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use pier_api::service::{DeployResponse, ServiceDetail};
use serde::Deserialize;
use serde_json::json;

use super::api::{Ctx, Failure};
use super::render::{error_box, page, seg};
use super::session::{cross_site, same_origin};
use super::UiState;

/// An action refused or failed: the API's status and message, and the way back.
fn refused(title: &str, back: &str, f: &Failure) -> Response {
    if f.needs_login() {
        return super::session::login_page(Some(&f.message), StatusCode::UNAUTHORIZED);
    }
    let body = html! { (error_box(f)) p { a href=(back) { "← back" } } };
    (f.status, page(title, body)).into_response()
}

/// Where to go after a service change: its deployment when it started one.
async fn after_deploy(resp: axum::response::Response, service: &str) -> Response {
    let back = format!("/ui/services/{}", seg(service));
    let bytes = axum::body::to_bytes(resp.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<DeployResponse>(&bytes) {
        Ok(DeployResponse {
            deployment: Some(id),
            ..
        }) => Redirect::to(&format!("/ui/deployments/{}", seg(&id))).into_response(),
        _ => Redirect::to(&back).into_response(),
    }
}

#[derive(Deserialize)]
pub struct ScaleForm {
    count: String,
    confirm: Option<String>,
}

pub async fn scale(
    State(st): State<UiState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ScaleForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let back = format!("/ui/services/{}", seg(&name));
    if form.confirm.is_none() {
        return unconfirmed("Scale", &back);
    }
    // The API validates the number; a word is sent as it is so its message is the API's.
    let count: serde_json::Value = match form.count.trim().parse::<i64>() {
        Ok(c) => json!(c),
        Err(_) => json!(form.count),
    };
    let uri = format!("/api/v1/services/{}/scale", seg(&name));
    match st
        .api
        .call(&ctx, Method::PUT, &uri, Some(json!({ "count": count })))
        .await
    {
        Ok(resp) => after_deploy(resp, &name).await,
        Err(f) => refused(&format!("Scale {name}"), &back, &f),
    }
}

fn unconfirmed(what: &str, back: &str) -> Response {
    let f = Failure {
        status: StatusCode::BAD_REQUEST,
        message: "tick the confirmation box to do this".into(),
    };
    refused(what, back, &f)
}

#[derive(Deserialize)]
pub struct RollbackForm {
    revision: Option<String>,
    confirm: Option<String>,
}

pub async fn rollback(
    State(st): State<UiState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let back = format!("/ui/services/{}", seg(&name));
    if form.confirm.is_none() {
        return unconfirmed("Rollback", &back);
    }
    let revision = form
        .revision
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let body = match revision.map(str::parse::<u64>) {
        None => json!({}),
        Some(Ok(r)) => json!({ "revision": r }),
        Some(Err(_)) => json!({ "revision": revision }),
    };
    let uri = format!("/api/v1/services/{}/rollback", seg(&name));
    match st.api.call(&ctx, Method::POST, &uri, Some(body)).await {
        Ok(resp) => after_deploy(resp, &name).await,
        Err(f) => refused(&format!("Roll back {name}"), &back, &f),
    }
}

#[derive(Deserialize)]
pub struct DrainForm {
    draining: String,
}

pub async fn drain(
    State(st): State<UiState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<DrainForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let uri = format!("/api/v1/nodes/{}/drain", seg(&name));
    let body = json!({ "draining": form.draining == "true" });
    match st.api.call(&ctx, Method::PUT, &uri, Some(body)).await {
        Ok(_) => Redirect::to("/ui/nodes").into_response(),
        Err(f) => refused(&format!("Drain {name}"), "/ui/nodes", &f),
    }
}

pub async fn run_pipeline(
    State(st): State<UiState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let back = format!("/ui/pipelines/{}", seg(&name));
    let uri = format!("{}/runs", back.replace("/ui/", "/api/v1/"));
    match st.api.call(&ctx, Method::POST, &uri, Some(json!({}))).await {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(f) => refused(&format!("Run {name}"), &back, &f),
    }
}

pub fn service_forms(d: &ServiceDetail) -> Markup {
    let name = seg(&d.service.name);
    let earlier: Vec<u64> = d
        .revisions
        .iter()
        .copied()
        .filter(|r| *r != d.service.revision)
        .collect();
    html! {
        div.actions {
            form.action method="post" action={ "/ui/services/" (name) "/scale" } {
                label for="count" { "Instances" }
                input #count type="number" name="count" min="0" value=(d.service.count) required;
                label.confirm { input type="checkbox" name="confirm" value="yes" required; " I am sure" }
                button #scale type="submit" { "Scale" }
            }
            form.action method="post" action={ "/ui/services/" (name) "/rollback" } {
                label for="revision" { "Roll back to" }
                select #revision name="revision" {
                    option value="" { "the revision before" }
                    @for r in earlier.iter().rev() { option value=(r) { "revision " (r) } }
                }
                label.confirm { input type="checkbox" name="confirm" value="yes" required; " I am sure" }
                button #rollback type="submit" { "Roll back" }
            }
        }
    }
}

pub fn drain_form(node: &str, draining: bool) -> Markup {
    html! {
        form.inline method="post" action={ "/ui/nodes/" (seg(node)) "/drain" } {
            input type="hidden" name="draining" value=(if draining { "false" } else { "true" });
            button.secondary type="submit" { @if draining { "Undrain" } @else { "Drain" } }
        }
    }
}

pub fn run_form(pipeline: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/ui/pipelines/" (seg(pipeline)) "/run" } {
            button #run-now type="submit" { "Run now" }
        }
    }
}
