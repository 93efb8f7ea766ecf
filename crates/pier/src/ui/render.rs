//! The page frame and small pieces every page uses. maud escapes every interpolated string,
//! so user data (names, keys, log lines) is always shown as text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::api::Failure;

const NAV: [(&str, &str); 8] = [
    ("/ui/", "Overview"),
    ("/ui/services", "Services"),
    ("/ui/nodes", "Nodes"),
    ("/ui/pipelines", "Pipelines"),
    ("/ui/registry", "Registry"),
    ("/ui/catalog", "Catalog"),
    ("/ui/kv", "KV"),
    ("/ui/login", "Token"),
];

/// A whole page: header with navigation, then `body`.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pier" }
                link rel="stylesheet" href="/ui/static/style.css";
                script src="/ui/static/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/" { "pier" }
                    nav { @for (href, label) in NAV { a href=(href) { (label) } } }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn ok(title: &str, body: Markup) -> Response {
    page(title, body).into_response()
}

/// A page that could not be read: the login form when the API wants a token, else the
/// API's own status and message.
pub fn failed(title: &str, f: &Failure) -> Response {
    if f.needs_login() {
        return super::session::login_page(Some(&f.message), StatusCode::UNAUTHORIZED);
    }
    (f.status, page(title, error_box(f))).into_response()
}

pub fn error_box(f: &Failure) -> Markup {
    html! {
        p.error role="alert" {
            strong { (f.status.as_u16()) " " (f.status.canonical_reason().unwrap_or("")) }
            ": " (f.message)
        }
    }
}

/// "3s ago", "5m ago" from a millisecond timestamp.
pub fn ago(at_ms: u64) -> String {
    let now = pier_api::time::now_ms();
    age(now.saturating_sub(at_ms))
}

pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A word with the colour class of its meaning (healthy, failing, in progress…).
pub fn badge(word: &str) -> Markup {
    let class = match word {
        "healthy" | "running" | "passing" | "succeeded" | "ready" | "leader" | "alive" => "good",
        "failed" | "critical" | "unhealthy" | "rolled_back" | "rolled back" | "down" | "lost"
        | "exited" => "bad",
        "warning" | "draining" | "stopping" | "superseded" => "warn",
        _ => "info",
    };
    html! { span class={ "badge " (class) } { (word.replace('_', " ")) } }
}

/// `s` of a JSON object, or "".
pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

pub fn n(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Percent-encodes one path segment (names come from users).
pub fn seg(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes a KV key, keeping its slashes.
pub fn key_path(key: &str) -> String {
    key.split('/').map(seg).collect::<Vec<_>>().join("/")
}
