//! The web console at `/ui/`: server-rendered HTML (maud), a hand-written stylesheet and a
//! small script served from the binary, live parts over Server-Sent Events.
//!
//! The console has no data path of its own. Every page reads, and every button writes,
//! through an in-process call of the very API router the CLI talks to ([`Api::call`]),
//! with the auth layer in front and the session's token as `Authorization: Bearer`. So the
//! same handlers, validation, ACL decisions and errors apply; the console only renders them.

mod actions;
mod api;
mod diff;
mod live;
mod pages;
mod registry;
mod render;
mod session;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use pier_store::Store;

pub use api::Api;

/// Every console response carries these: scripts and styles only from files of this server.
const CSP: &str = "default-src 'self'";

#[derive(Clone)]
pub struct UiState {
    /// The API router with its auth layer: what every page reads through.
    pub api: Api,
    /// This server's registry router behind its own door (None: no registry here).
    pub registry: Option<Api>,
    /// Token lookups at login (the auth layer's own function).
    pub store: Store,
    /// This server's gateway port (route links point there).
    pub gateway_port: Option<u16>,
    /// The API listener speaks HTTPS: session cookies get `Secure`.
    pub https: bool,
}

pub fn router(state: UiState) -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(pages::overview))
        .route("/ui/services", get(pages::services))
        .route("/ui/services/{name}", get(pages::service))
        .route("/ui/services/{name}/diff", get(diff::diff))
        .route("/ui/services/{name}/scale", post(actions::scale))
        .route("/ui/services/{name}/rollback", post(actions::rollback))
        .route("/ui/services/{name}/logs/live", get(live::service_logs))
        .route("/ui/deployments/{id}", get(pages::deployment))
        .route("/ui/deployments/{id}/live", get(live::deployment))
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/nodes/{name}/drain", post(actions::drain))
        .route("/ui/pipelines", get(pages::pipelines))
        .route("/ui/pipelines/{name}", get(pages::pipeline))
        .route("/ui/pipelines/{name}/run", post(actions::run_pipeline))
        .route("/ui/pipelines/{name}/runs/{number}", get(pages::run))
        .route(
            "/ui/pipelines/{name}/runs/{number}/live",
            get(live::run_log),
        )
        .route("/ui/registry", get(registry::registry))
        .route("/ui/registry/delete", post(registry::delete_tag))
        .route("/ui/catalog", get(pages::catalog))
        .route("/ui/kv", get(pages::kv))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/static/style.css", get(style))
        .route("/ui/static/live.js", get(script))
        .route("/ui/{*rest}", get(pages::not_found))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/live.js"),
    )
}
