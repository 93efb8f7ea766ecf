//! Responses the gateway writes itself. Each says what went wrong and what to
//! do, as plain text or, when the client accepts JSON, as
//! `{"error": CODE, "message": TEXT, ...}`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::GatewayBody;

/// A gateway-made response. `close` asks the client connection to close
/// afterwards (used when the request's framing cannot be trusted or its
/// body is left unread).
pub(crate) fn respond(
    status: StatusCode,
    json: bool,
    code: &'static str,
    message: String,
    fields: &[(&'static str, &str)],
    close: bool,
) -> Response<GatewayBody> {
    let (body, content_type) = if json {
        let mut obj = serde_json::Map::new();
        obj.insert("error".into(), code.into());
        obj.insert("message".into(), message.into());
        for (k, v) in fields {
            obj.insert((*k).into(), (*v).into());
        }
        (
            serde_json::Value::Object(obj).to_string() + "\n",
            "application/json",
        )
    } else {
        (message + "\n", "text/plain; charset=utf-8")
    };
    let mut resp = Response::new(GatewayBody::Local(Some(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 308 (method and body kept) to the same path over HTTPS; port 443 left out.
pub(crate) fn redirect_https(host: &str, port: u16, target: &str) -> Response<GatewayBody> {
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let mut resp = respond(
        StatusCode::PERMANENT_REDIRECT,
        false,
        "redirect",
        format!("this route is served over HTTPS: {location}"),
        &[],
        false,
    );
    // The host is normalised and the target came from a parsed request line, so this only
    // fails for bytes a header cannot hold; then the 308 goes without a Location.
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(crate) fn unknown_host(json: bool, host: &str) -> Response<GatewayBody> {
    let hint = match host.strip_suffix(".localhost") {
        Some(name) if !name.is_empty() && !name.contains('.') => {
            format!("deploy or register a service named `{name}` to serve it")
        }
        _ => {
            "register a service with the meta `pier.hosts` listing it or the tag `urlprefix-HOST/`"
                .to_string()
        }
    };
    respond(
        StatusCode::NOT_FOUND,
        json,
        "unknown_host",
        format!(
            "no service is registered for host `{host}`: {hint}; every service also answers on `<service>.localhost`"
        ),
        &[("host", host)],
        false,
    )
}

pub(crate) fn no_route(json: bool, host: &str, path: &str) -> Response<GatewayBody> {
    respond(
        StatusCode::NOT_FOUND,
        json,
        "no_route",
        format!("host `{host}` has no route for path `{path}`; add a `urlprefix-{host}{path}` tag to the service that should serve it"),
        &[("host", host), ("path", path)],
        false,
    )
}

pub(crate) fn no_healthy_instance(
    json: bool,
    service: &str,
    registered: usize,
) -> Response<GatewayBody> {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        json,
        "no_healthy_instance",
        format!(
            "service `{service}` has no passing instance ({registered} registered, none passing health checks or all unreachable)"
        ),
        &[("service", service)],
        false,
    )
}

pub(crate) fn bad_gateway(json: bool, service: &str, what: &str) -> Response<GatewayBody> {
    respond(
        StatusCode::BAD_GATEWAY,
        json,
        "backend_failed",
        format!("service `{service}`: {what}"),
        &[("service", service)],
        false,
    )
}

pub(crate) fn gateway_timeout(json: bool, service: &str, ms: u64) -> Response<GatewayBody> {
    respond(
        StatusCode::GATEWAY_TIMEOUT,
        json,
        "backend_timeout",
        format!("service `{service}` did not start its response within {ms} ms"),
        &[("service", service)],
        false,
    )
}

pub(crate) fn too_large(json: bool, limit: u64) -> Response<GatewayBody> {
    respond(
        StatusCode::PAYLOAD_TOO_LARGE,
        json,
        "body_too_large",
        format!("request body exceeds the gateway limit of {limit} bytes"),
        &[],
        true,
    )
}

pub(crate) fn bad_request(json: bool, what: &str) -> Response<GatewayBody> {
    respond(
        StatusCode::BAD_REQUEST,
        json,
        "bad_request",
        what.to_string(),
        &[],
        true,
    )
}
