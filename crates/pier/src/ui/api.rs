//! In-process calls of the HTTP API on behalf of a console session.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use pier_net::Caller;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use super::session::SESSION_COOKIE;

/// Largest API answer a page reads (whole KV trees, long logs).
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The API router as the console calls it.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// Who the console acts for: the session's token, and what the auth layer looks at besides
/// (the `Host` a `pier dev` checks, a client certificate's identity).
#[derive(Clone, Default)]
pub struct Ctx {
    pub token: Option<String>,
    host: Option<HeaderValue>,
    caller: Option<Caller>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Ctx {
            token: cookie(&parts.headers, SESSION_COOKIE),
            host: parts.headers.get(header::HOST).cloned(),
            caller: parts.extensions.get::<Caller>().cloned(),
        })
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// An API answer other than 2xx, as the page shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    /// No credential, or one the cluster does not know: the page asks for a token.
    pub fn needs_login(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
            || (self.status == StatusCode::FORBIDDEN
                && (self.message.contains("token not found, revoked or expired")
                    // The Consul routes answer a missing token with 403, as Consul does.
                    || self.message.contains("needs an API token")))
    }

    fn internal(message: String) -> Failure {
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }
}

impl Api {
    pub fn new(router: Router) -> Api {
        Api { router }
    }

    /// One request through the API router (auth layer included); the raw response.
    pub async fn call(
        &self,
        ctx: &Ctx,
        method: Method,
        uri: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Response, Failure> {
        self.call_with(ctx, method, uri, &[], body).await
    }

    /// [`Api::call`] with extra request headers (`Accept` for registry manifests).
    pub async fn call_with(
        &self,
        ctx: &Ctx,
        method: Method,
        uri: &str,
        headers: &[(&'static str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<Response, Failure> {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(host) = &ctx.host {
            req = req.header(header::HOST, host.clone());
        }
        if let Some(token) = &ctx.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut req = req
            .body(body)
            .map_err(|e| Failure::internal(format!("building the API request: {e}")))?;
        if let Some(caller) = &ctx.caller {
            req.extensions_mut().insert(caller.clone());
        }
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(failure_of(resp).await)
        }
    }

    /// GET and decode; with the `X-Pier-Index` of the answer when it has one.
    pub async fn get_indexed<T: DeserializeOwned>(
        &self,
        ctx: &Ctx,
        uri: &str,
    ) -> Result<(T, Option<u64>), Failure> {
        let resp = self.call(ctx, Method::GET, uri, None).await?;
        let index = resp
            .headers()
            .get("x-pier-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
            .await
            .map_err(|e| Failure::internal(format!("reading {uri}: {e}")))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::internal(format!("decoding {uri}: {e}")))?;
        Ok((value, index))
    }

    pub async fn get<T: DeserializeOwned>(&self, ctx: &Ctx, uri: &str) -> Result<T, Failure> {
        Ok(self.get_indexed(ctx, uri).await?.0)
    }

    /// GET of a text answer (logs).
    pub async fn get_text(&self, ctx: &Ctx, uri: &str) -> Result<String, Failure> {
        let resp = self.call(ctx, Method::GET, uri, None).await?;
        let bytes = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
            .await
            .map_err(|e| Failure::internal(format!("reading {uri}: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The message of pier's JSON error body (`{"error":{"message":…}}`), or the text itself.
async fn failure_of(resp: Response) -> Failure {
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let message = json
        .as_ref()
        .and_then(|j| {
            j.pointer("/error/message")
                // The registry's OCI error body.
                .or_else(|| j.pointer("/errors/0/message"))
                .or_else(|| j.get("message"))
                .and_then(|m| m.as_str())
        })
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    Failure { status, message }
}

/// What callers of [`Api`] need without naming `StatusCode`.
pub fn is_not_found(f: &Failure) -> bool {
    f.status == StatusCode::NOT_FOUND
}
