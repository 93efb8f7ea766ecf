//! The console session: an API token kept in a cookie the page's scripts cannot read
//! (`HttpOnly`), sent only by pages of this origin (`SameSite=Strict`), and `Secure` when the
//! API speaks HTTPS. POSTs also need a same-origin `Sec-Fetch-Site` or `Origin`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::render::page;
use super::UiState;

pub const SESSION_COOKIE: &str = "pier_session";

pub fn login_page(message: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        @if let Some(m) = message { p.error role="alert" { (m) } }
        p { "This cluster needs an API token (" code { "pier acl token create" } ")." }
        form.login method="post" action="/ui/login" {
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required;
            button type="submit" { "Sign in" }
        }
        form method="post" action="/ui/logout" { button.secondary type="submit" { "Forget the token" } }
    };
    (status, page("Sign in", body)).into_response()
}

pub async fn login_form() -> Response {
    login_page(None, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Whether a POST comes from a page of this origin: the browser's `Sec-Fetch-Site`, or else
/// an `Origin` whose host is the `Host` the request was sent to. Neither: refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

pub fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        page(
            "Refused",
            html! { p.error role="alert" { "403: this form was not sent from a page of this server" } },
        ),
    )
        .into_response()
}

/// Characters a cookie value may hold unquoted (RFC 6265); tokens are made of far fewer.
fn cookie_safe(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let token = form.token.trim();
    let known = cookie_safe(token)
        && crate::security::authz::lookup_token(&state.store, token)
            .await
            .is_some_and(|t| !t.is_expired(pier_api::time::now_ms()));
    if !known {
        return login_page(
            Some("ACL token not found, revoked or expired"),
            StatusCode::FORBIDDEN,
        );
    }
    let secure = if state.https { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response()
}

pub async fn logout(State(state): State<UiState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let secure = if state.https { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}
