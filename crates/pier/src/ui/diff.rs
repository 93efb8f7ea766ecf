//! The difference between two revisions of a service: both specs as the API serves them
//! (`GET /api/v1/services/:name/revisions/:n`, env redacted for tokens that may not see it),
//! flattened to `path = value` lines, and the lines that differ.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::api::Ctx;
use super::render::{failed, ok, seg};
use super::UiState;

#[derive(Deserialize)]
pub struct DiffQuery {
    from: u64,
    to: u64,
}

/// `a.b[0] = value` for every leaf of `v`.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// (setting, value in `from`, value in `to`) for every setting that differs.
pub fn changes(from: &Value, to: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", from, &mut a);
    flatten("", to, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned()))
        .collect()
}

pub async fn diff(
    State(st): State<UiState>,
    ctx: Ctx,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let base = format!("/api/v1/services/{}/revisions", seg(&name));
    let (from_uri, to_uri) = (format!("{base}/{}", q.from), format!("{base}/{}", q.to));
    let (from, to) = tokio::join!(
        st.api.get::<Value>(&ctx, &from_uri),
        st.api.get::<Value>(&ctx, &to_uri),
    );
    let title = format!("{name}: revision {} → {}", q.from, q.to);
    let (from, to) = match (from, to) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return failed(&title, &f),
    };
    ok(&title, table(&name, &changes(&from, &to)))
}

fn table(name: &str, rows: &[(String, Option<String>, Option<String>)]) -> Markup {
    html! {
        p { a href={ "/ui/services/" (seg(name)) } { "← " (name) } }
        @if rows.is_empty() { p { "The two revisions are the same." } }
        @else { table.diff {
            thead { tr { th { "setting" } th { "before" } th { "after" } } }
            tbody { @for (k, a, b) in rows { tr {
                td { code { (k) } }
                td.removed { code { (a.as_deref().unwrap_or("–")) } }
                td.added { code { (b.as_deref().unwrap_or("–")) } }
            } } }
        } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_that_differ_are_listed() {
        let a = serde_json::json!({"image": "x:1", "count": 2, "env": {"A": "1"}, "ports": [80]});
        let b =
            serde_json::json!({"image": "x:2", "count": 2, "env": {"B": "2"}, "ports": [80, 81]});
        let c = changes(&a, &b);
        let keys: Vec<&str> = c.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["env.A", "env.B", "image", "ports[1]"]);
        assert_eq!(c[2].1.as_deref(), Some("\"x:1\""));
        assert_eq!(c[0].2, None);
        assert!(changes(&a, &a).is_empty());
    }
}
