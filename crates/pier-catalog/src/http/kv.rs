//! `/v1/kv/:key`: GET (`recurse`, `keys`, `separator`, `raw`), PUT (`cas`, `flags`; the body is
//! the value), DELETE (`recurse`, `cas`).

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;

use super::{
    bool_response, consul_headers, json_response, not_found, parse_query, ApiResult, ApiState,
};
use crate::error::CatalogError;
use crate::wire::KvOut;

pub async fn kv_get_root(state: State<ApiState>, q: RawQuery) -> ApiResult {
    kv_get(state, Path(String::new()), q).await
}

pub async fn kv_delete_root(state: State<ApiState>, q: RawQuery) -> ApiResult {
    kv_delete(state, Path(String::new()), q).await
}

pub async fn kv_get(
    State(s): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let opts = p.query_options()?;
    let recurse = p.flag("recurse")?;
    let keys_only = p.flag("keys")?;
    if keys_only {
        let separator = p.get("separator").unwrap_or("").to_string();
        let res = s.catalog.kv_list(&key, &opts).await?;
        let mut out: BTreeSet<String> = BTreeSet::new();
        for e in &res.value {
            let rest = &e.key[key.len()..];
            match (!separator.is_empty())
                .then(|| rest.find(&separator))
                .flatten()
            {
                Some(pos) => out.insert(format!("{key}{}", &rest[..pos + separator.len()])),
                None => out.insert(e.key.clone()),
            };
        }
        if out.is_empty() {
            return Ok(not_found(&s.catalog, res.index));
        }
        let body: Vec<String> = out.into_iter().collect();
        return Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body));
    }
    if recurse {
        let res = s.catalog.kv_list(&key, &opts).await?;
        if res.value.is_empty() {
            return Ok(not_found(&s.catalog, res.index));
        }
        let body: Vec<KvOut> = res.value.iter().map(KvOut::from).collect();
        return Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body));
    }
    if key.is_empty() {
        return Err(CatalogError::bad("Missing key name").into());
    }
    let res = s.catalog.kv_get(&key, &opts).await?;
    let Some(entry) = res.value else {
        return Ok(not_found(&s.catalog, res.index));
    };
    if p.flag("raw")? {
        let mut headers = consul_headers(&s.catalog, res.index);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok((StatusCode::OK, headers, entry.value).into_response());
    }
    let body = vec![KvOut::from(&entry)];
    Ok(json_response(&s.catalog, res.index, StatusCode::OK, &body))
}

pub async fn kv_put(
    State(s): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    if p.get("acquire").is_some() || p.get("release").is_some() {
        return Err(CatalogError::bad("Sessions (acquire/release) are not supported").into());
    }
    let flags = p.u64("flags")?.unwrap_or(0);
    let cas = p.u64("cas")?;
    let written = s.catalog.kv_put(&key, body.to_vec(), flags, cas).await?;
    Ok(bool_response(written))
}

pub async fn kv_delete(
    State(s): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = parse_query(q.as_deref());
    let recurse = p.flag("recurse")?;
    let cas = p.u64("cas")?;
    if recurse && cas.is_some() {
        return Err(CatalogError::bad("Conflicting flags: cas cannot be used with recurse").into());
    }
    let deleted = s.catalog.kv_delete(&key, recurse, cas).await?;
    // Consul answers true for a delete of an absent key; false only when a cas guard failed.
    Ok(bool_response(deleted || cas.is_none()))
}
