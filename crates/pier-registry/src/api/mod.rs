//! HTTP surface: `/v2/...` (the distribution spec), `/metrics`, and the admin
//! endpoint `POST /_pier/gc`.
//!
//! Repository names contain slashes, so `/v2/*` is routed by hand: the path
//! is split into segments, each percent-decoded on its own (so `%2F` can never
//! invent a separator and `%2e%2e` becomes `..`, which the name grammar
//! rejects), and the endpoint is recognised from the trailing segments.

mod admin;
mod blobs;
pub(crate) mod errors;
mod listing;
mod manifests;
mod uploads;
mod util;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use http::{header, HeaderValue, Method, StatusCode};

use crate::metrics::RequestLabels;
use crate::names::RepoName;
use crate::{Registry, RegistryError};

pub(crate) fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .route("/metrics", get(admin::metrics))
        .route("/_pier/gc", post(admin::gc))
        .with_state(registry)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, String),
    Blob(RepoName, String),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, String),
}

impl Route {
    fn endpoint(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags_list",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) => "upload_start",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

/// `rest` is the raw path after `/v2/`.
fn parse_route(rest: &str) -> Result<Route, RegistryError> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let mut segs = Vec::new();
    for raw in rest.split('/') {
        segs.push(
            util::percent_decode(raw)
                .ok_or_else(|| RegistryError::NoRoute(rest.chars().take(300).collect()))?,
        );
    }
    let n = segs.len();
    let name = |count: usize| -> Result<RepoName, RegistryError> {
        if count == 0 {
            return Err(RegistryError::NameInvalid(crate::names::NameError::Empty));
        }
        if segs[..count].iter().any(|s| s.contains('/')) {
            return Err(RegistryError::NameInvalid(
                crate::names::NameError::Invalid(segs[..count].join("%2F")),
            ));
        }
        Ok(RepoName::parse(&segs[..count].join("/"))?)
    };
    let last = |i: usize| segs.get(n.wrapping_sub(i)).map(String::as_str);
    if n >= 3 && last(2) == Some("tags") && last(1) == Some("list") {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 3 && last(3) == Some("blobs") && last(2) == Some("uploads") {
        let id = segs[n - 1].clone();
        return if id.is_empty() {
            Ok(Route::UploadStart(name(n - 3)?))
        } else {
            Ok(Route::Upload(name(n - 3)?, id))
        };
    }
    if n >= 3 && last(2) == Some("blobs") && last(1) == Some("uploads") {
        return Ok(Route::UploadStart(name(n - 2)?));
    }
    if n >= 3 {
        let arg = segs[n - 1].clone();
        match last(2) {
            Some("manifests") => return Ok(Route::Manifest(name(n - 2)?, arg)),
            Some("blobs") => return Ok(Route::Blob(name(n - 2)?, arg)),
            Some("referrers") => return Ok(Route::Referrers(name(n - 2)?, arg)),
            _ => {}
        }
    }
    Err(RegistryError::NoRoute(rest.chars().take(300).collect()))
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

async fn v2(State(registry): State<Registry>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path();
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest).to_string();
    let (endpoint, result) = match parse_route(&rest) {
        Ok(route) => (route.endpoint(), dispatch(&registry, route, req).await),
        Err(e) => ("unknown", Err(e)),
    };
    let mut resp = result.unwrap_or_else(|e| errors::response(&e));
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let inner = &registry.inner;
    inner
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            method: method_label(&method),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

async fn dispatch(
    registry: &Registry,
    route: Route,
    req: Request,
) -> Result<Response, RegistryError> {
    let inner = &registry.inner;
    let method = req.method().clone();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(util::json_response(StatusCode::OK, b"{}".to_vec()))
        }
        (Route::Catalog, Method::GET) => listing::catalog(inner, req.uri().query()).await,
        (Route::Tags(name), Method::GET) => listing::tags(inner, &name, req.uri().query()).await,
        (Route::Referrers(name, digest), Method::GET) => {
            listing::referrers(inner, &name, &digest, req.uri().query()).await
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            manifests::get(inner, &name, &reference, req).await
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            manifests::put(inner, &name, &reference, req).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            manifests::delete(inner, &name, &reference).await
        }
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => {
            blobs::get(inner, &name, &digest, req).await
        }
        (Route::Blob(name, digest), Method::DELETE) => blobs::delete(inner, &name, &digest).await,
        (Route::UploadStart(name), Method::POST) => uploads::start(inner, &name, req).await,
        (Route::Upload(name, id), Method::PATCH) => uploads::patch(inner, &name, &id, req).await,
        (Route::Upload(name, id), Method::PUT) => uploads::put(inner, &name, &id, req).await,
        (Route::Upload(name, id), Method::GET) => uploads::status(inner, &name, &id).await,
        (Route::Upload(name, id), Method::DELETE) => uploads::cancel(inner, &name, &id).await,
        (_, method) => Err(RegistryError::MethodNotAllowed(method.to_string())),
    }
}

pub(crate) fn empty(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, 0)
}

pub(crate) fn finish(
    builder: http::response::Builder,
    body: Body,
) -> Result<Response, RegistryError> {
    builder
        .body(body)
        .map_err(|e| RegistryError::Internal(format!("building a response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("").unwrap(), Route::Base);
        assert_eq!(parse_route("_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse_route("a/b/tags/list").unwrap(), Route::Tags(n("a/b")));
        assert_eq!(
            parse_route("a/manifests/manifests/latest").unwrap(),
            Route::Manifest(n("a/manifests"), "latest".into())
        );
        assert_eq!(
            parse_route("a/blobs/uploads/").unwrap(),
            Route::UploadStart(n("a"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads").unwrap(),
            Route::UploadStart(n("a"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/xyz").unwrap(),
            Route::Upload(n("a"), "xyz".into())
        );
        assert_eq!(
            parse_route("a/blobs/sha256:00").unwrap(),
            Route::Blob(n("a"), "sha256:00".into())
        );
        assert_eq!(
            parse_route("x/referrers/sha256:00").unwrap(),
            Route::Referrers(n("x"), "sha256:00".into())
        );
        assert!(matches!(
            parse_route("%2e%2e/manifests/latest"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse_route("a/../b/manifests/latest"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse_route("a%2Fb/manifests/latest"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse_route("Upper/manifests/latest"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse_route("manifests/latest"),
            Err(RegistryError::NoRoute(_))
        ));
        assert!(matches!(
            parse_route("a/whatever"),
            Err(RegistryError::NoRoute(_))
        ));
    }
}
